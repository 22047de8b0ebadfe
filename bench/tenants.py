#!/usr/bin/env python
"""Tenancy benchmark: organization creation, the pending-migrations check, no-op migrates.

    .venv/bin/python bench/tenants.py --orgs 1000 [--migrate-sample 200] [--reset]

Runs against its OWN database (`--database`, default `prumo_bench`) on the server of
DATABASE_URL; the database named in DATABASE_URL (the dev database) is never touched.
The first run creates the bench database and migrates `public` (about 80 s); later runs
reuse it. `--orgs N` is the number of bench organizations the database should hold: the
missing ones are created (and timed) through `organization_create`. When none are
missing, `--sample-creates` organizations are created and timed inside a transaction
that is rolled back, so every run reports creation times. `--reset` drops the bench
database first.

Figures (goals in brackets):
  1. organization creation, p50/p95/max            [p50 <= 1 s]
  2. pending check over all schemas: `manage.py pending_migrations` wall time
     (process start included) and the in-process function time  [<= 2 s end to end]
  3. full no-op `manage.py migrate_schemas` over the first `--migrate-sample` tenants,
     run in a scratch copy of the bench database that keeps only those organizations:
     standard executor, multiprocessing, multiprocessing + --skip-checks; plus
     `deploy_migrate` there and on the full bench database      [<= 30 s for 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path and this module would
# shadow the `tenants` app: put the project root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/prumo"
SLUG_PREFIX = "bench-"
OWNER_EMAIL = "bench-owner@example.com"


# ---------------------------------------------------------------- helpers


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def admin_connect(url: str):
    import psycopg

    return psycopg.connect(with_database(url, "postgres"), autocommit=True)


def database_exists(admin, name: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def drop_database(admin, name: str) -> None:
    from psycopg import sql

    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary(values: list[float]) -> str:
    return (f"n={len(values)} p50={percentile(values, 50) * 1000:.0f} ms "
            f"p95={percentile(values, 95) * 1000:.0f} ms max={max(values) * 1000:.0f} ms")


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def manage(args: list[str], url: str, *, quiet: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    """Run `manage.py <args>` against `url`; return (wall seconds, completed process)."""
    env = {**os.environ, "DATABASE_URL": url}
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env,
                               capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0 or not quiet:
        print(completed.stdout[-3000:], completed.stderr[-3000:], sep="\n", file=sys.stderr)
    return elapsed, completed


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


# ---------------------------------------------------------------- steps


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    import logging

    import django

    django.setup()
    # organization_create logs two audit lines per organization at INFO.
    logging.getLogger("tenants").setLevel(logging.WARNING)


def ensure_migrated() -> None:
    from django.core.management import call_command

    from tenants.migration_status import migration_status

    if migration_status().pending:
        section("migrating the bench database (deploy_migrate)")
        started = time.perf_counter()
        call_command("deploy_migrate", verbosity=0)
        print(f"migrated in {time.perf_counter() - started:.1f} s")


def bench_owner():
    from allauth.account.models import EmailAddress

    from accounts.models import User

    user, created = User.objects.get_or_create(email=OWNER_EMAIL, defaults={"name": "Bench Owner"})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
        EmailAddress.objects.get_or_create(user=user, email=OWNER_EMAIL, defaults={"verified": True, "primary": True})
    return user


def create_organizations(target: int, sample: int) -> dict:
    from django.db import transaction

    from tenants.audit.services import Actor
    from tenants.models import Organization
    from tenants.services import organization_create

    section(f"organizations: {target} wanted")
    owner = bench_owner()
    actor = Actor.system("bench")
    existing = set(Organization.objects.filter(slug__startswith=SLUG_PREFIX).values_list("slug", flat=True))
    missing = [f"{SLUG_PREFIX}{n:05d}" for n in range(1, target + 1) if f"{SLUG_PREFIX}{n:05d}" not in existing]
    print(f"{len(existing)} bench organizations exist, creating {len(missing)}", flush=True)
    times: list[float] = []
    for done, slug in enumerate(missing, start=1):
        started = time.perf_counter()
        organization_create(user=owner, name=f"Bench {slug}", slug=slug, actor=actor)
        times.append(time.perf_counter() - started)
        if done % 100 == 0 or done == len(missing):
            print(f"  {done}/{len(missing)} created, last 100: {summary(times[-100:])}", flush=True)
    committed = bool(times)
    if not times:
        print(f"nothing to create: timing {sample} creations in a rolled-back transaction")
        with transaction.atomic():
            for n in range(sample):
                started = time.perf_counter()
                organization_create(user=owner, name=f"Bench sample {n}", slug=f"bench-sample-{n}", actor=actor)
                times.append(time.perf_counter() - started)
            transaction.set_rollback(True)
    total = Organization.objects.exclude(schema_name="public").count()
    print(f"creation ({'committed' if committed else 'rolled back'}): {summary(times)}")
    return {"times": times, "committed": committed, "total_orgs": total}


def time_pending_check(url: str, repeats: int) -> dict:
    from django.db import connection

    from tenants.migration_status import expected_migrations, migration_status

    section("pending-migrations check")
    started = time.perf_counter()
    status = migration_status()
    cold = time.perf_counter() - started
    schemas = len(status.schemas)
    print(f"in-process migration_status(), first call: {cold * 1000:.0f} ms for {schemas} schemas, "
          f"{len(status.pending)} behind")
    warm, loader = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        expected_migrations()
        loader.append(time.perf_counter() - started)
        started = time.perf_counter()
        migration_status()
        warm.append(time.perf_counter() - started)
    print(f"in-process migration_status(), repeated: median {statistics.median(warm) * 1000:.0f} ms "
          f"(of which migration graph from disk: median {statistics.median(loader) * 1000:.0f} ms)")

    # Query shapes for the same check (see the comment on _SCHEMAS_SQL in
    # tenants/migration_status.py, which uses the fenced one with rows compared in Python).
    from tenants.migration_status import _quote_ident

    checked = [state.name for state in status.schemas if state.has_migrations_table]
    keys = expected_migrations().all_keys

    def union(branch) -> str:
        return "\nUNION ALL\n".join(branch(i, _quote_ident(s)) for i, s in enumerate(checked))

    expected_cte = "WITH expected(key) AS MATERIALIZED (SELECT unnest(%s::text[]))"
    fenced = union(lambda i, s: f"(SELECT {i} AS i, app || '.' || name AS key FROM {s}.django_migrations OFFSET 0)")
    variants = {
        "UNION ALL, fenced branches, anti-join in SQL": (
            expected_cte + f", recorded(i, key) AS ({fenced})\n"
            f"SELECT s.i, array_agg(e.key) FROM generate_series(0, {len(checked) - 1}) s(i) CROSS JOIN expected e "
            "WHERE NOT EXISTS (SELECT 1 FROM recorded r WHERE r.i = s.i AND r.key = e.key) GROUP BY s.i",
            [keys], repeats),
        "UNION ALL, fenced branches, rows diffed in Python": (
            union(lambda i, s: f"(SELECT {i}, app || '.' || name FROM {s}.django_migrations OFFSET 0)"),
            None, repeats),
        "UNION ALL, unfenced branches, rows diffed in Python": (
            union(lambda i, s: f"SELECT {i}, app || '.' || name FROM {s}.django_migrations"), None, repeats),
        "UNION ALL, fenced count of expected rows per schema": (
            expected_cte + "\n" + union(lambda i, s: f"(SELECT {i}, (SELECT count(*) FROM {s}.django_migrations m "
                                              f"JOIN expected e ON e.key = m.app || '.' || m.name) OFFSET 0)"),
            [keys], repeats),
        "UNION ALL, unfenced ARRAY(expected EXCEPT recorded)": (
            expected_cte + "\nSELECT i, missing FROM (" + union(
                lambda i, s: f"SELECT {i} AS i, ARRAY(SELECT key FROM expected EXCEPT "
                             f"SELECT app || '.' || name FROM {s}.django_migrations) AS missing"
            ) + ") x WHERE cardinality(missing) > 0", [keys], 1),
    }
    query_times = {}
    for label, (sql, params, times) in variants.items():
        runs = []
        for _ in range(times):
            started = time.perf_counter()
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                rows = cursor.fetchall()
                if "in Python" in label:
                    recorded: dict[int, set[str]] = {}
                    for i, key in rows:
                        recorded.setdefault(i, set()).add(key)
                    _ = {i: set(keys) - got for i, got in recorded.items()}
            runs.append(time.perf_counter() - started)
        query_times[label] = statistics.median(runs)
        print(f"  query shape '{label}': median {query_times[label] * 1000:.0f} ms "
              f"({len(rows)} rows, {times} runs)", flush=True)

    runs = []
    for _ in range(repeats):
        elapsed, completed = manage(["pending_migrations"], url)
        assert completed.returncode == 0, "pending_migrations reported schemas behind"
        runs.append(elapsed)
    print(f"`manage.py pending_migrations` end to end: median {statistics.median(runs):.2f} s, "
          f"max {max(runs):.2f} s ({completed.stdout.strip()})")
    elapsed, completed = manage(["deploy_migrate"], url)
    assert completed.returncode == 0
    print(f"`manage.py deploy_migrate` (no-op) end to end: {elapsed:.2f} s ({completed.stdout.strip()})")
    return {"schemas": schemas, "in_process_cold": cold, "in_process": statistics.median(warm),
            "loader": statistics.median(loader), "queries": query_times, "wall": statistics.median(runs),
            "wall_max": max(runs), "deploy_noop": elapsed}


def time_drift() -> dict:
    from tenants.migration_status import drift_report

    section("schema drift")
    started = time.perf_counter()
    report = drift_report()
    elapsed = time.perf_counter() - started
    print(f"drift_report(): {elapsed * 1000:.0f} ms for {report.checked} tenant schemas, "
          f"{len(report.drifted)} drifted")
    return {"seconds": elapsed, "checked": report.checked, "drifted": len(report.drifted)}


def time_noop_migrates(admin, url: str, bench_db: str, sample: int, repeats: int) -> dict:
    """No-op `migrate_schemas` over `sample` tenants, in a scratch copy keeping only those."""
    from django.db import connections

    section(f"no-op migrate_schemas over {sample} tenants")
    scratch = f"{bench_db}_migrate"
    scratch_url = with_database(url, scratch)
    connections.close_all()  # CREATE DATABASE ... TEMPLATE needs the template unused
    drop_database(admin, scratch)
    started = time.perf_counter()
    from psycopg import sql

    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(scratch), sql.Identifier(bench_db)))
    keep = (
        "from tenants.models import Organization as O\n"
        "tenants = O.objects.exclude(schema_name='public')\n"
        f"keep = list(tenants.order_by('schema_name').values_list('pk', flat=True)[:{sample}])\n"
        "tenants.exclude(pk__in=keep).delete()\n"
        "print(tenants.count())\n"
    )
    _, completed = manage(["shell", "-c", keep], scratch_url)
    tenants = int(completed.stdout.strip().splitlines()[-1])
    print(f"scratch database {scratch} with {tenants} tenants ready in {time.perf_counter() - started:.1f} s")

    import psycopg

    pending_label = f"deploy_migrate, sessions.0001_initial missing in all {tenants} tenants"
    runs = {
        "standard executor": ["migrate_schemas", "--noinput"],
        "multiprocessing": ["migrate_schemas", "--noinput", "--executor=multiprocessing"],
        "multiprocessing + --skip-checks": ["migrate_schemas", "--noinput", "--executor=multiprocessing",
                                            "--skip-checks"],
        "deploy_migrate (nothing pending)": ["deploy_migrate"],
        pending_label: ["deploy_migrate"],
    }
    results: dict = {"tenants": tenants, **{label: [] for label in runs}}
    for round_number in range(1, repeats + 1):
        print(f"  round {round_number}/{repeats}", flush=True)
        for label, args in runs.items():
            if label == pending_label:
                # The deploy path with work to do: a shared app's migration missing from
                # every tenant schema (as when a release adds one) is re-recorded everywhere.
                with psycopg.connect(scratch_url, autocommit=True) as scratch_connection:
                    scratch_connection.execute("""
                        DO $$ DECLARE s text; BEGIN
                          FOR s IN SELECT schema_name FROM public.tenants_organization
                                    WHERE schema_name <> 'public' LOOP
                            EXECUTE format('DELETE FROM %I.django_migrations WHERE app = %L AND name = %L',
                                           s, 'sessions', '0001_initial');
                          END LOOP;
                        END $$""")
            elapsed, completed = manage(args, scratch_url)
            assert completed.returncode == 0, f"{label} failed"
            results[label].append(elapsed)
            print(f"    {label}: {elapsed:.1f} s ({completed.stdout.strip().splitlines()[-1][:80]})", flush=True)
    drop_database(admin, scratch)
    return results


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, default=1000, help="bench organizations the database should hold")
    parser.add_argument("--migrate-sample", type=int, default=200, help="tenants for the no-op migrate runs")
    parser.add_argument("--migrate-repeats", type=int, default=2, help="rounds of the migrate runs")
    parser.add_argument("--sample-creates", type=int, default=20,
                        help="creations timed in a rolled-back transaction when none are missing")
    parser.add_argument("--repeats", type=int, default=10, help="repetitions of the pending check")
    parser.add_argument("--database", default="prumo_bench", help="bench database name (never the dev one)")
    parser.add_argument("--reset", action="store_true", help="drop the bench database first")
    parser.add_argument("--skip-migrate", action="store_true", help="skip the no-op migrate runs")
    options = parser.parse_args()

    base_url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    if options.database == database_of(base_url):
        sys.exit(f"refusing to use {options.database}: it is the database of DATABASE_URL")
    url = with_database(base_url, options.database)
    admin = admin_connect(base_url)
    if options.reset:
        print(f"dropping {options.database}")
        drop_database(admin, options.database)
    if not database_exists(admin, options.database):
        from psycopg import sql

        print(f"creating {options.database}")
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(options.database)))

    import django as django_module

    setup_django(url)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        server_version = cursor.fetchone()[0]
    print(f"bench database {options.database} on {urlsplit(url).hostname}:{urlsplit(url).port} "
          f"(PostgreSQL {server_version}), Django {django_module.get_version()}, {os.cpu_count()} CPUs")

    ensure_migrated()
    creation = create_organizations(options.orgs, options.sample_creates)
    pending = time_pending_check(url, options.repeats)
    drift = time_drift()
    migrate = None if options.skip_migrate else time_noop_migrates(
        admin, url, options.database, options.migrate_sample, options.migrate_repeats)

    section("summary")
    times = creation["times"]
    p50 = percentile(times, 50)
    print(f"organization creation ({'committed' if creation['committed'] else 'rolled back'}): "
          f"{summary(times)} -> goal p50 <= 1 s: {verdict(p50 <= 1)}")
    print(f"pending check over {pending['schemas']} schemas ({creation['total_orgs']} tenants): "
          f"`manage.py pending_migrations` {pending['wall']:.2f} s end to end (max {pending['wall_max']:.2f} s), "
          f"in-process {pending['in_process'] * 1000:.0f} ms (first call {pending['in_process_cold'] * 1000:.0f} ms)"
          f" -> goal <= 2 s: {verdict(pending['wall_max'] <= 2)}")
    print(f"`manage.py deploy_migrate` with nothing pending, {pending['schemas']} schemas: "
          f"{pending['deploy_noop']:.2f} s")
    print(f"schema drift over {drift['checked']} tenant schemas: {drift['seconds'] * 1000:.0f} ms")
    if migrate:
        def runs_text(values: list[float]) -> str:
            return f"best {min(values):.1f} s (runs: {', '.join(f'{v:.1f}' for v in values)} s)"

        for label, values in migrate.items():
            if label != "tenants":
                print(f"migrate over {migrate['tenants']} tenants, {label}: {runs_text(values)}")
        best = min(min(v) for k, v in migrate.items() if k.startswith("multiprocessing"))
        noop_deploy = min(migrate["deploy_migrate (nothing pending)"])
        print(f"  -> goal full no-op migrate <= 30 s: best migrate_schemas {best:.1f} s {verdict(best <= 30)}; "
              f"deploy path (deploy_migrate) {noop_deploy:.1f} s {verdict(noop_deploy <= 30)}")


if __name__ == "__main__":
    main()
