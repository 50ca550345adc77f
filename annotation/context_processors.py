from __future__ import annotations

from django.http import HttpRequest

from annotation.roles import role_of


def roles(request: HttpRequest) -> dict[str, object]:
    role = role_of(request.user) if request.user.is_authenticated else None
    return {
        "user_role": role,
        "is_studio_admin": role == "admin",
        "is_researcher": role in ("researcher", "admin"),
    }
