"""Who may do what. One place decides, views and the API ask it."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from annotation.models import AnnotatorProfile, Role


def role_of(user: AbstractBaseUser | AnonymousUser) -> str | None:
    if not user.is_authenticated:
        return None
    if user.is_superuser:
        return Role.ADMIN
    try:
        return user.profile.role
    except AnnotatorProfile.DoesNotExist:
        return None


def is_admin(user) -> bool:
    return role_of(user) == Role.ADMIN


def is_researcher(user) -> bool:
    """Researchers read data and exports; admins may too."""
    return role_of(user) in (Role.RESEARCHER, Role.ADMIN)


def is_annotator(user) -> bool:
    return role_of(user) == Role.ANNOTATOR
