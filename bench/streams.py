#!/usr/bin/env python
"""Chat streaming benchmark: N concurrent answers through one web process, against a fake provider.

    .venv/bin/python bench/streams.py [--streams 100,500,1000] [--mode both] [--orgs 1]

Runs against the bench database of bench/tenants.py (`--database`, default `prumo_bench`,
on the server of DATABASE_URL; the dev database is never touched), creating it if missing
and bringing it up to date (`deploy_migrate`) first. Its organizations (`bench-streams`, or
`bench-streams-0000` … with `--orgs K`; owner `bench-owner@example.com`) are created once
through `organization_create` and put on the Business plan (its answers at once per organization and
messages a minute per member apply: spread N over enough `--orgs`); each stream is asked by another
member of its organization (`bench-member-NNNN@<slug>.example.com`, created once, signed in with a
session of their own); each round grants the credits its answers reserve (`billing.ledger.credit_grant`)
and starts from fresh threads (`chat.services.thread_create`, named so that no title task runs).
Streams go to the organizations round robin.

The script starts, as subprocesses of its own (process groups stopped on exit, Ctrl-C included):
- the fake provider (`tests.fake_llm.FakeOpenAI`, the real OpenAI wire format) in its own
  process, answering every request with `--pieces` text chunks `--chunk-delay` s apart;
- per round, a fresh web process: `gunicorn config.asgi:application -c config/gunicorn.py`
  (one uvicorn worker, `WEB_CONCURRENCY=1`, the production defaults otherwise: recycled after
  ~1,000 requests, draining) and, for the full path, a fresh generation worker: `celery -A config
  worker -Q generation --pool threads --concurrency 64` (the image's GENERATION_CONCURRENCY;
  `--generation-concurrency` changes it); both with
  `DJANGO_SETTINGS_MODULE=config.settings.prod`, the bench database, Redis database
  `--redis-db` (flushed before each round; no other is touched) and `OPENAI_BASE_URL`
  pointing at the fake.

`--mode full` (the whole path), for each N:
1. baseline: N concurrent streamed completions straight from the fake, with the same client
   and concurrency: time from the request to the first content chunk;
2. through Prumo: N clients (one member each) POST a question to N threads at once
   (`/o/<slug>/chat/t/<id>/send/`, as htmx does, with the send grant the thread page's composer
   carries: chat.send_direct serves it; `--post-concurrency P` lets only P POSTs be
   in flight, the others wait, and that wait counts), then read the answer's SSE stream
   (`/o/<slug>/chat/m/<id>/events/`, resuming with `Last-Event-ID` when the server ends a
   connection, as EventSource does). A send refused with 503/429 is sent again after its
   `Retry-After`, as the page does (refusals are reported; a question served after a retry is
   not an error). TTFT: from the moment the client asks to the first
   `delta`. Each delta's delay from its Redis append (the entry id is Redis's clock, the
   same machine's) to the client is also measured.
`--mode fanout` (the web process alone), for each N: N answers marked `streaming` in the
database, N SSE clients connected, then a writer process appends to their N Redis streams
what a generation writes (`start`, one delta per `--chunk-delay`, `end`); measures the time
to connect, the delay of each event from Redis to the client, and the web worker's RSS/CPU.
`--mode both` (default) runs the full path, then the fan-out.
Scale-out: `--web-processes K` (WEB_CONCURRENCY), `--generators M` (generation worker processes) and
`--pgbouncer` (the servers reach PostgreSQL through Debian's pgbouncer running the compose file's
docker/pgbouncer/pgbouncer.ini, session pooling).

The client (this process, asyncio) is a minimal HTTP/1.1 client on asyncio streams, one
connection per stream (see `Connection`): it shares the two cores with what it measures.

Reported: TTFT p50/p95/p99 of the fake alone and through Prumo and the difference, its POST
and generation parts, total time, errors (non-200, streams without `end`, `end` not
`complete`, text that is not the fake's answer), peak RSS / threads / CPU of the web worker,
the generation worker and the fake, peak PostgreSQL connections and Redis clients, sends refused
(503/429) and served after their retry, answers left pending/streaming, tasks run in the wrong
schema, CPU per answer (web and generation workers over the measured window, divided by N), and the
exceptions in the servers' logs (kept in a temporary folder, printed at the start).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import hashlib
import html
import json
import os
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on sys.path and bench/tenants.py would shadow the
# `tenants` app: put the project root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.credits import bench_database_url, machine_busy  # noqa: E402
from bench.tenants import (  # noqa: E402
    bench_owner,
    ensure_migrated,
    percentile,
    section,
    setup_django,
)

SLUG = "bench-streams"
MODEL = "openai/gpt-4.1-mini"
MODEL_NAME = "GPT-4.1 mini"
QUESTION = "Stream me an answer, please."
CREDITS_PER_ANSWER = Decimal("1")  # the answer reserves ~0.66 (its worst case) and settles far less
MAX_RECONNECTS = 10
MAX_RETRIES = 20  # refused sends sent again (after Retry-After) before the client gives up
PLAN = "business"  # the bench organizations' plan: its answers at once and messages a minute per member
STREAM_URL = re.compile(r'data-stream-url="([^"]+)"')
MiB = 1024 * 1024


# ---------------------------------------------------------------- subprocesses


class Processes:
    """The subprocesses this script started; each in its own session, stopped by process group."""

    def __init__(self) -> None:
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict, log: Path, **kwargs) -> subprocess.Popen:
        with log.open("ab") as handle:
            process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=kwargs.pop("stdout", handle), stderr=handle,
                                       start_new_session=True, **kwargs)
        self.running[name] = process
        return process

    def stop(self, name: str, timeout: float = 30) -> None:
        process = self.running.pop(name, None)
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)  # the group of the process we started (gunicorn's worker too)
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name, timeout=10)


PROCESSES = Processes()


def _terminate(signum, frame) -> None:
    """Ctrl-C, SIGTERM, SIGHUP: stop the servers first (the clients then fail at once), then unwind."""
    PROCESSES.stop_all()
    raise SystemExit(128 + signum)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65_536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def answer_pieces(count: int) -> list[str]:
    """The fake's answer: words, punctuation and some non-ASCII text (the stream must keep it intact)."""
    words = ["Olá", " mundo", ",", " streaming", " test", " —", " ação", " ✓", " 🚀", " token"]
    return [f"{words[n % len(words)]}{n}" if n % 3 == 0 else words[n % len(words)] for n in range(count)]


def serve_fake(pieces: int, delay: float) -> None:
    """`--serve-fake`: run the fake provider in this process until stdin closes (or a signal)."""
    from tests.fake_llm import Answer, FakeOpenAI

    fake = FakeOpenAI(Answer(answer_pieces(pieces), input_tokens=20, output_tokens=pieces), chunk_delay=delay)
    fake.start()
    print(fake.url, flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    fake.stop()


def serve_writer() -> None:
    """`--serve-writer`: append what N generations write to N Redis streams, one tick per chunk delay.

    Reads its job (a JSON line: redis_url, keys, pieces, delay) from stdin, answers "ready",
    starts at the next line, and prints how late its ticks were.
    """
    import redis

    job = json.loads(sys.stdin.readline())
    client = redis.Redis.from_url(job["redis_url"])
    client.ping()
    print("ready", flush=True)
    sys.stdin.readline()
    pieces, keys, delay = job["pieces"], job["keys"], job["delay"]
    started, lags, spent = time.perf_counter(), [], []
    for tick in range(len(pieces) + 1):
        target = started + tick * delay
        time.sleep(max(0.0, target - time.perf_counter()))
        lags.append(time.perf_counter() - target)
        pipe = client.pipeline(transaction=False)
        for key in keys:
            if tick == 0:
                pipe.xadd(key, {"t": "start", "model": MODEL, "name": MODEL_NAME})
            if tick < len(pieces):
                pipe.xadd(key, {"t": "delta", "d": pieces[tick]}, maxlen=20_000, approximate=True)
            else:
                pipe.xadd(key, {"t": "end", "status": "complete"})
                pipe.expire(key, 3600)
        pipe.execute()
        spent.append(time.perf_counter() - lags[-1] - target)
    print(json.dumps({"seconds": time.perf_counter() - started, "lag_max": max(lags),
                      "tick_median": statistics.median(spent), "tick_max": max(spent)}), flush=True)


def start_fake(pieces: int, delay: float, logs: Path) -> tuple[subprocess.Popen, str]:
    process = PROCESSES.start("fake", [sys.executable, __file__, "--serve-fake", "--pieces", str(pieces),
                                       "--chunk-delay", str(delay)],
                              {**os.environ, "PYTHONUNBUFFERED": "1"}, logs / "fake.log",
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = process.stdout.readline().strip()
    if not url.startswith("http"):
        sys.exit(f"the fake provider did not start (see {logs / 'fake.log'})")
    return process, url


def server_env(*, url: str, redis_url: str, secret: str, fake_url: str, bind: str, settings: str,
               web_processes: int = 1) -> dict:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CELERY_", "DJANGO_", "GUNICORN_")) and key not in ("PORT", "BIND")}
    env.update({
        "DATABASE_URL": url, "REDIS_URL": redis_url, "DJANGO_SETTINGS_MODULE": settings, "SECRET_KEY": secret,
        # Production settings insist on them; the bench stores no provider keys or TOTP secrets: any key will do.
        "PROVIDER_KEY_ENCRYPTION_KEYS": base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()).decode(),
        "MFA_ENCRYPTION_KEYS": base64.urlsafe_b64encode(hashlib.sha256(b"mfa:" + secret.encode()).digest()).decode(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost", "SECURE_SSL_REDIRECT": "0", "SECURE_HSTS_SECONDS": "0",
        "OPENAI_BASE_URL": f"{fake_url}/v1", "OPENAI_API_KEY": "sk-bench-streams",
        "WEB_CONCURRENCY": str(web_processes),
        "BIND": bind, "PYTHONUNBUFFERED": "1",
    })
    return env


def wait_for(check, what: str, timeout: float, log: Path) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if check():
            return time.perf_counter() - started
        time.sleep(0.2)
    sys.exit(f"{what} did not start within {timeout:.0f} s (see {log})")


def start_web(env: dict, port: int, log: Path) -> None:
    PROCESSES.start("web", [sys.executable, "-m", "gunicorn", "config.asgi:application", "-c", "config/gunicorn.py"],
                    env, log)

    def ready() -> bool:
        if PROCESSES.running["web"].poll() is not None:
            sys.exit(f"the web process exited (see {log})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    seconds = wait_for(ready, "the web process", 60, log)
    print(f"web process (gunicorn, {env['WEB_CONCURRENCY']} uvicorn worker(s)) on 127.0.0.1:{port} ready in "
          f"{seconds:.1f} s", flush=True)


def start_worker(env: dict, concurrency: int, log: Path, label: str, name: str = "worker") -> None:
    PROCESSES.start(name, [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "generation",
                           "--pool", "threads", "--concurrency", str(concurrency), "--loglevel", "INFO",
                           "-n", f"bench-streams-{label}-{name}@%h"], env, log)

    def ready() -> bool:
        if PROCESSES.running[name].poll() is not None:
            sys.exit(f"the generation worker exited (see {log})")
        return " ready." in log.read_text(errors="replace")

    seconds = wait_for(ready, "the generation worker", 60, log)
    print(f"generation worker {name} (threads, concurrency {concurrency}) ready in {seconds:.1f} s", flush=True)


def log_errors(path: Path) -> tuple[int, Counter]:
    """Error lines of a server log and their most frequent final exceptions."""
    errors, kinds = 0, Counter()
    for line in (path.read_text(errors="replace") if path.exists() else "").splitlines():
        if line.startswith("{"):  # Django's JSON log lines (prod settings)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("level") in ("ERROR", "CRITICAL"):
                errors += 1
                lines = (record.get("exc_info") or record.get("message", "")).splitlines()
                raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line)]
                kinds[(raised or lines or ["?"])[-1][:150]] += 1
        elif "ERROR/" in line or "] [ERROR]" in line:  # Celery's and gunicorn's own lines
            errors += 1
            found = re.search(r"raised(?: unexpected)?: (\w+)\(['\"](.{0,120}?)(?:\\n|['\"]\)|$)", line)
            kinds[f"{found[1]}: {found[2]}" if found else line.split("]", 1)[-1].strip()[:150]] += 1
    return errors, kinds


# ---------------------------------------------------------------- sampling


class Sampler(threading.Thread):
    """Every `interval` s: RSS and threads of the processes, PostgreSQL connections, Redis clients.

    CPU (of each process, of this client process, of the whole machine) is counted from `mark()`
    to `finish()`, and divided by that same wall time.
    """

    def __init__(self, pids: dict[str, int], database: str, url: str, redis_url: str, interval: float = 0.1):
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.database, self.url, self.redis_url, self.interval = database, url, redis_url, interval
        self.peak_rss: Counter = Counter()
        self.peak_threads: Counter = Counter()
        self.first_rss: dict[str, int] = {}
        self.pg_peak = self.pg_total_peak = self.redis_peak = 0
        self.peak_cores: Counter = Counter()  # the busiest second of each process
        self.stopping = threading.Event()
        self.mark()

    def mark(self) -> None:
        self.marked, self.cpu_start = time.perf_counter(), self.cpu_times()
        self.cpu_last = dict(self.cpu_start)  # pid -> (name, CPU seconds), kept for processes that exit
        self.client_start, self.machine_start = time.process_time(), machine_busy()

    def all_processes(self) -> dict:
        found = dict(self.processes)
        web = found.get("web master")
        if web is not None:
            try:
                for n, child in enumerate(web.children()):
                    found["web worker" if n == 0 else f"web worker {n + 1}"] = child
            except self.psutil.Error:
                pass
        return found

    def cpu_times(self) -> dict[int, tuple[str, float]]:
        """pid -> (name, CPU seconds) of the processes alive now. By pid: a web worker recycled by max_requests
        comes back under the same name as another process."""
        times = {}
        for name, process in self.all_processes().items():
            try:
                cpu = process.cpu_times()
                times[process.pid] = (name, cpu.user + cpu.system)
            except self.psutil.Error:
                pass
        return times

    @staticmethod
    def by_name(start: dict, end: dict) -> dict[str, float]:
        """CPU seconds per name between two `cpu_times()`: a process born in between counts from zero."""
        used: Counter = Counter()
        for pid, (name, cpu) in end.items():
            used[name.split(" (")[0]] += cpu - start.get(pid, (name, 0.0))[1]
        return dict(used)

    def run(self) -> None:
        import psycopg
        import redis

        pg = psycopg.connect(self.url, autocommit=True)
        client = redis.Redis.from_url(self.redis_url)
        second, second_cpu = time.perf_counter(), self.cpu_times()
        try:
            while not self.stopping.is_set():
                if time.perf_counter() - second >= 1:
                    now, cpu = time.perf_counter(), self.cpu_times()
                    self.cpu_last.update(cpu)
                    for name, used in self.by_name(second_cpu, cpu).items():
                        self.peak_cores[name] = max(self.peak_cores[name], used / (now - second))
                    second, second_cpu = now, cpu
                for name, process in self.all_processes().items():
                    try:
                        rss, threads = process.memory_info().rss, process.num_threads()
                    except self.psutil.Error:
                        continue
                    self.first_rss.setdefault(name, rss)
                    self.peak_rss[name] = max(self.peak_rss[name], rss)
                    self.peak_threads[name] = max(self.peak_threads[name], threads)
                mine, total = pg.execute("SELECT count(*) FILTER (WHERE datname = %s), count(*) "
                                         "FROM pg_stat_activity WHERE backend_type = 'client backend'",
                                         [self.database]).fetchone()
                self.pg_peak, self.pg_total_peak = max(self.pg_peak, mine), max(self.pg_total_peak, total)
                self.redis_peak = max(self.redis_peak, client.info("clients")["connected_clients"])
                self.stopping.wait(self.interval)
        finally:
            pg.close()
            client.close()

    def finish(self) -> dict:
        """Stop sampling (before the servers stop); the figures."""
        wall = time.perf_counter() - self.marked
        end = {**self.cpu_last, **self.cpu_times()}  # with the last figures of processes that exited
        cores = {name: used / wall for name, used in self.by_name(self.cpu_start, end).items()}
        cores["bench client"] = (time.process_time() - self.client_start) / wall
        machine = (machine_busy() - self.machine_start) / wall
        self.stopping.set()
        self.join(5)
        return {"rss": dict(self.peak_rss), "rss_idle": dict(self.first_rss), "threads": dict(self.peak_threads),
                "cores": cores, "peak_cores": dict(self.peak_cores), "machine": machine, "cpu_window": wall,
                "pg": self.pg_peak, "pg_total": self.pg_total_peak, "redis": self.redis_peak,
                "web_workers_seen": sum(1 for name, _cpu in end.values() if name.startswith("web worker"))}


# ---------------------------------------------------------------- clients


class Connection:
    """A minimal HTTP/1.1 client on asyncio streams: one keep-alive connection, one request at a time.

    The load generator shares two cores with everything it measures, so it must be cheap per
    event: httpx (h11 and httpcore in pure Python) spent about a core on 500 streams here.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict]:
        """Send a request; return the status and the (lower-case) headers. Read the body next."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                *(f"{name}: {value}" for name, value in headers.items())]
        if body or method == "POST":
            head.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            self.close()
            raise ConnectionError("connection closed before the response")
        response_headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            response_headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), response_headers

    async def chunks(self, headers: dict) -> AsyncIterator[bytes]:
        """The response body as it arrives (chunked, sized or until the connection closes)."""
        if "content-length" in headers:
            yield await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    self.close()
                    raise ConnectionError("connection closed in the middle of a chunked body")
                size = int(size_line.split(b";")[0].strip(), 16)
                if not size:
                    while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = await self.reader.readexactly(size + 2)
                yield data[:-2]
        else:
            while data := await self.reader.read(65_536):
                yield data
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()

    async def body(self, headers: dict) -> bytes:
        return b"".join([chunk async for chunk in self.chunks(headers)])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def split_url(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    return parts.hostname, parts.port, parts.path + (f"?{parts.query}" if parts.query else "")


def sse_blocks(buffer: bytearray, chunk: bytes) -> list[bytes]:
    """Complete SSE blocks (separated by a blank line) from the bytes received so far."""
    buffer += chunk.replace(b"\r\n", b"\n")
    blocks = []
    while True:
        end = buffer.find(b"\n\n")
        if end < 0:
            return blocks
        blocks.append(bytes(buffer[:end]))
        del buffer[:end + 2]


def parse_block(block: bytes) -> tuple[str, str, str, bool]:
    """(event, data, id, comment only) of one SSE block."""
    event, data, entry_id, comment = "message", [], "", True
    for line in block.decode().split("\n"):
        if not line or line.startswith(":"):
            continue
        comment = False
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            entry_id = value
    return event, "\n".join(data), entry_id, comment


def id_millis(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


async def read_answer(connection: Connection, path: str, cookie: str, result: dict, started: float, expected: str,
                      on_open=None) -> None:
    """Read an answer's SSE until `end` into `result`, resuming with Last-Event-ID as EventSource does."""
    headers = {"Cookie": cookie, "Accept": "text/event-stream"}
    last_id, text = "", []
    result.update(reconnects=0, deltas=0, delays=[])
    while "end" not in result:
        if last_id:
            headers["Last-Event-ID"] = last_id
        status, response_headers = await connection.request("GET", path, headers)
        if status != 200:
            result["error"] = f"SSE {status}"
            return
        buffer = bytearray()
        async for chunk in connection.chunks(response_headers):
            result.setdefault("sse_open", time.perf_counter() - started)
            if on_open is not None:
                on_open()
                on_open = None
            for block in sse_blocks(buffer, chunk):
                event, data, entry_id, comment = parse_block(block)
                if comment:
                    continue
                last_id = entry_id or last_id
                if event == "delta":
                    delay = time.time() * 1000 - id_millis(entry_id)  # Redis's clock is this machine's
                    if "first" not in result:
                        result["first"], result["first_delay"] = time.perf_counter() - started, delay
                    result["delays"].append(delay)
                    result["deltas"] += 1
                    text.append(json.loads(data)["text"])
                elif event == "start":
                    result.setdefault("start", time.perf_counter() - started)
                elif event == "end":
                    result["end"] = time.perf_counter() - started
                    result["status"] = json.loads(data).get("status", "")
        if "end" not in result:
            if result["reconnects"] >= MAX_RECONNECTS:
                result["error"] = "stream ended without `end`"
                return
            result["reconnects"] += 1  # the server closed the stream early (CHAT_SSE_MAX_SECONDS): resume
    if result["status"] != "complete":
        result["error"] = f"end status {result['status']!r}"
    elif not result["deltas"] and "start" not in result:
        # The answer was final before the stream opened and Redis no longer had its stream (the view
        # replays it while Redis keeps it): `end` alone, the page shows the answer from the database.
        result["error"] = "answer already final when its stream opened (`end` alone)"
    elif "".join(text) != expected:
        result["error"] = "text mismatch"


async def run_clients(clients: list, results: list[dict], timeout: float, start) -> float:
    """Run the client coroutines (each fills its dict) from `start()`; seconds until the last one is done."""
    gate = asyncio.Event()

    async def guarded(client, result: dict) -> None:
        await gate.wait()
        try:
            await asyncio.wait_for(client, timeout)
        except TimeoutError:
            result["error"] = f"client timeout ({timeout:.0f} s)"
        except Exception as error:  # counted and reported
            result["error"] = f"{type(error).__name__}: {error}"[:200]

    tasks = [asyncio.create_task(guarded(client, result)) for client, result in zip(clients, results, strict=True)]
    await asyncio.sleep(0.2)  # every task waits at the gate
    started = time.perf_counter()
    start()
    gate.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


async def fake_direct(url: str, n: int, expected: str, timeout: float) -> dict:
    """N concurrent streamed completions from the fake; time to the first content chunk."""
    host, port, path = split_url(f"{url}/v1/chat/completions")
    body = json.dumps({"model": "gpt-4.1-mini", "stream": True, "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4096}).encode()
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}

    async def one(result: dict) -> None:
        connection = Connection(host, port)
        started = time.perf_counter()
        try:
            status, response_headers = await connection.request("POST", path, headers, body)
            if status != 200:
                result["error"] = f"HTTP {status}"
                return
            buffer, text, done = bytearray(), [], False
            async for chunk in connection.chunks(response_headers):
                for block in sse_blocks(buffer, chunk):
                    _event, data, _id, comment = parse_block(block)
                    if comment:
                        continue
                    if data == "[DONE]":
                        done = True
                        continue
                    for choice in json.loads(data).get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            result.setdefault("first", time.perf_counter() - started)
                            text.append(content)
            result["end"] = time.perf_counter() - started
            if not done:
                result["error"] = "no [DONE]"
            elif "".join(text) != expected:
                result["error"] = "text mismatch"
        finally:
            connection.close()

    results: list[dict] = [{} for _ in range(n)]
    seconds = await run_clients([one(result) for result in results], results, timeout, lambda: None)
    return {"results": results, "seconds": seconds}


async def prumo_streams(base: str, jobs: list[dict], expected: str, timeout: float, post_concurrency: int,
                        start=lambda: None) -> dict:
    """Each job: POST the question (as htmx does), then read the answer's SSE until `end`."""
    host, port, _path = split_url(base)
    posting = asyncio.Semaphore(post_concurrency or len(jobs))

    async def one(job: dict, result: dict) -> None:
        cookie = f"sessionid={job['session']}; csrftoken={job['csrf']}"
        headers = {"Cookie": cookie, "X-CSRFToken": job["csrf"], "HX-Request": "true",
                   "Content-Type": "application/x-www-form-urlencoded"}
        # One token per question, kept across its retries, as the composer does.
        form = urlencode({"content": QUESTION, "model": MODEL, "send_token": secrets.token_hex(16),
                          "send_grant": job["grant"]}).encode()
        connection = Connection(host, port)
        started = time.perf_counter()
        try:
            async with posting:
                result["post_wait"] = time.perf_counter() - started
                while True:  # refused (503/429 with Retry-After): wait and send again, as the page does
                    status, response_headers = await connection.request("POST", job["send_url"], headers, form)
                    page = (await connection.body(response_headers)).decode()
                    if status not in (429, 503) or result.get("refused", 0) >= MAX_RETRIES:
                        break
                    result["refused"] = result.get("refused", 0) + 1
                    result.setdefault("refusals", Counter())[status] += 1
                    connection.close()
                    await asyncio.sleep(float(response_headers.get("retry-after", "1")))
                    connection = Connection(host, port)
            result["post"] = time.perf_counter() - started
            if status != 200:
                result["error"] = f"POST {status}"
                return
            found = STREAM_URL.search(page)
            if not found and "msg-assistant status-complete" in page and expected in html.unescape(page):
                # Strictly an error (nothing streamed), though the page shows the whole answer: it ended before
                # the send's response was rendered.
                result["error"] = "POST 200 with the answer already complete (shown whole, not streamed)"
                return
            if not found:  # the composer's error, in its words
                said = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)).strip()[:100]
                result["error"] = f"POST 200 without a stream URL: {said}"
                return
            await read_answer(connection, found[1], cookie, result, started, expected)
        finally:
            connection.close()

    results: list[dict] = [{} for _ in jobs]
    seconds = await run_clients([one(job, result) for job, result in zip(jobs, results, strict=True)], results,
                                timeout, start)
    return {"results": results, "seconds": seconds}


async def fanout_streams(base: str, jobs: list[dict], expected: str, timeout: float, writer,
                         mark=lambda: None) -> dict:
    """Connect every SSE client, then start the writer; read every answer until `end`."""
    host, port, _path = split_url(base)
    everyone, opened, began = asyncio.Event(), 0, {}

    def on_open() -> None:
        nonlocal opened
        opened += 1
        if opened == len(jobs):
            everyone.set()

    async def one(job: dict, result: dict) -> None:
        connection = Connection(host, port)
        try:
            await read_answer(connection, job["events_url"], f"sessionid={job['session']}", result,
                              time.perf_counter(), expected, on_open=on_open)
        finally:
            connection.close()

    async def writing() -> None:
        try:
            await asyncio.wait_for(everyone.wait(), timeout / 2)
        except TimeoutError:
            pass
        began["connected"] = time.perf_counter() - began["start"]
        began["writing"] = time.perf_counter()
        mark()
        writer.stdin.write("go\n")
        writer.stdin.flush()

    results: list[dict] = [{} for _ in jobs]
    go = asyncio.ensure_future(writing())
    await run_clients([one(job, result) for job, result in zip(jobs, results, strict=True)], results, timeout,
                      lambda: began.setdefault("start", time.perf_counter()))
    await go
    return {"results": results, "connected": began["connected"], "opened": opened,
            "seconds": time.perf_counter() - began["writing"]}


# ---------------------------------------------------------------- setup


def bench_organizations(count: int) -> list:
    from tenants.audit.services import Actor
    from tenants.models import Organization
    from tenants.services import organization_create

    slugs = [SLUG] if count == 1 else [f"{SLUG}-{n:04d}" for n in range(count)]
    existing = {org.slug: org for org in Organization.objects.filter(slug__in=slugs)}
    missing = [slug for slug in slugs if slug not in existing]
    if missing:
        print(f"creating {len(missing)} bench organizations", flush=True)
        owner, actor = bench_owner(), Actor.system("bench")
        for slug in missing:
            existing[slug] = organization_create(user=owner, name=f"Bench {slug}", slug=slug, actor=actor)
    # A paid plan's fair-sharing limits (answers at once per organization, messages a minute per member), the
    # same for every round: put the streams on enough organizations (--orgs) for N / orgs to fit its cap.
    from billing.models import BillingAccount, Plan

    BillingAccount.objects.filter(organization__slug__in=slugs).update(plan=Plan.objects.get(code=PLAN))
    return [existing[slug] for slug in slugs]


def members(org, count: int) -> list:
    """`count` members of `org` (created once): each stream is a different person, as in a real team."""
    from accounts.models import User
    from tenants.models import Membership, Role

    people = []
    for n in range(count):
        email = f"bench-member-{n:04d}@{org.slug}.example.com"
        user, created = User.objects.get_or_create(email=email, defaults={"name": f"Bench member {n}"})
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        Membership.objects.get_or_create(user=user, organization=org, defaults={"role": Role.MEMBER})
        people.append(user)
    return people


def session_of(user) -> tuple[str, str]:
    """A signed-in session of `user` (session key, CSRF secret), as a login would leave it."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session.session_key, secrets.token_hex(16)


def prepare_jobs(orgs: list, count: int, run: str, *, answers: str | None = None) -> list[dict]:
    """`count` fresh named threads (no title task) over `orgs`, each of another member (signed in), credits
    for their answers.

    With `answers` (a Message status), each thread also gets an assistant message in that status
    (the fan-out mode streams those without a generation).
    """
    from django.urls import reverse
    from django_tenants.utils import schema_context

    from billing.ledger import credit_grant
    from chat.models import Message, Thread
    from chat.send_direct import send_grant
    from chat.services import thread_create, thread_rename

    jobs: list[dict] = []
    for index, org in enumerate(orgs):
        share = len(range(index, count, len(orgs)))
        if not share:
            continue
        if answers is None:
            credit_grant(organization=org, amount=CREDITS_PER_ANSWER * share, key=f"bench-streams:{run}:{count}:"
                         f"{len(jobs)}:grant", description="bench/streams.py")
        people = members(org, share)
        with schema_context(org.schema_name):
            Thread.objects.all().delete()  # the previous rounds' threads and answers (bench organizations only)
            for n, person in enumerate(people):
                thread = thread_rename(thread=thread_create(user=person, model_id=MODEL), title=f"bench stream {n}")
                session, csrf = session_of(person)
                # The thread page's composer carries a send grant for its session (chat.send_direct).
                grant = send_grant(user_id=person.pk, organization=org, session_key=session, language="en")
                job = {"org": org, "thread": thread.pk, "session": session, "csrf": csrf, "grant": grant,
                       "send_url": reverse("chat_send", args=[org.slug, thread.pk])}
                if answers is not None:
                    answer = Message.objects.create(thread=thread, role=Message.Role.ASSISTANT, status=answers,
                                                    model_id=MODEL)
                    job.update(key=answer.stream_key, events_url=reverse("chat_stream", args=[org.slug, answer.pk]))
                jobs.append(job)
    # Round robin over the organizations, as the streams were meant to be spread.
    by_org = [[job for job in jobs if job["org"] is org] for org in orgs]
    return [group[n] for n in range(max(map(len, by_org))) for group in by_org if n < len(group)]


def answer_statuses(jobs: list[dict]) -> Counter:
    from django_tenants.utils import schema_context

    from chat.models import Message

    statuses: Counter = Counter()
    for org in {job["org"].pk: job["org"] for job in jobs}.values():
        with schema_context(org.schema_name):
            rows = Message.objects.filter(thread_id__in=[job["thread"] for job in jobs if job["org"] is org],
                                          role=Message.Role.ASSISTANT)
            statuses.update(rows.values_list("status", flat=True))
    return statuses


# ---------------------------------------------------------------- rounds


def ms(values: list[float], pct: float) -> float:
    return percentile(values, pct) * 1000 if values else float("nan")


def pcts(values: list[float]) -> str:
    return " / ".join(f"{ms(values, pct):.0f}" for pct in (50, 95, 99)) + " ms" if values else "n/a"


def errors_of(results: list[dict]) -> Counter:
    return Counter(result["error"] for result in results if "error" in result)


def code_version() -> str:
    """The commit measured, and the files on the measured path that differ from it (others edit them too)."""
    def git(*args: str) -> str:
        completed = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return completed.stdout.strip() if completed.returncode == 0 else "?"

    changed = git("diff", "--name-only", "HEAD", "--", "chat", "billing", "tenants", "accounts", "config").split()
    return f"{git('rev-parse', '--short', 'HEAD')}" + (f" + uncommitted changes in {', '.join(changed)}"
                                                      if changed else "")


def round_env(options, ctx: dict) -> tuple[dict, int]:
    import redis

    redis.Redis.from_url(ctx["redis_url"]).flushdb()  # our database only (--redis-db)
    port = free_port()
    env = server_env(url=ctx["server_url"], redis_url=ctx["redis_url"], secret=ctx["secret"],
                     fake_url=ctx["fake_url"], bind=f"127.0.0.1:{port}", settings=options.settings,
                     web_processes=options.web_processes)
    return env, port


def full_round(n: int, options, ctx: dict) -> dict:
    section(f"full path: {n} concurrent streams")
    baseline = asyncio.run(fake_direct(ctx["fake_url"], n, ctx["expected"], options.timeout))
    base_ttft = [r["first"] for r in baseline["results"] if "first" in r]
    base_errors = errors_of(baseline["results"])
    print(f"fake alone ({n} concurrent): TTFT p50/p95/p99 {pcts(base_ttft)}, whole answer "
          f"{pcts([r['end'] for r in baseline['results'] if 'end' in r])}, all done in {baseline['seconds']:.2f} s, "
          f"errors {sum(base_errors.values())} {dict(base_errors) or ''}", flush=True)

    jobs = prepare_jobs(ctx["orgs"], n + options.warmup, ctx["run"])
    warm, jobs = jobs[:options.warmup], jobs[options.warmup:]
    env, port = round_env(options, ctx)
    concurrency = options.generation_concurrency
    label = f"full-{n}"
    workers = {f"worker-{i + 1}": ctx["logs"] / f"worker-{i + 1}-{label}.log" for i in range(options.generators)}
    web_log = ctx["logs"] / f"web-{label}.log"
    base = f"http://127.0.0.1:{port}"
    try:
        start_web(env, port, web_log)
        for name, log in workers.items():
            start_worker(env, concurrency, log, label, name)
        if warm:
            warmed = asyncio.run(prumo_streams(base, warm, ctx["expected"], options.timeout, 0))
            print(f"warm-up: {len(warm)} streams, errors {sum(errors_of(warmed['results']).values())}", flush=True)
        pids = {"web master": PROCESSES.running["web"].pid, "fake": ctx["fake_pid"]}
        pids.update({"generation worker" + ("" if len(workers) == 1 else f" {name[7:]}"): PROCESSES.running[name].pid
                     for name in workers})
        sampler = Sampler(pids, ctx["database"], ctx["url"], ctx["redis_url"])
        sampler.start()
        measured = asyncio.run(prumo_streams(base, jobs, ctx["expected"], options.timeout, options.post_concurrency,
                                             start=sampler.mark))
        figures = sampler.finish()
    finally:
        PROCESSES.stop("web")
        for name in workers:
            PROCESSES.stop(name, timeout=60)

    results = measured["results"]
    result = {
        "mode": "full", "n": n, "concurrency": concurrency, "post_concurrency": options.post_concurrency,
        "base_ttft": base_ttft, "base_errors": base_errors, "base_seconds": baseline["seconds"],
        "ttft": [r["first"] for r in results if "first" in r],
        "ttft_sent": [r["first"] - r["post_wait"] for r in results if "first" in r],
        "first_text": [r["first"] if "first" in r else r["end"] for r in results if "first" in r or "end" in r],
        "sse_after_post": [r["sse_open"] - r["post"] for r in results if "sse_open" in r],
        "post": [r["post"] - r["post_wait"] for r in results if "post" in r],
        "post_wait": [r["post_wait"] for r in results if "post_wait" in r],
        "generation": [r["first"] - r["post"] for r in results if "first" in r],
        "first_delay": [r["first_delay"] / 1000 for r in results if "first_delay" in r],
        "delays": [d / 1000 for r in results for d in r.get("delays", ())],
        "total": [r["end"] for r in results if "end" in r],
        "errors": errors_of(results), "seconds": measured["seconds"], "statuses": answer_statuses(jobs),
        "refusals": sum((r.get("refusals", Counter()) for r in results), Counter()),
        "served_after_retry": sum(1 for r in results if r.get("refused") and "error" not in r),
        "deltas": sum(r.get("deltas", 0) for r in results), "reconnects": sum(r.get("reconnects", 0) for r in results),
        "logs": {"web": log_errors(web_log), **{name: log_errors(log) for name, log in workers.items()}}, **figures,
        "streams": [{key: value for key, value in r.items() if key != "delays"} for r in results],
        "web_processes": options.web_processes, "generators": options.generators, "pgbouncer": options.pgbouncer,
    }
    # CPU of the web workers and generation workers over the measured window, per question asked.
    busy = sum(cores for name, cores in result["cores"].items() if name.startswith(("web", "generation worker")))
    result["cpu_per_answer"] = busy * result["cpu_window"] / n
    logged = "\n".join(log.read_text(errors="replace") for log in workers.values())
    result["wrong_schema"] = len(re.findall(r'relation "[^"]+" does not exist', logged))  # a task run in `public`
    result["switch_retries"] = logged.count("the schema switch failed")  # refused to run there, retried
    report_full(result)
    return result


def start_writer(env: dict, log: Path, keys: list[str], pieces: list[str], delay: float, redis_url: str):
    writer = PROCESSES.start("writer", [sys.executable, __file__, "--serve-writer"], env, log,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    writer.stdin.write(json.dumps({"redis_url": redis_url, "keys": keys, "pieces": pieces, "delay": delay}) + "\n")
    writer.stdin.flush()
    if writer.stdout.readline().strip() != "ready":
        sys.exit(f"the writer did not start (see {log})")
    return writer


def fanout_round(n: int, options, ctx: dict) -> dict:
    section(f"fan-out alone: {n} concurrent streams fed straight into Redis")
    from chat.models import Message

    jobs = prepare_jobs(ctx["orgs"], n + options.warmup, ctx["run"], answers=Message.Status.STREAMING)
    warm, jobs = jobs[:options.warmup], jobs[options.warmup:]
    env, port = round_env(options, ctx)
    label = f"fanout-{n}"
    web_log, writer_log = ctx["logs"] / f"web-{label}.log", ctx["logs"] / f"writer-{label}.log"
    base = f"http://127.0.0.1:{port}"
    pieces = answer_pieces(options.pieces)
    try:
        start_web(env, port, web_log)
        if warm:
            writer = start_writer(env, writer_log, [job["key"] for job in warm], pieces, options.chunk_delay,
                                  ctx["redis_url"])
            warmed = asyncio.run(fanout_streams(base, warm, ctx["expected"], options.timeout, writer))
            print(f"warm-up: {len(warm)} streams, errors {sum(errors_of(warmed['results']).values())}", flush=True)
            PROCESSES.stop("writer", timeout=5)
        writer = start_writer(env, writer_log, [job["key"] for job in jobs], pieces, options.chunk_delay,
                              ctx["redis_url"])
        sampler = Sampler({"web master": PROCESSES.running["web"].pid, "writer": writer.pid},
                          ctx["database"], ctx["url"], ctx["redis_url"])
        sampler.start()
        measured = asyncio.run(fanout_streams(base, jobs, ctx["expected"], options.timeout, writer,
                                              mark=sampler.mark))
        figures = sampler.finish()
        ticks = json.loads(writer.stdout.readline() or "{}")
    finally:
        PROCESSES.stop("web")
        PROCESSES.stop("writer", timeout=5)

    results = measured["results"]
    result = {
        "mode": "fanout", "n": n, "connected": measured["connected"], "opened": measured["opened"],
        "sse_open": [r["sse_open"] for r in results if "sse_open" in r],
        "first_delay": [r["first_delay"] / 1000 for r in results if "first_delay" in r],
        "delays": [d / 1000 for r in results for d in r.get("delays", ())],
        "errors": errors_of(results), "seconds": measured["seconds"], "ticks": ticks,
        "deltas": sum(r.get("deltas", 0) for r in results), "reconnects": sum(r.get("reconnects", 0) for r in results),
        "logs": {"web": log_errors(web_log)}, **figures,
        "streams": [{key: value for key, value in r.items() if key != "delays"} for r in results],
    }
    report_fanout(result)
    return result


# ---------------------------------------------------------------- report


def report_processes(r: dict) -> None:
    window = r["cpu_window"]
    for name in sorted(r["rss"]):
        print(f"  {name:<18} RSS {r['rss_idle'].get(name, 0) / MiB:5.0f} MiB idle -> peak {r['rss'][name] / MiB:5.0f} "
              f"MiB, peak threads {r['threads'][name]:5d}, CPU {r['cores'].get(name, float('nan')):.2f} cores "
              f"(busiest second {r['peak_cores'].get(name, float('nan')):.2f})")
    rest = r["machine"] - sum(r["cores"].values())
    print(f"  bench client       CPU {r['cores']['bench client']:.2f} cores; whole machine {r['machine']:.2f} of "
          f"{os.cpu_count()} cores busy, of which {rest:.2f} outside these processes (PostgreSQL, Redis, the rest "
          f"of the VM) (CPU over the {window:.1f} s measured)")
    print(f"peak PostgreSQL connections: {r['pg']} to the bench database, {r['pg_total']} on the server; "
          f"peak Redis clients (whole server): {r['redis']}; web worker processes seen: {r['web_workers_seen']} "
          f"(more than WEB_CONCURRENCY: recycled by max_requests, their CPU counted)")
    for name, (count, kinds) in r["logs"].items():
        if count or kinds:
            print(f"{name} log: {count} error lines; " + "; ".join(f"{k} (x{v})" for k, v in kinds.most_common(5)))


def report_full(r: dict) -> None:
    n, seconds = r["n"], r["seconds"]
    print(f"through Prumo: TTFT (ask -> first delta) p50/p95/p99 {pcts(r['ttft'])} "
          f"({len(r['ttft'])} of {n} streams got a delta)")
    added = " / ".join(f"{ms(r['ttft'], pct) - ms(r['base_ttft'], pct):+.0f}" for pct in (50, 95, 99))
    print(f"  added by Prumo p50/p95/p99: {added} ms")
    if r["post_concurrency"]:
        print(f"  waiting for one of the {r['post_concurrency']} POST slots {pcts(r['post_wait'])}; TTFT from the "
              f"POST sent {pcts(r['ttft_sent'])}")
    if len(r["first_text"]) > len(r["ttft"]):
        print(f"  first text counting the `end` of answers already final when their stream opened "
              f"{pcts(r['first_text'])} ({len(r['first_text'])} streams)")
    print(f"  POST (send view, request to response) {pcts(r['post'])}; POST answered -> first delta "
          f"{pcts(r['generation'])}; first delta Redis -> client {pcts(r['first_delay'])}")
    print(f"  SSE first byte after the POST's response {pcts(r['sse_after_post'])}; every delta Redis -> client "
          f"{pcts(r['delays'])}; ask -> end {pcts(r['total'])}")
    print(f"total {seconds:.2f} s for {n} streams; {r['deltas']} delta events ({r['deltas'] / seconds:,.0f}/s), "
          f"{r['reconnects']} resumed connections")
    print(f"errors: {sum(r['errors'].values())} {dict(r['errors']) or ''}; answers in the database: "
          f"{dict(r['statuses'])}")
    print(f"sends refused then sent again: {sum(r['refusals'].values())} refusals {dict(r['refusals']) or ''}; "
          f"{r['served_after_retry']} questions served after a retry")
    left = sum(count for status, count in r["statuses"].items() if status in ("pending", "streaming"))
    print(f"answers left pending/streaming: {left}; tasks run in the wrong schema: {r['wrong_schema']} (schema "
          f"switches refused and retried: {r['switch_retries']}); CPU per answer (web + generation workers): "
          f"{r['cpu_per_answer'] * 1000:.0f} ms")
    report_processes(r)


def report_fanout(r: dict) -> None:
    n, seconds = r["n"], r["seconds"]
    print(f"{r['opened']} of {n} SSE connections open after {r['connected']:.2f} s; time to open "
          f"p50/p95/p99 {pcts(r['sse_open'])}")
    print(f"first delta Redis -> client p50/p95/p99 {pcts(r['first_delay'])}; every delta {pcts(r['delays'])}")
    ticks = r["ticks"]
    if ticks:
        print(f"writer: done in {ticks['seconds']:.2f} s, each tick's appends took median "
              f"{ticks['tick_median'] * 1000:.0f} ms, max {ticks['tick_max'] * 1000:.0f} ms; latest tick start "
              f"{ticks['lag_max'] * 1000:.0f} ms")
    print(f"all streams ended {seconds:.2f} s after the first append; {r['deltas']} delta events "
          f"({r['deltas'] / seconds:,.0f}/s), {r['reconnects']} resumed connections; "
          f"errors: {sum(r['errors'].values())} {dict(r['errors']) or ''}")
    report_processes(r)


def summary(rounds: list[dict]) -> None:
    section("summary")
    full = [r for r in rounds if r["mode"] == "full"]
    if full:
        print("| Streams | TTFT fake alone p50 / p95 / p99 | TTFT through Prumo p50 / p95 / p99 | "
              "Added p50 / p95 / p99 | POST p50 / p95 | Delta Redis -> client p50 / p99 | Total | Errors | "
              "Refused, then served | Left pending/streaming | Wrong schema | Peak PostgreSQL connections | "
              "CPU per answer | Peak RSS web / generation worker |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in full:
            added = " / ".join(f"{ms(r['ttft'], p) - ms(r['base_ttft'], p):+.0f}" for p in (50, 95, 99))
            left = sum(count for status, count in r["statuses"].items() if status in ("pending", "streaming"))
            print(f"| {r['n']:,} | {pcts(r['base_ttft'])} | {pcts(r['ttft'])} | {added} ms | "
                  f"{ms(r['post'], 50):.0f} / {ms(r['post'], 95):.0f} ms | "
                  f"{ms(r['delays'], 50):.0f} / {ms(r['delays'], 99):.0f} ms | {r['seconds']:.1f} s | "
                  f"{sum(r['errors'].values())} of {r['n']} | {sum(r['refusals'].values())} refusals, "
                  f"{r['served_after_retry']} served | {left} | {r['wrong_schema']} | {r['pg']} | "
                  f"{r['cpu_per_answer'] * 1000:.0f} ms | {r['rss'].get('web worker', 0) / MiB:.0f} / "
                  f"{r['rss'].get('generation worker', r['rss'].get('generation worker 1', 0)) / MiB:.0f} MiB |")
    fanout = [r for r in rounds if r["mode"] == "fanout"]
    if fanout:
        print("\n| Streams (fan-out alone) | All connected after | Open p50 / p95 / p99 | First delta p50 / p95 / p99 "
              "| Every delta p50 / p95 / p99 | Events/s | Errors | Peak RSS web | CPU web / writer / client (cores) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in fanout:
            cores = " / ".join(f"{r['cores'].get(name, float('nan')):.2f}"
                               for name in ("web worker", "writer", "bench client"))
            print(f"| {r['n']:,} | {r['connected']:.1f} s | {pcts(r['sse_open'])} | {pcts(r['first_delay'])} | "
                  f"{pcts(r['delays'])} | {r['deltas'] / r['seconds']:,.0f} | {sum(r['errors'].values())} of "
                  f"{r['n']} | {r['rss'].get('web worker', 0) / MiB:.0f} MiB | {cores} |")


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="100,500,1000", help="comma-separated numbers of concurrent streams")
    parser.add_argument("--mode", choices=("full", "fanout", "both"), default="both",
                        help="the whole path, the web process's fan-out alone, or both")
    parser.add_argument("--orgs", type=int, default=1, help="organizations the streams are spread over")
    parser.add_argument("--pieces", type=int, default=30, help="text chunks in the fake's answer")
    parser.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between the fake's chunks")
    parser.add_argument("--warmup", type=int, default=5, help="streams run (unmeasured) after the servers start")
    parser.add_argument("--generation-concurrency", type=int, default=64,
                        help="threads of the generation worker (default: the image's GENERATION_CONCURRENCY, 64)")
    parser.add_argument("--web-processes", type=int, default=1, help="uvicorn workers of the web process "
                        "(WEB_CONCURRENCY)")
    parser.add_argument("--generators", type=int, default=1, help="generation worker processes")
    parser.add_argument("--pgbouncer", action="store_true", help="the servers reach PostgreSQL through Debian's "
                        "pgbouncer running docker/pgbouncer/pgbouncer.ini (session pooling)")
    parser.add_argument("--post-concurrency", type=int, default=0,
                        help="POSTs in flight at once (default: all at once)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a client waits for its whole answer")
    parser.add_argument("--settings", default="config.settings.prod", help="DJANGO_SETTINGS_MODULE of the servers")
    parser.add_argument("--redis-db", type=int, default=14, help="Redis database of the servers (flushed)")
    parser.add_argument("--database", default="prumo_bench", help="bench database name (never the dev one)")
    parser.add_argument("--json", help="also write every stream's timings (seconds from its start) to this file")
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-writer", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve_fake:
        serve_fake(options.pieces, options.chunk_delay)
        return
    if options.serve_writer:
        serve_writer()
        return

    counts = [int(value) for value in options.streams.split(",") if value.strip()]
    # Our own SIGINT handler too: asyncio.run's would only cancel the clients, which may take until their timeout.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    atexit.register(PROCESSES.stop_all)
    nofile = raise_nofile()

    url = bench_database_url(options.database)
    # The servers sign sessions with SECRET_KEY: the sessions made here must use the same one.
    secret = os.environ["SECRET_KEY"] = f"bench-streams-{secrets.token_urlsafe(40)}"
    setup_django(url)
    import django

    redis_url = f"{os.environ.get('REDIS_URL', 'redis://127.0.0.1:6379/0').rsplit('/', 1)[0]}/{options.redis_db}"
    print(f"bench database {options.database}, Redis {redis_url}, Django {django.get_version()}, "
          f"{os.cpu_count()} CPUs, servers with {options.settings}, open files limit {nofile}; code: {code_version()}")
    ensure_migrated()
    orgs = bench_organizations(options.orgs)
    logs = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    pieces = answer_pieces(options.pieces)
    fake, fake_url = start_fake(options.pieces, options.chunk_delay, logs)
    print(f"fake OpenAI provider in its own process (pid {fake.pid}, {fake_url}): {options.pieces} text chunks "
          f"{options.chunk_delay * 1000:.0f} ms apart ({len(''.join(pieces))} characters, about "
          f"{options.pieces * options.chunk_delay:.1f} s per answer); streams over {len(orgs)} organization(s); "
          f"server logs in {logs}", flush=True)
    server_url = url
    if options.pgbouncer:
        from tests.servers import start_pgbouncer

        bouncer = start_pgbouncer(database_url=url, workdir=logs)
        atexit.register(bouncer.stop)
        server_url = bouncer.url
        print(f"PgBouncer {bouncer.settings['pool_mode']} pooling, at most {bouncer.settings['max_db_connections']} "
              f"server connections: {server_url}", flush=True)
    ctx = {"url": url, "server_url": server_url, "database": options.database, "redis_url": redis_url,
           "secret": secret, "orgs": orgs,
           "user": bench_owner(), "run": uuid.uuid4().hex[:10], "fake_url": fake_url, "fake_pid": fake.pid,
           "expected": "".join(pieces), "logs": logs}
    rounds = []
    try:
        for n in counts:
            if options.mode in ("full", "both"):
                rounds.append(full_round(n, options, ctx))
        for n in counts:
            if options.mode in ("fanout", "both"):
                rounds.append(fanout_round(n, options, ctx))
    finally:
        PROCESSES.stop_all()
        summary(rounds)
        if options.json:
            Path(options.json).write_text(json.dumps([
                {key: value for key, value in r.items() if key not in ("logs", "statuses", "errors", "delays")}
                | {"errors": dict(r["errors"]), "streams": r["streams"]} for r in rounds], default=str))


if __name__ == "__main__":
    main()
