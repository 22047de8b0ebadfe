"""Which kind of Prumo process this is, from its command line (or PRUMO_PROCESS): sizes its database pool
and names its PostgreSQL connections (`application_name`), so pg_stat_activity counts them per kind."""

from __future__ import annotations

import os
import sys


def process_role(argv: list[str] | None = None) -> str:
    """web (gunicorn/uvicorn), generator (Celery on the GENERATION_QUEUE alone), worker (other Celery workers),
    beat, or manage (manage.py, tests, scripts)."""
    explicit = os.environ.get("PRUMO_PROCESS", "").strip()
    if explicit:
        return explicit
    argv = sys.argv if argv is None else argv
    program = " ".join(argv[:1]).replace("\\", "/")
    if "gunicorn" in program or "uvicorn" in program:
        return "web"
    if "celery" in program:
        if "beat" in argv:
            return "beat"
        queues = [value for flag, value in zip(argv, argv[1:], strict=False) if flag in ("-Q", "--queues")]
        queues += [arg.split("=", 1)[1] for arg in argv if arg.startswith(("-Q=", "--queues="))]
        generation = os.environ.get("GENERATION_QUEUE", "generation")
        return "generator" if queues and queues[0].split(",") == [generation] else "worker"
    return "manage"
