"""The audit log is tamper-evident and append-only (issue 14, item 7) and keeps what the plan says (item 8).

The database itself refuses UPDATE, DELETE and TRUNCATE on the audit table (raw SQL included) except for the
retention purge's DELETE; every event carries the hash of the one before it; `manage.py audit_verify` finds
the first broken link. Triggers are disabled inside a test's transaction only (rolled back with it).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from datetime import UTC, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import ProgrammingError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.recorder import MigrationRecorder
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from billing.services import billing_account_ensure
from tenants.audit.integrity import audit_chain_verify
from tenants.audit.models import AuditEvent
from tenants.audit.services import Actor, audit_purge, audit_record
from tenants.audit.tasks import audit_purge_fanout
from tenants.models import Organization
from tenants.provisioning import schema_provision
from tenants.services import organization_create, schema_name_for

from .orgs import organization_drop

TABLE = "audit_auditevent"
AGES_DAYS = [400, 100, 60, 20, 10, 5, 1]  # the rows every retention test starts with, oldest first


def new_org(tenant_world, slug: str, plan: str = "free") -> Organization:
    """An organization of the test's own (inside its transaction): its chain is all ours."""
    org = organization_create(user=tenant_world["a"]["owner"], name=slug.title(), slug=slug,
                              actor=Actor.system("tests"))
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code=plan))
    return org


def bare_org(tenant_world, slug: str, plan: str) -> Organization:
    """An organization with a schema and a plan but no events yet (organization_create writes two, now):
    the rows a retention test writes come first in its chain, as they would have in real time."""
    org = Organization.objects.create(name=slug.title(), slug=slug, schema_name=schema_name_for(slug),
                                      created_by=tenant_world["a"]["owner"])
    schema_provision(org.schema_name)
    billing_account_ensure(org)
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code=plan))
    return org


def sql(org, statement: str, params=None) -> list:
    with schema_context(org.schema_name), connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def record(org, action: str, **kwargs) -> AuditEvent:
    return audit_record(organization=org, actor=Actor(type="user", id="7", label="ana@example.com",
                                                      ip_address="203.0.113.9"), action=action, **kwargs)


def aged(org, days: float, action: str = "thing.done") -> AuditEvent:
    """An event written `days` ago (through the chain trigger, like any insert)."""
    with schema_context(org.schema_name):
        return AuditEvent.objects.create(actor_type="user", actor_id="7", actor_label="ana@example.com",
                                         action=action, target_label=f"{days} days old",
                                         after={"email": "ana@example.com"},
                                         created_at=timezone.now() - timedelta(days=days))


def with_triggers_off(org, statement: str, params=None) -> None:
    """What someone with the table's owner rights could do: the change the chain must reveal."""
    sql(org, f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
    sql(org, statement, params)
    sql(org, f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")


def ids(org, **filters) -> list[int]:
    with schema_context(org.schema_name):
        return list(AuditEvent.objects.filter(**filters).order_by("id").values_list("id", flat=True))


def verify(*args: str) -> tuple[str, int]:
    out = io.StringIO()
    try:
        call_command("audit_verify", *args, stdout=out)
    except CommandError as error:
        return out.getvalue() + str(error), error.returncode
    return out.getvalue(), 0


# ---------------------------------------------------------------- the chain


def test_each_event_is_chained_to_the_one_before_by_a_documented_hash(tenant_world, db):
    org = new_org(tenant_world, "chain-doc")
    first = record(org, "thing.created", target_type="things.thing", target_id="3", target_label="Thing",
                   after={"name": "Thing", "size": 1.5, "tags": ["b", "a"]})
    second = record(org, "thing.deleted", target_type="things.thing", target_id="3", before={"name": "Thing"})

    assert len(first.hash) == 64 and second.prev_hash == first.hash, "the returned event carries its hash"
    with schema_context(org.schema_name):
        rows = list(AuditEvent.objects.order_by("id").values_list("prev_hash", "hash"))
    assert rows[0][0] == "", "the organization's first event starts the chain"
    assert all(prev == before[1] for before, (prev, _hash) in zip(rows, rows[1:], strict=False))
    [[canonical]] = sql(org, f"SELECT audit_event_canonical(e) FROM {TABLE} e WHERE id = %s", [first.pk])
    assert hashlib.sha256(canonical.encode()).hexdigest() == first.hash
    assert json.loads(canonical) == {
        "id": first.pk, "created_at": first.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor_type": "user", "actor_id": "7", "actor_label": "ana@example.com", "action": "thing.created",
        "target_type": "things.thing", "target_id": "3", "target_label": "Thing", "ip_address": "203.0.113.9",
        "user_agent": "", "request_id": "", "before": None, "after": {"name": "Thing", "size": 1.5, "tags": ["b", "a"]},
        "prev_hash": first.prev_hash,
    }


def test_audit_record_costs_one_statement_the_insert(tenant_world, db):
    org = new_org(tenant_world, "chain-cost")
    with CaptureQueriesContext(connection) as queries:
        record(org, "thing.created")
    statements = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith("SET search_path")]
    assert len(statements) == 1 and statements[0].startswith(f'INSERT INTO "{TABLE}"'), statements
    assert "RETURNING" in statements[0], "id, prev_hash and hash come back with the insert"


def test_a_writer_that_drew_its_id_before_the_last_one_gets_a_later_id(tenant_world, db):
    """Ids are drawn before the chain lock: an insert whose id is older than the chain's last event is
    renumbered, so id order stays chain order (what the concurrent test below relies on)."""
    org = new_org(tenant_world, "chain-ids")
    [[stale]] = sql(org, f"SELECT nextval(pg_get_serial_sequence('{TABLE}', 'id'))")
    last = record(org, "thing.created")
    [[renumbered]] = sql(org, f"INSERT INTO {TABLE} (id, actor_type, actor_id, actor_label, action, target_type, "
                              "target_id, target_label, user_agent, request_id, created_at) "
                              "VALUES (%s, 'system', '', 'x', 'late.writer', '', '', '', '', '', now()) RETURNING id",
                         [stale])
    assert stale < last.pk < renumbered
    assert audit_chain_verify(organization=org).intact


def test_concurrent_writers_in_one_organization_never_fork_the_chain(tenant_world, django_db_blocker):
    threads_count, per_thread = 8, 6
    with django_db_blocker.unblock():
        org = organization_create(user=tenant_world["a"]["owner"], name="Chain Race", slug="chain-race",
                                  actor=Actor.system("tests"))
    start = threading.Barrier(threads_count)
    failures: list[BaseException] = []

    def write(n: int) -> None:
        try:
            start.wait(timeout=30)
            for i in range(0, per_thread, 2):
                with transaction.atomic():  # two events per transaction, transactions interleaved
                    record(org, "race.step", target_id=f"{n}-{i}")
                    record(org, "race.step", target_id=f"{n}-{i + 1}")
        except BaseException as error:  # noqa: BLE001 (reported below)
            failures.append(error)
        finally:
            connection.close()

    try:
        with django_db_blocker.unblock():
            workers = [threading.Thread(target=write, args=(n,)) for n in range(threads_count)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=120)
            assert not failures, failures
            status = audit_chain_verify(organization=org)
            assert status.intact, status.broken
            assert status.events == 2 + threads_count * per_thread  # organization.created, membership.created
            assert len(set(ids(org, action="race.step"))) == threads_count * per_thread
    finally:
        with django_db_blocker.unblock():
            organization_drop(Organization.objects.get(pk=org.pk))


# ---------------------------------------------------------------- append-only


def test_the_database_refuses_update_delete_and_truncate_even_in_raw_sql(tenant_world, db):
    org = new_org(tenant_world, "chain-guard")
    event = record(org, "thing.created")
    refused = {
        "UPDATE": f"UPDATE {TABLE} SET actor_label = 'someone else' WHERE id = %s",
        "DELETE": f"DELETE FROM {TABLE} WHERE id = %s",
        "TRUNCATE": f"TRUNCATE {TABLE}",
    }
    for operation, statement in refused.items():
        with pytest.raises(ProgrammingError, match=f"audit events are append-only: {operation} refused"):
            with transaction.atomic():
                sql(org, statement, [event.pk] if "%s" in statement else None)
    with schema_context(org.schema_name):
        with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic():
            AuditEvent.objects.filter(pk=event.pk).update(action="thing.hidden")
        with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic():
            AuditEvent.objects.filter(pk=event.pk).delete()
        assert AuditEvent.objects.get(pk=event.pk).actor_label == "ana@example.com"


def test_the_purge_setting_lets_delete_through_and_never_update(tenant_world, db):
    org = new_org(tenant_world, "chain-setting")
    event = record(org, "thing.created")
    with transaction.atomic():
        sql(org, "SET LOCAL prumo.audit_purge = 'on'")
        with pytest.raises(ProgrammingError, match="UPDATE refused"), transaction.atomic():
            sql(org, f"UPDATE {TABLE} SET action = 'x' WHERE id = %s", [event.pk])
        sql(org, f"DELETE FROM {TABLE} WHERE id = %s", [event.pk])
    assert event.pk not in ids(org)


def test_new_organizations_get_the_guard_and_the_chain(tenant_world, db):
    org = new_org(tenant_world, "chain-fresh")
    triggers = sql(org, "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
                        "ORDER BY tgname", [f'"{org.schema_name}".{TABLE}'])
    assert [name for (name,) in triggers] == ["audit_event_append_only", "audit_event_chain",
                                             "audit_event_no_truncate"]
    assert audit_chain_verify(organization=org).events == 2


# ---------------------------------------------------------------- audit_verify


def test_audit_verify_says_ok_with_the_count(tenant_world, db):
    org = new_org(tenant_world, "chain-ok")
    for n in range(3):
        record(org, "thing.created", target_id=str(n))
    out, code = verify("--org", org.slug)
    assert code == 0 and out.strip() == f"{org.slug}: OK, 5 events"


def test_audit_verify_names_exactly_the_altered_row(tenant_world, db):
    org = new_org(tenant_world, "chain-altered")
    events = [record(org, "thing.created", target_id=str(n)) for n in range(4)]
    altered = events[1]
    with_triggers_off(org, f"UPDATE {TABLE} SET actor_label = 'someone else' WHERE id = %s", [altered.pk])

    status = audit_chain_verify(organization=org)
    assert (status.broken.event_id, status.broken.reason) == (altered.pk, "hash")
    out, code = verify("--org", org.slug)
    assert code == 1
    assert f"{org.slug}: BROKEN at event {altered.pk} ({altered.created_at.isoformat()}): hash mismatch" in out
    assert "audit chain broken in 1 organization(s): chain-altered" in out


def test_audit_verify_finds_a_row_deleted_in_the_middle(tenant_world, db):
    org = new_org(tenant_world, "chain-gap")
    events = [record(org, "thing.created", target_id=str(n)) for n in range(4)]
    with_triggers_off(org, f"DELETE FROM {TABLE} WHERE id = %s", [events[1].pk])

    status = audit_chain_verify(organization=org)
    assert (status.broken.event_id, status.broken.reason) == (events[2].pk, "prev_hash")
    out, code = verify("--org", org.slug)
    assert code == 1 and f"BROKEN at event {events[2].pk}" in out and "prev_hash mismatch" in out


def test_audit_verify_all_checks_every_organization_and_refuses_unknown_slugs(tenant_world, db):
    intact, broken = new_org(tenant_world, "chain-all-ok"), new_org(tenant_world, "chain-all-bad")
    [first] = ids(broken, action="organization.created")
    with_triggers_off(broken, f"UPDATE {TABLE} SET after = '{{}}' WHERE id = %s", [first])

    out, code = verify("--all")
    assert code == 1
    assert f"{intact.slug}: OK, 2 events" in out
    assert f"{broken.slug}: BROKEN at event {first} " in out
    out, code = verify("--org", "no-such-org")
    assert code == 1 and "no organization with slug no-such-org" in out


def test_an_upgraded_database_has_its_existing_rows_chained(tenant_world, db):
    """Migration 0002 on a schema that already holds events (written by 0001's table) chains them in id order."""
    schema = "org_audit_upgrade"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA "{schema}"')
    with schema_context(schema):
        MigrationRecorder(connection).ensure_schema()
        MigrationExecutor(connection).migrate([("audit", "0001_initial")])
        with connection.cursor() as cursor:
            for n, label in enumerate(["ana@example.com", "bia@example.com", "caio@example.com"]):
                cursor.execute(
                    f"INSERT INTO {TABLE} (actor_type, actor_id, actor_label, action, target_type, target_id, "
                    "target_label, ip_address, user_agent, request_id, before, after, created_at) VALUES "
                    "('user', %s, %s, 'old.event', '', '', '', '198.51.100.1', '', '', NULL, %s, now())",
                    [str(n), label, json.dumps({"n": n})],
                )
        MigrationExecutor(connection).migrate([("audit", "0002_chain")])
        rows = list(AuditEvent.objects.order_by("id").values_list("prev_hash", "hash"))
    upgraded = Organization(schema_name=schema, slug="upgraded")
    assert len(rows) == 3 and rows[0][0] == "" and all(len(h) == 64 for _prev, h in rows)
    assert audit_chain_verify(organization=upgraded).intact
    with schema_context(schema):
        new = record(upgraded, "new.event")
    assert new.prev_hash == rows[-1][1]
    with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic():
        sql(upgraded, f"DELETE FROM {TABLE}")


# ---------------------------------------------------------------- retention


def test_the_purge_keeps_each_plans_retention_and_records_it_without_personal_data(tenant_world, db):
    free, pro = bare_org(tenant_world, "keep-free", "free"), bare_org(tenant_world, "keep-pro", "pro")
    for org in (free, pro):
        for days in AGES_DAYS:
            aged(org, days)
    now = timezone.now()

    free_purge = audit_purge(organization=free, now=now, batch_size=2)  # several batches
    pro_purge = audit_purge(organization=pro, now=now)

    def kept(org) -> list[str]:
        with schema_context(org.schema_name):
            return list(AuditEvent.objects.filter(action="thing.done").order_by("id")
                        .values_list("target_label", flat=True))

    assert kept(free) == ["5 days old", "1 days old"], "Free keeps 7 days"
    assert kept(pro) == ["60 days old", "20 days old", "10 days old", "5 days old", "1 days old"], "Pro keeps 90"
    assert (free_purge.deleted, pro_purge.deleted, free_purge.more) == (5, 2, False)
    for org, purge, days in ((free, free_purge, 7), (pro, pro_purge, 90)):
        with schema_context(org.schema_name):
            [event] = AuditEvent.objects.filter(action="audit.purged")
        assert (event.actor_type, event.actor_label, event.target_label) == ("system", "retention", "")
        assert event.after == {"events": purge.deleted, "cutoff": (now - timedelta(days=days)).isoformat(),
                               "retention_days": days, "anchor": event.after["anchor"]}
        assert "ana@example.com" not in json.dumps(event.after)
        assert audit_chain_verify(organization=org).intact, "the chain starts at the purge's anchor"

    again = audit_purge(organization=free, now=now)
    assert again.deleted == 0 and len(ids(free, action="audit.purged")) == 1, "idempotent: nothing new"
    with pytest.raises(ProgrammingError, match="DELETE refused"), transaction.atomic():
        sql(free, f"DELETE FROM {TABLE}")  # the setting ended with the purge


def test_a_purge_in_several_runs_and_tampering_after_it(tenant_world, db):
    org = bare_org(tenant_world, "keep-runs", "free")
    for days in AGES_DAYS:
        aged(org, days)
    now = timezone.now()

    first = audit_purge(organization=org, now=now, batch_size=2, limit=3)
    assert (first.deleted, first.more) == (3, True)
    assert audit_chain_verify(organization=org).intact
    second = audit_purge(organization=org, now=now, batch_size=2, limit=3)
    assert (second.deleted, second.more) == (2, False)
    assert audit_chain_verify(organization=org).intact

    oldest, middle, after_middle = ids(org)[:3]
    with transaction.atomic():
        with_triggers_off(org, f"DELETE FROM {TABLE} WHERE id = %s", [middle])
        status = audit_chain_verify(organization=org)
        assert (status.broken.event_id, status.broken.reason) == (after_middle, "prev_hash")
        transaction.set_rollback(True)
    with_triggers_off(org, f"DELETE FROM {TABLE} WHERE id = %s", [oldest])
    status = audit_chain_verify(organization=org)
    assert (status.broken.event_id, status.broken.reason) == (middle, "start"), "older events went unrecorded"


def test_the_daily_task_purges_every_organization_in_its_schema(tenant_world, db):
    free, business = bare_org(tenant_world, "task-free", "free"), bare_org(tenant_world, "task-business", "business")
    for org in (free, business):
        for days in AGES_DAYS:
            aged(org, days)

    queued = audit_purge_fanout.delay().get()

    assert queued == Organization.objects.exclude(schema_name="public").count()
    assert len(ids(free, action="thing.done")) == 2 and len(ids(business, action="thing.done")) == 6
    for org, deleted in ((free, 5), (business, 1)):
        with schema_context(org.schema_name):
            assert AuditEvent.objects.get(action="audit.purged").after["events"] == deleted
        assert audit_chain_verify(organization=org).intact
    audit_purge_fanout.delay()
    assert len(ids(free, action="audit.purged")) == 1, "a second day with nothing old writes nothing"
