#!/usr/bin/env python
"""The /v1 gateway's overhead: the same fake upstream called directly and through Prumo.

    .venv/bin/python bench/gateway.py [--requests 500] [--concurrent-requests 2000] [--streams 200]
                                      [--metrics-multiprocess] [--tracing [--trace-ratio 0.1]]

Runs against the bench database `prumo_bench` (see bench/credits.py; created and migrated
when missing) and Redis database 13 (flushed first). It starts, as subprocesses stopped on
exit: a fake OpenAI (tests.fake_llm.FakeOpenAI, the real wire format, a short answer) and the
production web command (gunicorn + one uvicorn worker, `config.settings.prod`) pointing at
it, with an organization on the Enterprise plan (limits far above the load) and a fresh key:
authentication, rate limits, the credit hold and settlement and the usage event are all on.

Printed: for non-streamed completions, latency p50/p95/p99 directly and through /v1 at
concurrency 1 and 32, the difference ("added"), requests per second, and the mean of the
server's own `x-prumo-overhead-ms`; for streams, time to the first content chunk, directly
and through /v1, at concurrency 1. The goals (issue 5): added p50 <= 3 ms and p99 <= 10 ms
at concurrency 1, added TTFT p50 <= 5 ms.

What the instrumentation costs (issue 15): `--metrics-multiprocess` runs the server with PROMETHEUS_MULTIPROC_DIR
(production's mode with several workers: every increment writes a memory-mapped file; without it, the default
here, the counters are one process's memory); `--tracing` with OTEL_EXPORTER_OTLP_ENDPOINT set, the spans
exported in batches to a local receiver that reads each export and answers 200 (no collector's work counted).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
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

import httpx  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from bench.credits import bench_database_url  # noqa: E402
from bench.tenants import bench_owner, ensure_migrated, percentile, section, setup_django  # noqa: E402

SLUG = "bench-gateway"
MODEL = "openai/gpt-4.1-mini"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
PROCESSES: list[subprocess.Popen] = []


def stop_all(*_args) -> None:
    for process in PROCESSES:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in PROCESSES:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def spawn(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    PROCESSES.append(process)
    return process


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    sys.exit(f"{url} did not answer within {timeout} s")


def organization_and_key() -> str:
    from billing.ledger import credit_grant
    from billing.models import BillingAccount, Plan
    from tenants.api_keys import api_key_create
    from tenants.audit.services import Actor
    from tenants.models import ApiKey, Organization
    from tenants.services import organization_create

    org = Organization.objects.filter(slug=SLUG).first() or organization_create(
        user=bench_owner(), name="Bench gateway", slug=SLUG, actor=Actor.system("bench"))
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="enterprise"))
    if BillingAccount.objects.get(pk=org.pk).credits < Decimal("100000"):
        credit_grant(organization=org, amount=Decimal("1000000"), key=f"bench-gateway-{secrets.token_hex(6)}")
    ApiKey.objects.filter(organization=org).delete()
    return api_key_create(organization=org, name="bench", scopes=["chat"], actor=Actor.system("bench")).raw


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its children (gunicorn and its worker: every
    thread, the tracing exporter's included). Unlike latency, barely moved by other work on the machine."""
    pids = [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    total = 0
    for each in pids:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (the stat file's 14th and 15th fields)
    return total / os.sysconf("SC_CLK_TCK")


def timed_calls(url: str, headers: dict, count: int, concurrency: int, *, stream: bool = False,
                server: int | None = None) -> dict:
    """`count` calls over `concurrency` threads (each with its own keep-alive client); with `server` (gunicorn's
    pid), the server's CPU per call too."""
    cpu_before = server_cpu(server) if server else None
    latencies: list[float] = []
    overheads: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    jobs = iter(range(count))
    body = {**BODY, "stream": True} if stream else BODY

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            while True:
                with lock:
                    if next(jobs, None) is None:
                        return
                started = time.perf_counter()
                if stream:
                    with client.stream("POST", url, json=body, headers=headers) as response:
                        first = None
                        for line in response.iter_lines():
                            if first is None and line.startswith("data: {"):
                                choices = json.loads(line[6:]).get("choices") or [{}]
                                if choices[0].get("delta", {}).get("content"):
                                    first = time.perf_counter() - started
                        status = response.status_code
                    elapsed = first if first is not None else float("nan")
                else:
                    response = client.post(url, json=body, headers=headers)
                    status, elapsed = response.status_code, time.perf_counter() - started
                with lock:
                    if status != 200:
                        errors.append(status)
                    else:
                        latencies.append(elapsed * 1000)
                        if "x-prumo-overhead-ms" in response.headers:
                            overheads.append(float(response.headers["x-prumo-overhead-ms"]))

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cpu = (server_cpu(server) - cpu_before) * 1000 / count if server else None
    return {"lat": latencies, "overhead": overheads, "errors": errors, "rps": len(latencies) / wall, "cpu": cpu}


def row(label: str, direct: dict, prumo: dict) -> None:
    cells = []
    for pct in (50, 95, 99):
        d, p = percentile(direct["lat"], pct), percentile(prumo["lat"], pct)
        cells.append(f"p{pct} {d:.2f} / {p:.2f} / +{p - d:.2f} ms")
    overhead = sum(prumo["overhead"]) / len(prumo["overhead"]) if prumo["overhead"] else float("nan")
    cpu = f" | server CPU {prumo['cpu']:.2f} ms a call" if prumo.get("cpu") is not None else ""
    print(f"{label}: " + "; ".join(cells) + f" | req/s {direct['rps']:.0f} / {prumo['rps']:.0f}{cpu}"
          f" | server overhead header mean {overhead:.2f} ms | errors {len(direct['errors'])} / "
          f"{len(prumo['errors'])} {sorted(set(prumo['errors']))}")


OTLP_RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        size = len(self.rfile.read(int(self.headers.get("content-length") or 0)))
        print("export", size, flush=True)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
"""


def otlp_receiver(env: dict, logs: Path) -> str:
    """A local OTLP/HTTP endpoint that takes every export and answers 200 (an empty ExportTraceServiceResponse)."""
    spawn([sys.executable, "-c", OTLP_RECEIVER], env, logs / "otlp.log")
    deadline = time.monotonic() + 20
    while not (logs / "otlp.log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    return (logs / "otlp.log").read_text().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="prumo_bench")
    parser.add_argument("--requests", type=int, default=500, help="calls at concurrency 1")
    parser.add_argument("--concurrent-requests", type=int, default=2000, help="calls at concurrency 32")
    parser.add_argument("--streams", type=int, default=200, help="streamed calls at concurrency 1")
    parser.add_argument("--metrics-multiprocess", action="store_true",
                        help="PROMETHEUS_MULTIPROC_DIR set (metrics in files, as with several workers)")
    parser.add_argument("--tracing", action="store_true", help="tracing on, exported to a local OTLP receiver")
    parser.add_argument("--trace-ratio", type=float, default=None,
                        help="with --tracing: the share of traces sampled (parentbased_traceidratio)")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *a: (stop_all(), sys.exit(1)))

    url = bench_database_url(options.database)
    setup_django(url)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    ensure_migrated()
    key = organization_and_key()
    redis_url = f"{os.environ.get('REDIS_URL', 'redis://127.0.0.1:6379/0').rsplit('/', 1)[0]}/13"
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    logs = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    web_port = free_port()
    base_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    spawn([sys.executable, "-c",
           "import time; from tests.fake_llm import FakeOpenAI, Answer;"
           "from http.server import ThreadingHTTPServer; f = FakeOpenAI(Answer(['Hello', ' there', '!'], 12, 3));"
           "f.start(); print(f.url, flush=True); time.sleep(10**9)"], base_env, logs / "fake.log")
    deadline = time.monotonic() + 20
    while not (logs / "fake.log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    fake_url = (logs / "fake.log").read_text().split()[0]
    env = {**base_env, "DJANGO_SETTINGS_MODULE": "config.settings.prod", "DATABASE_URL": url, "REDIS_URL": redis_url,
           "SECRET_KEY": secrets.token_urlsafe(50), "PROVIDER_KEY_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "MFA_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "ALLOWED_HOSTS": "127.0.0.1,localhost",
           "SECURE_SSL_REDIRECT": "0", "SECURE_HSTS_SECONDS": "0", "OPENAI_BASE_URL": fake_url,
           "OPENAI_API_KEY": "sk-bench", "WEB_CONCURRENCY": "1", "BIND": f"127.0.0.1:{web_port}",
           "API_UNAUTHENTICATED_PER_MINUTE": "100000", "LOG_LEVEL": "WARNING"}
    if options.metrics_multiprocess:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(logs / "metrics")
    if options.tracing:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_receiver(base_env, logs)
        if options.trace_ratio is not None:
            env.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG=str(options.trace_ratio))
    gunicorn = spawn([sys.executable, "-m", "gunicorn", "config.asgi:application", "-c", "config/gunicorn.py",
                      "--max-requests", "0", "--access-logfile", "/dev/null"], env, logs / "web.log")
    web = f"http://127.0.0.1:{web_port}"
    try:
        wait_http(f"{web}/healthz")
        direct_url, prumo_url = f"{fake_url}/chat/completions", f"{web}/v1/chat/completions"
        auth = {"Authorization": f"Bearer {key}"}
        upstream = {"Authorization": "Bearer sk-bench"}
        timed_calls(prumo_url, auth, 50, 4)  # warm up: imports, connections, caches
        timed_calls(direct_url, upstream, 50, 4)
        section(f"non-streamed completions (direct / through /v1 / added), logs in {logs}")
        row(f"concurrency 1, {options.requests} calls", timed_calls(direct_url, upstream, options.requests, 1),
            timed_calls(prumo_url, auth, options.requests, 1, server=gunicorn.pid))
        row(f"concurrency 32, {options.concurrent_requests} calls",
            timed_calls(direct_url, upstream, options.concurrent_requests, 32),
            timed_calls(prumo_url, auth, options.concurrent_requests, 32, server=gunicorn.pid))
        section("streams: time to the first content chunk (direct / through /v1 / added)")
        row(f"concurrency 1, {options.streams} streams",
            timed_calls(direct_url, upstream, options.streams, 1, stream=True),
            timed_calls(prumo_url, auth, options.streams, 1, stream=True, server=gunicorn.pid))
        if options.tracing:
            time.sleep(1)  # the last batch
            exports = [int(line.split()[1]) for line in (logs / "otlp.log").read_text().splitlines()
                       if line.startswith("export ")]
            print(f"tracing: {len(exports)} OTLP exports received, {sum(exports) / 1e6:.1f} MB")
    finally:
        stop_all()


if __name__ == "__main__":
    main()
