"""The embedded PostgreSQL and Redis behind `make run` / `make test` on a machine with neither."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent

PROBE = """
import os, psycopg, redis
with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    version = conn.execute("SHOW server_version").fetchone()[0]
    conn.execute("CREATE TABLE IF NOT EXISTS probe (n int)")
    conn.execute("INSERT INTO probe VALUES (1)")
    rows = conn.execute("SELECT count(*) FROM probe").fetchone()[0]
client = redis.Redis.from_url(os.environ["REDIS_URL"])
client.incr("probe")
print(version.split(".")[0], rows, int(client.get("probe")))
"""


@pytest.mark.slow
def test_embedded_services_start_serve_stop_and_keep_their_data(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "XDG_RUNTIME_DIR"}}
    env["PRUMO_DATA_DIR"] = str(tmp_path / "data")

    def run() -> list[str]:
        result = subprocess.run(
            [sys.executable, "config/embedded.py", "--", sys.executable, "-c", PROBE],
            cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout.strip().splitlines()[-1].split()

    first = run()
    assert first == ["16", "1", "1"]
    # Everything it started is stopped: nothing listens on the socket any more.
    assert _redis_down(tmp_path)
    assert not (tmp_path / "data" / "postgres" / "postmaster.pid").exists()
    second = run()
    assert second == ["16", "2", "2"], "the next run finds the same data"


def _redis_down(tmp_path: Path) -> bool:
    import redis

    try:
        redis.Redis(unix_socket_path=str(tmp_path / "data" / "redis" / "redis.sock"), socket_timeout=1).ping()
    except redis.RedisError:
        return True
    return False


def test_launcher_refuses_without_a_command():
    result = subprocess.run([sys.executable, "config/embedded.py"], cwd=BASE_DIR, capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr
