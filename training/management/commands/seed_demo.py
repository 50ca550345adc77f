from __future__ import annotations

from django.core.management.base import BaseCommand

from training.demo import demo_seed


class Command(BaseCommand):
    help = "Create the demo: one user per role (passwords printed), prompts in every category."

    def handle(self, *args, **options) -> None:
        report = demo_seed()
        self.stdout.write(self.style.SUCCESS("Demo ready. Log in with:"))
        for username, role, password in report.credentials:
            self.stdout.write(f"  {role:<11} {username:<12} password: {password}")
        for line in report.summary:
            self.stdout.write(f"  {line}")
