"""`make run`: migrate, seed the demo, then run the web server, Celery workers and beat.

Runs under `config/embedded.py`, which provides DATABASE_URL / REDIS_URL (embedded
servers when they are unset). Ctrl-C stops every process started here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PYTHON = sys.executable
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = os.environ.get("PORT", "8000")


def manage(*args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], check=True)


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    os.makedirs(os.environ.get("PRUMO_DATA_DIR", ".data"), exist_ok=True)  # beat keeps its schedule there
    manage("deploy_migrate")
    manage("seed_demo")
    celery = [PYTHON, "-m", "celery", "-A", "config"]
    commands = {
        # ASGI, so answers stream (runserver is WSGI and would buffer them); reloads on code changes.
        "web": [PYTHON, "-m", "uvicorn", "config.asgi:application", "--host", HOST, "--port", PORT,
                "--reload", "--lifespan", "off", "--no-access-log"],
        "worker": [*celery, "worker", "--loglevel", "INFO", "--concurrency", "2", "-n", "worker@%h",
                   "-Q", "default,checks,webhooks,billing,studio"],
        # Answers spend their time waiting on providers: threads, many at once.
        "generator": [*celery, "worker", "--loglevel", "INFO", "--pool", "threads", "--concurrency", "32",
                      "-n", "generator@%h", "-Q", "generation"],
        "beat": [*celery, "beat", "--loglevel", "INFO",
                 "--schedule", os.path.join(os.environ.get("PRUMO_DATA_DIR", ".data"), "celerybeat-schedule")],
    }
    processes = {name: subprocess.Popen(command) for name, command in commands.items()}
    print(
        f"\n  Prumo is running: http://{HOST}:{PORT}/\n"
        f"  Sign in as demo@example.com / prumo-demo — organization at http://{HOST}:{PORT}/o/demo/\n"
        f"  Emails (verification codes, invitations) are printed in this terminal.\n"
        f"  Ctrl-C stops everything.\n",
        flush=True,
    )
    stopping = False

    def stop(*_args) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"{name} exited with {process.returncode}; stopping the rest.", file=sys.stderr)
                exit_code, stopping = process.returncode or 1, True
                break
        time.sleep(0.5)
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in processes.values():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
