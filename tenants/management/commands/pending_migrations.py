"""`manage.py pending_migrations`: which schemas are behind the migration graph.

Three queries, whatever the number of schemas."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from tenants.migration_status import migration_status

NAMED_IN_ERROR = 20


def schemas_sentence(names: list[str], limit: int = NAMED_IN_ERROR) -> str:
    """`a, b, c` or `a, b, … and 980 more`."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", … and {len(names) - limit} more"


class Command(BaseCommand):
    help = (
        "List the schemas (public and every organization's) with unapplied migrations. "
        "Exits 1 naming them, or 0 when every schema is up to date."
    )
    requires_system_checks: list[str] = []  # a read-only status check: fast, no checks

    def add_arguments(self, parser):
        parser.add_argument("--quiet", action="store_true",
                            help="Print nothing when up to date; only the error line otherwise.")

    def handle(self, *args, quiet: bool = False, **options):
        status = migration_status()
        total = len(status.schemas)
        if not status.pending:
            if not quiet:
                self.stdout.write(self.style.SUCCESS(f"all {total} schemas up to date"))
            return
        if not quiet:
            for schema, missing in status.pending.items():
                self.stdout.write(f"{schema}: {len(missing)} unapplied: {', '.join(missing)}")
        behind = list(status.pending)
        raise CommandError(
            f"{len(behind)} of {total} schemas have unapplied migrations: {schemas_sentence(behind)}",
            returncode=1,
        )
