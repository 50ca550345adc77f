"""Create (or with --rotate, replace) a researcher's API token: ``manage.py export_token alice``."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from annotation.roles import is_researcher
from annotation.services.export import api_token_rotate


class Command(BaseCommand):
    help = "Print a researcher's API token for scripts (Authorization: Token <key>), creating it if needed."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--rotate", action="store_true", help="revoke the existing token and issue a new one"
        )

    def handle(self, *args, **options) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user {options['username']!r}")
        if not is_researcher(user):
            raise CommandError(
                f"{user.username} is not a researcher or admin; tokens are for research exports"
            )
        token = Token.objects.filter(user=user).first()
        if token is None or options["rotate"]:
            token = api_token_rotate(user=user)
        self.stdout.write(token.key)
