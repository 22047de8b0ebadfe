#!/usr/bin/env python
"""Checks: the cache-hit path's throughput, and a 1,000-CNPJ bulk job against fake registries.

    .venv/bin/python bench/checks.py [--hits 500] [--bulk 1000] [--scale 20] [--workers 8]

Runs against the bench database `prumo_bench` (created and migrated when missing) and Redis
database 12 (flushed first), with an organization on the Enterprise plan and credits to spare.

1. Cache hits. One CNPJ is looked up once (warming the shared cache); then `check_request` is
   called for it `--hits` times in this process, sequentially and from 4 threads. Each call is
   a whole check answered from the cache: the check row, the ledger debit, the usage event, a
   report with its risk signals, the target's update. Printed: checks per second, latency
   p50/p99.
2. Bulk. A CSV of `--bulk` distinct CNPJs, every one known to every fake registry (the samples'
   payloads with the CNPJ changed), goes through `batch_create`; a real Celery worker (its own
   process, thread pool) runs the checks. The fake registries (tests.fake_registries, threaded
   HTTP in this process) answer at once; the registries' free-tier rate limits are applied
   with their windows divided by `--scale` (cnpj.ws "3/60" becomes "3/3" at 20), so the job's
   pace is the rate limiter's, `--scale` times faster than in production. Printed: the ETA the
   batch page showed at the start, the wall time to done, lookups per second, requests per
   registry, and the same job at the real limits (the measured time × scale).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.credits import bench_database_url  # noqa: E402
from bench.gateway import spawn, stop_all  # noqa: E402
from bench.tenants import bench_owner, ensure_migrated, percentile, section, setup_django  # noqa: E402

SLUG = "bench-checks"
DATA = ROOT / "tests" / "data" / "checks"
REAL_LIMITS = {"cnpjws": "3/60", "brasilapi": "1/1,60/60", "minhareceita": "1/1,60/60", "receitaws": "3/60"}
LIMIT_ENV = {"cnpjws": "CNPJWS_RATE_LIMIT", "brasilapi": "BRASILAPI_RATE_LIMIT",
             "minhareceita": "MINHARECEITA_RATE_LIMIT", "receitaws": "RECEITAWS_RATE_LIMIT"}


def scaled(limit: str, scale: float) -> str:
    """A limit with its windows `scale` times shorter ("3/60" at 20 → "3/3")."""
    windows = []
    for window in limit.split(","):
        calls, seconds = window.split("/")
        windows.append(f"{calls}/{float(seconds) / scale:g}")
    return ",".join(windows)


def organization():
    from billing.ledger import credit_grant
    from billing.models import BillingAccount, Plan
    from tenants.audit.services import Actor
    from tenants.models import Organization
    from tenants.services import organization_create

    org = Organization.objects.filter(slug=SLUG).first() or organization_create(
        user=bench_owner(), name="Bench checks", slug=SLUG, actor=Actor.system("bench"))
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="enterprise"))
    if BillingAccount.objects.get(pk=org.pk).credits < Decimal("100000"):
        credit_grant(organization=org, amount=Decimal("1000000"), key=f"bench-checks-{time.time_ns()}")
    return org


def payloads_for(cnpj: str) -> dict[str, dict]:
    """Each registry's sample payload, about `cnpj`."""
    from checks.cnpj import format_cnpj

    cnpjws = json.loads((DATA / "cnpjws_05525406000101.json").read_text())
    cnpjws["cnpj_raiz"] = cnpj[:8]
    cnpjws["estabelecimento"]["cnpj"] = cnpj
    cnpjws["estabelecimento"]["cnpj_raiz"] = cnpj[:8]
    brasil = json.loads((DATA / "minhareceita_brasilapi_19131243000197.json").read_text())
    brasil["cnpj"] = cnpj
    receita = json.loads((DATA / "receitaws_27865757000102.json").read_text())
    receita["cnpj"] = format_cnpj(cnpj)
    return {"cnpjws": cnpjws, "brasilapi": brasil, "minhareceita": copy.deepcopy(brasil), "receitaws": receita}


def cache_hits(org, count: int, fake) -> None:
    from django_tenants.utils import schema_context

    from checks.cache import cached_lookup
    from checks.cnpj import generate
    from checks.services import check_request, target_add

    section(f"cache-hit path: check_request answered from the shared cache, in process ({count} checks)")
    cnpj = generate()
    for provider, payload in payloads_for(cnpj).items():
        fake.add(provider, cnpj, payload)
    with schema_context(org.schema_name):
        lookup = cached_lookup(cnpj)
        assert lookup.result.outcome == "found", lookup.result
        target = target_add(cnpj=cnpj, label="bench")

        def one() -> float:
            started = time.perf_counter()
            check = check_request(organization=org, target=target)
            assert check.cache_hit and check.status == "succeeded", check
            return (time.perf_counter() - started) * 1000

        for _ in range(20):
            one()  # warm up
        for threads in (1, 4):
            latencies, wall = timed(org, one, count, threads)
            print(f"{threads} thread(s): {len(latencies) / wall:.0f} checks/s; latency p50 "
                  f"{percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms", flush=True)


def timed(org, one, count: int, threads: int) -> tuple[list[float], float]:
    """`one()` called `count` times from `threads` threads, in the organization's schema."""
    from django.db import connection
    from django_tenants.utils import schema_context

    latencies: list[float] = []
    lock = threading.Lock()
    jobs = iter(range(count))

    def worker() -> None:
        with schema_context(org.schema_name):
            while True:
                with lock:
                    if next(jobs, None) is None:
                        break
                elapsed = one()
                with lock:
                    latencies.append(elapsed)
        connection.close()

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return latencies, time.perf_counter() - started


def bulk(org, count: int, scale: float, workers: int, url: str, redis_url: str) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import connection
    from django_tenants.utils import schema_context

    from checks.bulk import batch_create, batch_progress
    from checks.cnpj import generate
    from checks.models import Batch
    from tests.fake_registries import FakeRegistries

    limits = {provider: scaled(limit, scale) for provider, limit in REAL_LIMITS.items()}
    section(f"bulk: {count} CNPJs, a Celery worker ({workers} threads), limits / {scale:g}: {limits}")
    fake = FakeRegistries().start()
    cnpjs = []
    while len(cnpjs) < count:
        cnpj = generate()
        if cnpj not in cnpjs:
            cnpjs.append(cnpj)
            for provider, payload in payloads_for(cnpj).items():
                fake.add(provider, cnpj, payload)
    logs = Path(tempfile.mkdtemp(prefix="bench-checks-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": url, "REDIS_URL": redis_url,
           "DJANGO_SETTINGS_MODULE": "config.settings.dev", "LOG_LEVEL": "WARNING", **fake.settings(),
           **{LIMIT_ENV[provider]: limit for provider, limit in limits.items()}}
    spawn([sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=threads", f"--concurrency={workers}",
           "-Q", "default,checks", "--loglevel=WARNING", "-n", f"bench-checks-{os.getpid()}@%h", "--without-gossip",
           "--without-mingle"], env, logs / "worker.log")
    csv = "cnpj\n" + "\n".join(cnpjs) + "\n"
    try:
        with schema_context(org.schema_name):
            from django.conf import settings

            settings.CHECKS_RATE_LIMITS = limits  # the ETA this process shows reads them
            started = time.perf_counter()
            batch = batch_create(organization=org, uploaded_file=SimpleUploadedFile("bench.csv", csv.encode()),
                                 user=bench_owner())
            first_eta = None
            while True:
                progress = batch_progress(Batch.objects.get(pk=batch.pk))
                if first_eta is None and progress.eta_seconds is not None:
                    first_eta = (progress.eta_seconds, progress.eta_source)
                if progress.finished:
                    break
                if time.perf_counter() - started > 3600:
                    sys.exit(f"the batch did not finish within an hour: {progress}; logs in {logs}")
                time.sleep(0.5)
                connection.close()  # a fresh view of the worker's commits
            wall = time.perf_counter() - started
        counts = fake.counts()
        print(f"done in {wall:.1f} s: {progress.found} found, {progress.not_found} not found, {progress.failed} "
              f"failed, {progress.cached} from the cache; {count / wall:.1f} CNPJs/s", flush=True)
        print(f"requests per registry: {counts} (logs in {logs})")
        if first_eta:
            print(f"ETA shown at the start: {first_eta[0]} s ({first_eta[1]})")
        print(f"at the real free-tier limits (× {scale:g}): about {wall * scale / 60:.0f} min")
    finally:
        stop_all()
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="prumo_bench")
    parser.add_argument("--hits", type=int, default=500, help="checks answered from the cache, per run")
    parser.add_argument("--bulk", type=int, default=1000, help="CNPJs in the bulk job (0: skip it)")
    parser.add_argument("--scale", type=float, default=20, help="rate-limit windows divided by this")
    parser.add_argument("--workers", type=int, default=8, help="Celery worker threads")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *a: (stop_all(), sys.exit(1)))

    url = bench_database_url(options.database)
    redis_url = f"{os.environ.get('REDIS_URL', 'redis://127.0.0.1:6379/0').rsplit('/', 1)[0]}/12"
    os.environ["REDIS_URL"] = redis_url
    setup_django(url)
    import logging

    import redis

    for name in ("httpx", "checks", "tests"):
        logging.getLogger(name).setLevel(logging.WARNING)
    redis.Redis.from_url(redis_url).flushdb()
    ensure_migrated()
    org = organization()
    from tests.fake_registries import FakeRegistries

    with FakeRegistries() as fake:  # the cache-hit run needs one real lookup first
        from django.conf import settings

        for name, value in fake.settings().items():
            setattr(settings, name, value)
        settings.CHECKS_RATE_LIMITS = dict.fromkeys(REAL_LIMITS, "")
        cache_hits(org, options.hits, fake)
    if options.bulk:
        bulk(org, options.bulk, options.scale, options.workers, url, redis_url)


if __name__ == "__main__":
    main()
