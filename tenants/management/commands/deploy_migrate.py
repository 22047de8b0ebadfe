"""`manage.py deploy_migrate`: migrate only the schemas that are behind (the deploy path).

Used by `make migrate` and the container entrypoint. A plain `migrate_schemas` visits
every schema and costs 0.1-0.2 s per schema even when nothing is pending (minutes with
a few thousand organizations); this command asks `tenants.migration_status` first (three
small queries for all schemas) and then:

1. runs `migrate_schemas --shared` when `public` is behind;
2. provisions (`schema_provision`) organizations whose schema does not exist at all;
3. runs django-tenants' migration executor over exactly the tenant schemas that are
   behind. `migrate_schemas` itself takes one `--schema` or all of them, so the
   executor is driven directly with `migrate_schemas`' own parsed options — the same
   code path `migrate_schemas` runs per schema. `--executor=multiprocessing` (the
   default beyond a few schemas) forks `TENANT_MULTIPROCESSING_MAX_PROCESSES` workers.

System checks run once, for this command, and are skipped in the per-schema migrate
runs. When nothing is behind it prints "nothing to migrate" and exits 0; when schemas are
still behind afterwards it exits 1 naming them.
"""

from __future__ import annotations

import time

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django_tenants.management.commands import migrate_schemas
from django_tenants.utils import get_public_schema_name

from tenants.migration_status import migration_status
from tenants.provisioning import schema_provision

from .pending_migrations import schemas_sentence

# Below this many tenant schemas to migrate, forking workers costs more than it saves.
MULTIPROCESSING_FROM = 4


def migrate_schemas_options(**overrides) -> dict:
    """`migrate_schemas`' options as its own parser produces them, plus `overrides`."""
    command = migrate_schemas.Command()
    options = vars(command.create_parser("manage.py", "migrate_schemas").parse_args([]))
    options.update(overrides)
    return options


class Command(BaseCommand):
    help = (
        "Migrate only the schemas with unapplied migrations: public (migrate_schemas --shared) "
        "if behind, then the tenant schemas that are behind. Prints 'nothing to migrate' when "
        "every schema is up to date."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--executor", choices=["auto", "standard", "multiprocessing"], default="auto",
            help=f"django-tenants executor for tenant schemas (auto: multiprocessing from "
                 f"{MULTIPROCESSING_FROM} schemas on).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Only print what would be migrated.")

    def handle(self, *args, executor: str = "auto", dry_run: bool = False, **options):
        started = time.perf_counter()
        verbosity = options["verbosity"]
        public = get_public_schema_name()
        status = migration_status()
        total = len(status.schemas)
        if not status.pending:
            self.stdout.write(self.style.SUCCESS(f"nothing to migrate: all {total} schemas up to date"))
            return

        missing_schemas = set(status.missing_schemas)
        tenants = [name for name in status.pending if name != public and name not in missing_schemas]
        codename = executor if executor != "auto" else (
            "multiprocessing" if len(tenants) >= MULTIPROCESSING_FROM else "standard"
        )
        self.stdout.write(f"{len(status.pending)} of {total} schemas behind")
        for schema, missing in status.pending.items():
            if verbosity >= 2 or len(status.pending) <= 20:
                self.stdout.write(f"  {schema}: {', '.join(missing)}")
        if dry_run:
            return

        if public in status.pending:
            self.stdout.write(f"migrating {public} (migrate_schemas --shared)")
            call_command("migrate_schemas", shared=True, interactive=False, skip_checks=True,
                         verbosity=verbosity, stdout=self.stdout, stderr=self.stderr)
        for schema in sorted(missing_schemas):
            self.stdout.write(f"provisioning missing schema {schema}")
            schema_provision(schema)
        if tenants:
            self.stdout.write(f"migrating {len(tenants)} tenant schemas (executor: {codename})")
            tenant_executor = migrate_schemas.GET_EXECUTOR_FUNCTION(codename=codename)(
                (), migrate_schemas_options(interactive=False, skip_checks=True, executor=codename,
                                            verbosity=verbosity),
            )
            tenant_executor.run_migrations(tenants=list(tenants))

        after = migration_status()
        if after.pending:
            behind = list(after.pending)
            raise CommandError(
                f"{len(behind)} schemas are still behind after migrating: {schemas_sentence(behind)}",
                returncode=1,
            )
        migrated = (1 if public in status.pending else 0) + len(tenants) + len(missing_schemas)
        self.stdout.write(self.style.SUCCESS(
            f"migrated {migrated} of {total} schemas in {time.perf_counter() - started:.1f} s; all up to date"
        ))
