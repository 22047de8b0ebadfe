"""Pending-migration and schema-drift checks over every schema, against the real database.

Everything a test changes (deleted `django_migrations` rows, altered tables, extra
organizations) happens inside the test's transaction and is rolled back.
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tenants.audit.services import Actor
from tenants.migration_status import (
    REFERENCE_PREFIX,
    ExpectedMigrations,
    expected_migrations,
    migration_status,
    pending_by_schema,
    schema_drift,
)
from tenants.services import organization_create


def sql(statement: str, params=None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def run(command: str, **options) -> str:
    out = StringIO()
    call_command(command, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def run_failing(command: str, **options) -> tuple[str, CommandError]:
    out = StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command(command, stdout=out, stderr=StringIO(), **options)
    return out.getvalue(), excinfo.value


def reference_schemas() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", [REFERENCE_PREFIX])
        return [row[0] for row in cursor.fetchall()]


# ---------------------------------------------------------------- pending migrations


def test_expected_set_is_every_graph_node_in_public_and_tenants(org_a):
    """What the check assumes, verified on the migrated test database."""
    nodes = set(expected_migrations().nodes)
    assert "audit.0001_initial" in nodes and "auth.0001_initial" in nodes
    for schema in ("public", org_a.schema_name):
        with connection.cursor() as cursor:
            cursor.execute(f'SELECT app || \'.\' || name FROM "{schema}".django_migrations')
            recorded = {row[0] for row in cursor.fetchall()}
        assert nodes <= recorded, (schema, sorted(nodes - recorded))


def test_squashed_migration_counts_as_applied_when_everything_it_replaces_is():
    expected = ExpectedMigrations(nodes=("a.0001_squashed_0002", "b.0001"),
                                  replaces={"a.0001_squashed_0002": ("a.0001", "a.0002")})
    assert expected.all_keys == ["a.0001", "a.0001_squashed_0002", "a.0002", "b.0001"]
    # Recorded the replaced migrations only (migrated before the squash existed): applied.
    assert expected.unsatisfied(["a.0001_squashed_0002"]) == []
    # Recorded the squash only (a new schema): applied.
    assert expected.unsatisfied(["a.0001", "a.0002"]) == []
    # Half of what it replaces: pending, named by the squash.
    assert expected.unsatisfied(["a.0001_squashed_0002", "a.0002", "b.0001"]) == ["a.0001_squashed_0002", "b.0001"]


def test_up_to_date_world_has_nothing_pending(org_a, org_b):
    status = migration_status()
    names = [state.name for state in status.schemas]
    assert names[0] == "public" and {org_a.schema_name, org_b.schema_name} <= set(names)
    assert pending_by_schema() == {}
    assert f"all {len(names)} schemas up to date" in run("pending_migrations")
    assert run("pending_migrations", quiet=True) == ""


def test_deleted_migration_row_is_pending_for_that_schema_only(org_a, org_b):
    sql(f'DELETE FROM "{org_a.schema_name}".django_migrations WHERE app = %s AND name = %s',
        ["audit", "0001_initial"])

    assert pending_by_schema() == {org_a.schema_name: ["audit.0001_initial"]}

    out, error = run_failing("pending_migrations")
    assert error.returncode == 1
    assert org_a.schema_name in str(error) and org_b.schema_name not in str(error)
    assert f"{org_a.schema_name}: 1 unapplied: audit.0001_initial" in out

    quiet_out, quiet_error = run_failing("pending_migrations", quiet=True)
    assert quiet_out == "" and org_a.schema_name in str(quiet_error)


def test_public_behind_is_reported(org_a):
    sql("DELETE FROM public.django_migrations WHERE app = %s AND name = %s", ["sessions", "0001_initial"])
    assert pending_by_schema() == {"public": ["sessions.0001_initial"]}


def test_schema_without_migrations_table_is_behind_on_everything(org_b):
    sql(f'DROP TABLE "{org_b.schema_name}".django_migrations')
    pending = pending_by_schema()
    assert list(pending) == [org_b.schema_name]
    assert pending[org_b.schema_name] == list(expected_migrations().nodes)


def test_query_count_does_not_grow_with_organizations(tenant_world, org_a):
    def selects() -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            assert pending_by_schema() == {}
        statements = [query["sql"] for query in queries]
        assert len(statements) <= 4, statements  # plus at most one SET search_path
        return [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH", "(SELECT"))]

    before = selects()
    owner = tenant_world["a"]["owner"]
    for n in range(3):
        organization_create(user=owner, name=f"Count {n}", slug=f"count-{n}", actor=Actor.system("tests"))
    checked = {state.name for state in migration_status().schemas}
    assert {"org_count_0", "org_count_1", "org_count_2"} <= checked
    after = selects()
    assert len(before) == len(after) == 3


# ---------------------------------------------------------------- deploy_migrate


def test_deploy_migrate_does_nothing_when_up_to_date(org_a):
    assert "nothing to migrate" in run("deploy_migrate")


def test_deploy_migrate_migrates_only_the_schema_behind(org_a, org_b):
    # A shared app's migration is recorded in tenant schemas as a no-op: re-applying it
    # there only records it again.
    sql(f'DELETE FROM "{org_a.schema_name}".django_migrations WHERE app = %s AND name = %s',
        ["sessions", "0001_initial"])
    assert "1 of" in run("deploy_migrate", dry_run=True)
    assert pending_by_schema() == {org_a.schema_name: ["sessions.0001_initial"]}

    out = run("deploy_migrate", executor="standard")
    assert f"{org_a.schema_name}: sessions.0001_initial" in out
    assert "migrating 1 tenant schemas (executor: standard)" in out
    assert "all up to date" in out
    assert pending_by_schema() == {}
    assert connection.schema_name == "public"


def test_deploy_migrate_provisions_an_organization_without_schema(org_a, org_b):
    sql(f'DROP SCHEMA "{org_b.schema_name}" CASCADE')
    status = migration_status()
    assert status.missing_schemas == [org_b.schema_name]
    assert list(status.pending) == [org_b.schema_name]

    out = run("deploy_migrate", executor="standard")

    assert f"provisioning missing schema {org_b.schema_name}" in out
    assert pending_by_schema() == {}
    assert schema_drift() == {}


# ---------------------------------------------------------------- drift


def test_no_drift_and_reference_schema_rolled_back(org_a, org_b):
    assert schema_drift() == {}
    assert "no drift in" in run("schema_drift")
    assert reference_schemas() == []


def test_extra_column_and_dropped_index_are_drift(org_a, org_b):
    sql(f'ALTER TABLE "{org_a.schema_name}".audit_auditevent ADD COLUMN extra integer')
    sql(f'DROP INDEX "{org_b.schema_name}".audit_target_idx')

    drift = schema_drift()

    assert set(drift) == {org_a.schema_name, org_b.schema_name}
    assert drift[org_a.schema_name] == ["extra column audit_auditevent.extra: integer NULL"]
    assert drift[org_b.schema_name] == [
        "missing index audit_target_idx on audit_auditevent: "
        "CREATE INDEX audit_target_idx ON audit_auditevent USING btree (target_type, target_id)"
    ]
    out, error = run_failing("schema_drift")
    assert error.returncode == 1
    assert org_a.schema_name in str(error) and org_b.schema_name in str(error)
    assert "extra column audit_auditevent.extra" in out
    assert reference_schemas() == []


def test_missing_schema_is_drift(org_a, org_b):
    sql(f'DROP SCHEMA "{org_b.schema_name}" CASCADE')
    assert schema_drift() == {org_b.schema_name: ["schema does not exist"]}


def test_changed_column_type_is_drift(org_a):
    sql(f'ALTER TABLE "{org_a.schema_name}".audit_auditevent ALTER COLUMN action TYPE text')
    assert schema_drift() == {org_a.schema_name: [
        "column audit_auditevent.action differs: "
        "expected 'character varying(100) NOT NULL', found 'text NOT NULL'"
    ]}
