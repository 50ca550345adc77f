"""Writes of the annotation domain. Views, commands and tasks call these; nothing else writes."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.db import transaction

from annotation.models import AnnotatorProfile, Role


def generate_password() -> str:
    return secrets.token_urlsafe(12)


@transaction.atomic
def user_create(*, username: str, role: str, password: str, weight: float = 1.0) -> AbstractUser:
    """Create a user with a role; admins also get Django-admin access (staff)."""
    if role not in Role.values:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(Role.values)}")
    user = get_user_model().objects.create_user(
        username=username, password=password, is_staff=role == Role.ADMIN
    )
    AnnotatorProfile.objects.create(user=user, role=role, weight=weight)
    return user


@transaction.atomic
def user_set_password(*, user: AbstractUser, password: str) -> None:
    user.set_password(password)
    user.save(update_fields=["password"])


@transaction.atomic
def user_ensure(*, username: str, role: str, password: str) -> AbstractUser:
    """Create the user, or reset an existing one's password and role (demo seeding is re-runnable)."""
    existing = get_user_model().objects.filter(username=username).first()
    if existing is None:
        return user_create(username=username, role=role, password=password)
    user_set_password(user=existing, password=password)
    AnnotatorProfile.objects.update_or_create(user=existing, defaults={"role": role})
    if existing.is_staff != (role == Role.ADMIN):
        existing.is_staff = role == Role.ADMIN
        existing.save(update_fields=["is_staff"])
    return existing
