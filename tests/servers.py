"""Real processes for end-to-end tests: the production-style web server and a Celery worker.

Both run as subprocesses against the *test* database, so they only see COMMITTED data:
tests that use them work with the committed `tenant_world` fixture, do their setup through
the live server itself, or commit explicitly (`django_db_blocker.unblock()`) and clean up.
Never combine them with `transactional_db` / `live_server`: their flush would wipe the
committed session fixtures in every schema.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "config" / "gunicorn.py"
WORKER_QUEUES = "default,checks,webhooks,billing,generation"
# The filebased email backend ends every message with a line of 79 dashes.
MESSAGE_SEPARATOR = re.compile(rb"^-{79}\r?$\n?", re.MULTILINE)

T = TypeVar("T")


# ---------------------------------------------------------------- production secrets


def production_secrets() -> dict[str, str]:
    """Fresh values for the secrets production settings insist on (config/settings/prod.py)."""
    import secrets

    from cryptography.fernet import Fernet

    return {"SECRET_KEY": secrets.token_urlsafe(50), "PROVIDER_KEY_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "MFA_ENCRYPTION_KEYS": Fernet.generate_key().decode()}


# ---------------------------------------------------------------- database URL


def database_url(settings_dict: dict[str, Any]) -> str:
    """A DATABASE_URL (dj-database-url syntax) for the database described by `settings_dict`.

    Use `django.db.connection.settings_dict` after `django_db_setup`: NAME is then the test
    database. HOST may be a unix socket directory (`/var/run/postgresql`): it is percent-encoded
    into the host part, which dj-database-url decodes back into HOST.
    """
    user = quote(settings_dict.get("USER") or "", safe="")
    password = quote(str(settings_dict.get("PASSWORD") or ""), safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = str(settings_dict.get("HOST") or "")
    port = str(settings_dict.get("PORT") or "")
    if host.startswith("/"):
        location = quote(host, safe="")
    else:
        location = f"[{host}]" if ":" in host else host
        if port:
            location += f":{port}"
    name = quote(settings_dict["NAME"], safe="")
    # Connection options that are plain values (sslmode, connect_timeout...) travel as query parameters.
    options = {key: value for key, value in (settings_dict.get("OPTIONS") or {}).items()
               if isinstance(value, str | int) and not isinstance(value, bool)}
    query = f"?{urlencode(options)}" if options else ""
    return f"postgresql://{credentials}{location}/{name}{query}"


def in_thread(fn: Callable[[], T]) -> T:
    """Run ORM code in a fresh thread and close its connection afterwards.

    Playwright's sync API keeps an asyncio loop marked as running in the main thread, which
    makes Django refuse database access there (SynchronousOnlyOperation). pytest-django's
    `django_db_blocker.unblock()` is process-wide, so it covers the thread too.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        from django.db import connections

        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            outcome["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, name="db-helper")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ---------------------------------------------------------------- processes


def postgres_address(url: str) -> tuple[str, int]:
    """Where the PostgreSQL server of `url` listens: (host, port), or (Unix socket directory, port)."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    return str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)


def postgres_url_at(url: str, port: int) -> str:
    """`url` (the same database, user and options) reached over TCP at 127.0.0.1:`port`: a proxy's address."""
    from psycopg.conninfo import conninfo_to_dict

    params = {key: str(value) for key, value in conninfo_to_dict(url).items()}
    params.pop("host", None)
    params.pop("port", None)
    user, password, name = params.pop("user", ""), params.pop("password", ""), params.pop("dbname")
    credentials = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql://{credentials}@127.0.0.1:{port}/{quote(name, safe='')}{query}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(*, database_url: str, redis_url: str, email_dir: Path, port: int | None = None,
               **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # Never inherit knobs that would change what the subprocesses do.
    for name in ("DJANGO_ALLOW_ASYNC_UNSAFE", "GUNICORN_CMD_ARGS", "BIND", "CELERY_BROKER_URL", "EMAIL_BACKEND",
                 "DEBUG"):
        env.pop(name, None)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.test",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        TEST_EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(email_dir),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        # Tasks go through Redis to a real worker (in-process tests run them eagerly).
        CELERY_TASK_ALWAYS_EAGER="0",
        PYTHONUNBUFFERED="1",
        # The demo model streams ~100 words: at 50 ms a word an answer lasts ~5 s, long enough
        # for streaming tests to act mid-answer (resume, reload, stop).
        CHAT_DEMO_DELAY="0.05",
        # Some tests open hundreds of streams as one person (one process's fan-out); the per-person cap has a
        # test of its own, with its own server (tests/test_chat_concurrency.py).
        CHAT_STREAMS_PER_USER="1000",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    )
    if port is not None:
        env["SITE_URL"] = f"http://127.0.0.1:{port}"
    env.update(extra)
    return env


@dataclass
class Process:
    """A subprocess in its own process group, its output in `log_path`."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def fail(self, message: str) -> None:
        log = self.log()
        self.stop()
        raise RuntimeError(f"{self.name}: {message}\n$ {' '.join(self.command)}\n--- log ---\n{log[-20000:]}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the whole process group (gunicorn's workers, celery's children), then SIGKILL."""
        if self.popen is None:
            return
        pgid = self.popen.pid  # start_new_session: the group id is our child's pid
        if self.popen.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # stragglers (workers that outlived their master) go too
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def print_log(self) -> None:
        sys.stdout.write(f"\n===== {self.name} log ({self.log_path}) =====\n{self.log()}\n"
                         f"===== end of {self.name} log =====\n")


# ---------------------------------------------------------------- outbox


def parse_mail_file(path: Path) -> list[EmailMessage]:
    """Messages in one file written by Django's filebased backend."""
    messages = []
    for chunk in MESSAGE_SEPARATOR.split(path.read_bytes()):
        if chunk.strip():
            messages.append(email.message_from_bytes(chunk.lstrip(b"\r\n"), policy=email.policy.default))
    return messages


def read_outbox(directory: Path) -> list[EmailMessage]:
    """Every message written to `directory`, oldest first (Date header, then file and position)."""
    found: list[tuple[float, float, str, int, EmailMessage]] = []
    for path in directory.glob("*.log"):
        try:
            mtime = path.stat().st_mtime
            messages = parse_mail_file(path)
        except FileNotFoundError:
            continue
        for position, message in enumerate(messages):
            try:
                sent = parsedate_to_datetime(message["Date"]).timestamp()
            except (TypeError, ValueError):
                sent = mtime
            found.append((sent, mtime, path.name, position, message))
    found.sort(key=lambda entry: entry[:4])
    return [entry[-1] for entry in found]


def body_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    return part.get_content() if part is not None else ""


def recipients(message: EmailMessage) -> set[str]:
    addresses = email.utils.getaddresses([str(value) for value in (message.get_all("To") or [])])
    return {address.lower() for _name, address in addresses}


# ---------------------------------------------------------------- live server


@dataclass
class LiveServer:
    url: str
    process: Process
    email_dir: Path

    def outbox(self) -> list[EmailMessage]:
        """Emails the server (or anything sharing its EMAIL_FILE_PATH) sent, oldest first."""
        return read_outbox(self.email_dir)

    def wait_for_email(self, to: str, *, predicate: Callable[[EmailMessage], bool] | None = None,
                       timeout: float = 20.0) -> EmailMessage:
        """The newest message to `to` (matching `predicate`), waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            matching = [message for message in self.outbox()
                        if to.lower() in recipients(message) and (predicate is None or predicate(message))]
            if matching:
                return matching[-1]
            if time.monotonic() > deadline:
                seen = [(message["To"], message["Subject"]) for message in self.outbox()]
                raise AssertionError(f"no email to {to} within {timeout}s; outbox: {seen}")
            time.sleep(0.2)


def web_command(port: int) -> tuple[list[str], dict[str, str]]:
    """gunicorn with the project's config when it exists, uvicorn otherwise."""
    if GUNICORN_CONF.exists():
        command = [sys.executable, "-m", "gunicorn", "config.asgi:application", "-c", str(GUNICORN_CONF)]
        return command, {"PORT": str(port), "WEB_CONCURRENCY": "1", "BIND": f"127.0.0.1:{port}"}
    command = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
               "--port", str(port), "--lifespan", "off"]
    return command, {}


def wait_for_http(process: Process, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not process.alive:
            process.fail(f"exited with {process.popen.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last_error = exc
        time.sleep(0.2)
    process.fail(f"{url} did not answer 200 within {timeout}s (last error: {last_error!r})")


def start_live_server(*, database_url: str, redis_url: str, workdir: Path,
                      env_extra: dict[str, str] | None = None) -> LiveServer:
    port = free_port()
    email_dir = workdir / "mail"
    email_dir.mkdir(parents=True, exist_ok=True)
    command, extra = web_command(port)
    env = server_env(database_url=database_url, redis_url=redis_url, email_dir=email_dir, port=port,
                     **{**extra, **(env_extra or {})})
    process = Process("web", command, env, workdir / "web.log").start()
    url = f"http://127.0.0.1:{port}"
    wait_for_http(process, f"{url}/healthz")
    return LiveServer(url=url, process=process, email_dir=email_dir)


# ---------------------------------------------------------------- celery worker


@dataclass
class CeleryWorker:
    process: Process
    hostname: str


def start_celery_worker(*, database_url: str, redis_url: str, workdir: Path, email_dir: Path,
                        site_url: str = "", queues: str = WORKER_QUEUES, timeout: float = 60.0,
                        env_extra: dict[str, str] | None = None) -> CeleryWorker:
    hostname = f"pytest-{os.getpid()}-{free_port()}@%h"
    # Threads, like the production generation worker: several answers stream at once.
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=threads", "--concurrency=4",
               "-Q", queues, "--loglevel=INFO", "-n", hostname, "--without-gossip", "--without-mingle"]
    extra = {"SITE_URL": site_url} if site_url else {}
    extra.update(env_extra or {})
    env = server_env(database_url=database_url, redis_url=redis_url, email_dir=email_dir, **extra)
    process = Process("celery", command, env, workdir / "celery.log").start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive:
            process.fail(f"exited with {process.popen.returncode} before it was ready")
        if re.search(r"\S+@\S+ ready\.", process.log()):
            return CeleryWorker(process=process, hostname=hostname)
        time.sleep(0.2)
    process.fail(f"not ready within {timeout}s")
    raise AssertionError("unreachable")


def print_logs(processes: Iterable[Process]) -> None:
    for process in processes:
        process.print_log()


# ---------------------------------------------------------------- pgbouncer

PGBOUNCER_INI = ROOT / "docker" / "pgbouncer" / "pgbouncer.ini"


@dataclass
class PgBouncer:
    process: Process
    url: str  # the database of `start_pgbouncer`'s URL, through PgBouncer
    settings: dict[str, str]  # the [pgbouncer] section it runs with
    directory: Path  # its configuration

    def stop(self) -> None:
        import shutil

        self.process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def pgbouncer_binary() -> str | None:
    import shutil

    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return found if Path(found).exists() else None


def start_pgbouncer(*, database_url: str, workdir: Path, settings: dict[str, str] | None = None,
                    timeout: float = 15.0) -> PgBouncer:
    """Debian's `pgbouncer` running the compose file's configuration (docker/pgbouncer/pgbouncer.ini) in front of
    the PostgreSQL of `database_url`: only its address, port and authentication (trust) replaced, plus `settings`.

    PgBouncer refuses to run as root: as root it runs as the owner of PostgreSQL's socket directory (the embedded
    server's), or as nobody for a TCP server; its configuration goes to a directory that user can read.
    """
    import configparser
    import pwd
    import tempfile

    import psycopg

    binary = pgbouncer_binary()
    if binary is None:
        raise RuntimeError("pgbouncer is missing: install Debian's pgbouncer package (apt-get install pgbouncer)")
    host, port = postgres_address(database_url)
    config = configparser.ConfigParser(interpolation=None)
    config.optionxform = str  # keep keys as written
    config.read(PGBOUNCER_INI)
    directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    directory.chmod(0o755)
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    listen_port = free_port()
    config["databases"] = {"*": f"host={host} port={port}"}
    config["pgbouncer"].update({"listen_addr": "127.0.0.1", "listen_port": str(listen_port), "auth_type": "trust",
                                "auth_file": str(directory / "userlist.txt"), **(settings or {})})
    ini = directory / "pgbouncer.ini"
    with ini.open("w") as out:
        config.write(out)
    for path in directory.iterdir():
        path.chmod(0o644)
    command = [binary, str(ini)]
    if os.geteuid() == 0:
        owner = pwd.getpwuid(Path(host).stat().st_uid).pw_name if host.startswith("/") else "nobody"
        command[1:1] = ["-u", owner]
    process = Process("pgbouncer", command, dict(os.environ), workdir / "pgbouncer.log").start()
    url = postgres_url_at(database_url, listen_port)
    deadline = time.monotonic() + timeout
    while True:
        if not process.alive:
            process.fail(f"exited with {process.popen.returncode}")
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return PgBouncer(process=process, url=url, settings=dict(config["pgbouncer"]), directory=directory)
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                process.fail(f"not accepting connections within {timeout}s: {exc}")
            time.sleep(0.1)
