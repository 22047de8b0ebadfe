#!/usr/bin/env python
"""Credit ledger benchmark: debits per second through `billing.ledger.credit_debit`.

    .venv/bin/python bench/credits.py [--debits 2000] [--threads 32] [--orgs 32] [--reset]

Runs against the bench database of bench/tenants.py (`--database`, default `prumo_bench`,
on the server of DATABASE_URL; the dev database is never touched), creating it if
missing and bringing it up to date (`deploy_migrate`) first. Its organizations are
`bench-credits-00` … `bench-credits-<orgs - 1>` and `bench-credits-exhaust`, created once
through `organization_create` and reused by later runs. `--reset` empties their ledgers
(entries, reservations, balance back to 0) instead of dropping the shared database.

Scenarios, each `--debits` debits of 0.01 credits with unique keys after a grant that
covers them: concurrency 1 and `--threads`, on one organization and on `--orgs`
organizations (debit j runs on thread j % threads and hits organization j % orgs, so
with as many threads as organizations thread i always debits organization i). Every
thread has its own connection, opened before the clock starts and closed at its end.
Reported: debits/s (wall clock), p50/p95/p99 of each `credit_debit` call, and a check
that every organization's balance equals `ledger_sum` and the expected figure with no
debit failed. Last, "exhaustion": `--threads` threads attempt `--exhaust-attempts`
debits on one organization whose balance covers exactly `--exhaust-covers` of them.
Then, when a `pgbench` binary is found, a baseline: the ledger's statement (MOVE_SQL)
sent by pgbench (no Django, no Python), for the same four scenarios
(`--pgbench-seconds` each, 0 skips it), to tell the database's ceiling from the client's.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on sys.path and bench/tenants.py would shadow the
# `tenants` app: put the project root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.tenants import (  # noqa: E402
    DEFAULT_URL,
    admin_connect,
    bench_owner,
    database_exists,
    database_of,
    ensure_migrated,
    percentile,
    section,
    setup_django,
    with_database,
)

SLUG_PREFIX = "bench-credits-"
AMOUNT = Decimal("0.01")


# ---------------------------------------------------------------- setup


def bench_database_url(name: str) -> str:
    """The URL of the bench database `name` on DATABASE_URL's server, created if missing."""
    from psycopg import sql

    base_url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    if name == database_of(base_url):
        sys.exit(f"refusing to use {name}: it is the database of DATABASE_URL")
    with admin_connect(base_url) as admin:
        if not database_exists(admin, name):
            print(f"creating {name}")
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(base_url, name)


def bench_organizations(count: int) -> tuple[list, object]:
    """The `count` bench organizations and the exhaustion one, created when missing."""
    from tenants.audit.services import Actor
    from tenants.models import Organization
    from tenants.services import organization_create

    slugs = [f"{SLUG_PREFIX}{n:02d}" for n in range(count)] + [f"{SLUG_PREFIX}exhaust"]
    existing = {org.slug: org for org in Organization.objects.filter(slug__in=slugs)}
    missing = [slug for slug in slugs if slug not in existing]
    if missing:
        print(f"creating {len(missing)} bench organizations", flush=True)
        owner, actor = bench_owner(), Actor.system("bench")
        for slug in missing:
            existing[slug] = organization_create(user=owner, name=f"Bench {slug}", slug=slug, actor=actor)
    orgs = [existing[slug] for slug in slugs]
    return orgs[:-1], orgs[-1]


def ledger_reset(orgs: list) -> None:
    """Empty the bench organizations' ledgers: no entries, no reservations, balance 0."""
    from django.db import transaction

    from billing.models import BillingAccount, CreditEntry, CreditReservation

    with transaction.atomic():
        deleted, _ = CreditEntry.objects.filter(organization__in=orgs).delete()
        CreditReservation.objects.filter(organization__in=orgs).delete()
        BillingAccount.objects.filter(organization__in=orgs).update(credits=Decimal("0"))
    print(f"reset the ledgers of {len(orgs)} bench organizations ({deleted} rows deleted)")


def balance(org) -> Decimal:
    from billing.models import BillingAccount
    from billing.services import billing_account_ensure

    billing_account_ensure(org)
    return BillingAccount.objects.values_list("credits", flat=True).get(pk=org.pk)


# ---------------------------------------------------------------- runs


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O), from /proc/stat."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return float("nan")
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def queries_per_debit(org, run: str) -> list[str]:
    """The statements one debit sends, captured on a single call."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from billing.ledger import credit_debit, credit_grant

    credit_grant(organization=org, amount=AMOUNT, key=f"bench-credits:{run}:probe:grant")
    with CaptureQueriesContext(connection) as captured:
        credit_debit(organization=org, amount=AMOUNT, key=f"bench-credits:{run}:probe:debit", description="bench")
    return [" ".join(query["sql"].split()[:3])[:60] for query in captured]


def debit_concurrently(jobs: list[tuple[object, str]], threads: int) -> dict:
    """Run `jobs` (organization, key) with `threads` threads: job j on thread j % threads."""
    from django.db import connection

    from billing.ledger import InsufficientCredits, credit_debit

    per_thread = [jobs[t::threads] for t in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    outcome = {"created": 0, "insufficient": 0, "replayed": 0, "errors": []}
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def work(index: int) -> None:
        created = insufficient = replayed = 0
        errors: list[str] = []
        try:
            connection.ensure_connection()
            barrier.wait()
            for org, key in per_thread[index]:
                started = time.perf_counter()
                try:
                    movement = credit_debit(organization=org, amount=AMOUNT, key=key, description="bench")
                    created += movement.created
                    replayed += not movement.created
                except InsufficientCredits:
                    insufficient += 1
                except Exception as exc:  # counted and reported, never hidden
                    errors.append(repr(exc))
                latencies[index].append(time.perf_counter() - started)
        except threading.BrokenBarrierError:
            pass
        except Exception as exc:
            barrier.abort()
            errors.append(f"thread {index}: {exc!r}")
        finally:
            connection.close()
            with lock:
                outcome["created"] += created
                outcome["insufficient"] += insufficient
                outcome["replayed"] += replayed
                outcome["errors"] += errors

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    started, cpu, machine = time.perf_counter(), time.process_time(), machine_busy()
    for worker in workers:
        worker.join()
    outcome["seconds"] = time.perf_counter() - started
    outcome["client_cpu"] = (time.process_time() - cpu) / outcome["seconds"]  # cores used by this process
    outcome["machine_cpu"] = (machine_busy() - machine) / outcome["seconds"]  # cores busy on the machine
    outcome["latencies"] = [value for values in latencies for value in values]
    return outcome


def consistent(orgs: list, expected: dict | None) -> list[str]:
    """Problems with the balances: balance != ledger_sum, or != the expected figure (if given)."""
    from billing.selectors import ledger_sum

    problems = []
    for org in orgs:
        got, total = balance(org), ledger_sum(organization=org)
        if got != total or (expected is not None and got != expected[org.pk]):
            problems.append(f"{org.slug}: balance {got}, ledger_sum {total}, expected {(expected or {}).get(org.pk)}")
    return problems


def scenario(label: str, orgs: list, threads: int, debits: int, run: str) -> dict:
    from billing.ledger import credit_grant

    tag = label.replace(" ", "-")
    jobs = [(orgs[j % len(orgs)], f"bench-credits:{run}:{tag}:{j}") for j in range(debits)]
    expected = {}
    for org in orgs:
        count = sum(1 for target, _ in jobs if target is org)
        credit_grant(organization=org, amount=AMOUNT * count, key=f"bench-credits:{run}:{tag}:grant:{org.pk}")
        expected[org.pk] = balance(org) - AMOUNT * count
    result = debit_concurrently(jobs, threads)
    problems = consistent(orgs, expected)
    failed = debits - result["created"]
    result.update(label=label, threads=threads, orgs=len(orgs), debits=debits, problems=problems,
                  ok=not problems and not failed and not result["errors"])
    print(report_line(result), flush=True)
    for problem in problems + result["errors"][:5]:
        print(f"    {problem}")
    return result


def exhaustion(org, threads: int, attempts: int, covers: int, run: str) -> dict:
    from billing.ledger import credit_debit, credit_grant

    left = balance(org)
    if left > 0:
        credit_debit(organization=org, amount=left, key=f"bench-credits:{run}:exhaust:drain")
    credit_grant(organization=org, amount=AMOUNT * covers, key=f"bench-credits:{run}:exhaust:grant")
    jobs = [(org, f"bench-credits:{run}:exhaust:{j}") for j in range(attempts)]
    result = debit_concurrently(jobs, threads)
    final = balance(org)
    problems = consistent([org], {org.pk: Decimal("0")})
    result.update(label="exhaustion", threads=threads, orgs=1, debits=attempts, final=final, problems=problems,
                  ok=(result["created"] == covers and result["insufficient"] == attempts - covers
                      and not result["errors"] and not problems))
    print(f"  exhaustion: {threads} threads, {attempts} attempts on a balance covering {covers}: "
          f"{result['created']} succeeded, {result['insufficient']} refused (InsufficientCredits), "
          f"{len(result['errors'])} errors, final balance {final:.2f} in {result['seconds']:.2f} s "
          f"-> {'ok' if result['ok'] else 'MISMATCH'}", flush=True)
    for problem in problems + result["errors"][:5]:
        print(f"    {problem}")
    return result


PGBENCH_SCRIPT = """\\set org {org}
WITH account AS (SELECT credits FROM billing_billingaccount WHERE organization_id = :org FOR UPDATE),
entry AS (INSERT INTO billing_creditentry (organization_id, kind, amount, balance_after, idempotency_key, description,
    metadata, created_at)
  SELECT :org, 'adjustment', 0.01, account.credits + 0.01, replace('{key}', '|', ':') || gen_random_uuid(),
    'pgbench', '{{}}', now() FROM account WHERE account.credits + 0.01 >= 0
  ON CONFLICT (idempotency_key) DO NOTHING RETURNING balance_after),
moved AS (UPDATE billing_billingaccount SET credits = entry.balance_after, updated_at = now() FROM entry
  WHERE organization_id = :org)
SELECT balance_after FROM entry;
"""


def pgbench_baseline(pgbench: str, url: str, orgs: list, threads: int, seconds: int, run: str) -> list[dict]:
    """The ledger's statement without Django: pgbench, prepared, same four scenarios.

    Each transaction is `billing.ledger.MOVE_SQL` for +0.01 credits (an adjustment, so no grant
    is needed and balance = ledger_sum still holds).
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    env = {**os.environ, "PGPASSWORD": parts.password or os.environ.get("PGPASSWORD", "")}
    ids = sorted(org.pk for org in orgs)
    results = []
    for clients, span in ((1, ids[:1]), (1, ids), (threads, ids[:1]), (threads, ids)):
        if span != list(range(span[0], span[-1] + 1)):
            print("  pgbench skipped: the organizations' ids are not consecutive (pgbench draws from a range)")
            return results
        org = str(span[0]) if len(span) == 1 else f"random({span[0]}, {span[-1]})"
        label = f"{clients} client{'s' * (clients > 1)}, {len(span)} org{'s' * (len(span) > 1)}"
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            script.write(PGBENCH_SCRIPT.format(org=org, key=f"bench-credits|{run}|pgbench|"))  # no ":name" for pgbench
            script.flush()
            completed = subprocess.run(
                [pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
                 "-T", str(seconds), "-r", "-f", script.name, "-h", parts.hostname or "127.0.0.1",
                 "-p", str(parts.port or 5432), "-U", parts.username or "postgres", parts.path.lstrip("/")],
                env=env, capture_output=True, text=True)
        tps = re.search(r"tps = ([\d.]+)", completed.stdout)
        latency = re.search(r"latency average = ([\d.]+) ms", completed.stdout)
        failed = re.search(r"failed transactions: (\d+)", completed.stdout)
        if completed.returncode or not tps:
            print(f"  pgbench {label}: failed\n{completed.stderr[-1000:]}")
            continue
        result = {"label": label, "tps": float(tps[1]), "latency": float(latency[1]) if latency else float("nan"),
                  "failed": int(failed[1]) if failed else 0}
        results.append(result)
        print(f"  pgbench {label:<20} {result['tps']:7.0f} transactions/s, average latency {result['latency']:.1f} ms, "
              f"{result['failed']} failed", flush=True)
    problems = consistent(orgs, None)
    print(f"  every balance equals ledger_sum after pgbench: {'ok' if not problems else 'MISMATCH'}")
    for problem in problems:
        print(f"    {problem}")
    return results


def find_pgbench() -> str | None:
    found = shutil.which("pgbench") or sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def report_line(result: dict) -> str:
    values = result["latencies"]
    ms = {pct: percentile(values, pct) * 1000 for pct in (50, 95, 99)}
    return (f"  {result['label']:<26} {result['debits'] / result['seconds']:7.0f} debits/s "
            f"({result['debits']} in {result['seconds']:.2f} s), p50 {ms[50]:.1f} ms, p95 {ms[95]:.1f} ms, "
            f"p99 {ms[99]:.1f} ms, CPU {result['client_cpu']:.2f} cores client / {result['machine_cpu']:.2f} machine; "
            f"created {result['created']}, "
            f"failed {result['debits'] - result['created']}, errors {len(result['errors'])} "
            f"-> {'ok' if result['ok'] else 'MISMATCH'}")


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--debits", type=int, default=2000, help="debits per scenario")
    parser.add_argument("--threads", type=int, default=32, help="the high concurrency")
    parser.add_argument("--orgs", type=int, default=32, help="organizations of the many-organization scenarios")
    parser.add_argument("--exhaust-attempts", type=int, default=2000)
    parser.add_argument("--exhaust-covers", type=int, default=500, help="debits the exhaustion balance covers")
    parser.add_argument("--database", default="prumo_bench", help="bench database name (never the dev one)")
    parser.add_argument("--reset", action="store_true", help="empty the bench organizations' ledgers first")
    parser.add_argument("--pgbench-seconds", type=int, default=8,
                        help="seconds per pgbench baseline run (the ledger SQL without Django); 0 skips them")
    options = parser.parse_args()

    url = bench_database_url(options.database)
    setup_django(url)
    import django
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version'), current_setting('synchronous_commit')")
        server_version, synchronous_commit = cursor.fetchone()
    print(f"bench database {options.database} (PostgreSQL {server_version}, synchronous_commit={synchronous_commit})"
          f", Django {django.get_version()}, {os.cpu_count()} CPUs")
    ensure_migrated()
    orgs, exhaust_org = bench_organizations(options.orgs)
    if options.reset:
        ledger_reset(orgs + [exhaust_org])
    run = uuid.uuid4().hex[:10]

    section(f"debits, {options.debits} per scenario, {AMOUNT} credits each (run {run})")
    scenario("warm-up", orgs[:1], 1, min(100, options.debits), run)
    statements = queries_per_debit(orgs[0], run)
    print(f"  one debit sends {len(statements)} statements: {'; '.join(statements)}")
    results = [
        scenario("1 thread, 1 org", orgs[:1], 1, options.debits, run),
        scenario(f"1 thread, {len(orgs)} orgs", orgs, 1, options.debits, run),
        scenario(f"{options.threads} threads, 1 org", orgs[:1], options.threads, options.debits, run),
        scenario(f"{options.threads} threads, {len(orgs)} orgs", orgs, options.threads, options.debits, run),
    ]
    section("exhaustion")
    exhausted = exhaustion(exhaust_org, options.threads, options.exhaust_attempts, options.exhaust_covers, run)

    baseline = []
    pgbench = find_pgbench() if options.pgbench_seconds > 0 else None
    if pgbench:
        section(f"baseline: the ledger's statement through pgbench, {options.pgbench_seconds} s each")
        baseline = pgbench_baseline(pgbench, url, orgs, options.threads, options.pgbench_seconds, run)

    section("summary")
    print("| Scenario | Debits/s | p50 | p95 | p99 | CPU client / machine (cores) | Check |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        values = result["latencies"]
        print(f"| {result['label']} | {result['debits'] / result['seconds']:,.0f} | "
              + " | ".join(f"{percentile(values, pct) * 1000:.1f} ms" for pct in (50, 95, 99))
              + f" | {result['client_cpu']:.2f} / {result['machine_cpu']:.2f}"
              + f" | {'ok' if result['ok'] else 'MISMATCH'} |")
    print(f"| exhaustion, {exhausted['threads']} threads, 1 org | {exhausted['created']} of "
          f"{exhausted['debits']} succeeded, final balance {exhausted['final']:.2f} | | | | | "
          f"{'ok' if exhausted['ok'] else 'MISMATCH'} |")
    for result in baseline:
        print(f"| pgbench baseline, {result['label']} | {result['tps']:,.0f} | average {result['latency']:.1f} ms"
              f" | | | | {result['failed']} failed |")
    if not all(result["ok"] for result in results + [exhausted]):
        sys.exit(1)


if __name__ == "__main__":
    main()
