"""Freeze the selected pairs as a new dataset snapshot: ``manage.py export_snapshot --category spatial``."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotation.exporters.cli import add_filter_arguments, filters_from_options
from annotation.exporters.filters import FilterError
from annotation.services.snapshots import EmptySnapshotError, snapshot_create


class Command(BaseCommand):
    help = "Freeze the pairs matching the filters as an immutable, versioned dataset snapshot."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--user", help="username recorded as the snapshot's creator")
        add_filter_arguments(parser)

    def handle(self, *args, **options) -> None:
        user = None
        if options.get("user"):
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"no user {options['user']!r}")
        try:
            snapshot, created = snapshot_create(filters=filters_from_options(options), created_by=user)
        except (FilterError, EmptySnapshotError) as exc:
            raise CommandError(str(exc)) from None
        state = "created" if created else "unchanged, existing"
        self.stdout.write(
            f"{state} v{snapshot.version} {snapshot.content_hash} {snapshot.counts['pairs']} pairs -> {snapshot.file.name}"
        )
