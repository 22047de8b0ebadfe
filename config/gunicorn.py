"""Gunicorn settings, shared by the Docker image and `make serve`.

    gunicorn config.asgi:application -c config/gunicorn.py

Everything a platform tunes comes from the environment (PORT, BIND, WEB_CONCURRENCY,
FORWARDED_ALLOW_IPS); the rest are fixed, reviewed defaults.
"""

from __future__ import annotations

import os
import resource


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# Listen on every interface: inside a container 127.0.0.1 is unreachable from outside.
# PaaS platforms hand out the port in PORT; BIND overrides the whole address (e.g. a unix socket).
bind = os.environ.get("BIND") or f"0.0.0.0:{_env_int('PORT', 8000)}"

# Each worker is a full asyncio event loop (ASGI), so a few go a long way; scale with WEB_CONCURRENCY.
workers = _env_int("WEB_CONCURRENCY", 2)

# Gunicorn supervises processes, uvicorn serves ASGI inside each one. Uvicorn's lifespan
# default ("auto") probes the app once; Django answers that it does not speak lifespan and
# uvicorn carries on. Our subclass only changes how a worker recycled by max_requests leaves:
# it drains its keep-alive connections instead of resetting them (config/web_worker.py).
worker_class = "config.web_worker.DrainingUvicornWorker"

# A worker that stops heartbeating for `timeout` seconds is killed and replaced.
timeout = 60
# On SIGTERM (deploys, scale-down) in-flight requests get this long to finish. Keep it below the
# orchestrator's stop grace period (Docker's default is 10s: set stop_grace_period accordingly).
graceful_timeout = 30
# Idle keep-alive seconds; slightly above a typical load balancer's so it closes first.
keepalive = 5

# Recycle workers now and then to bound slow memory growth; jitter avoids all restarting at once.
# A recycled worker drains (no new connections, `Connection: close` on the rest): no request is dropped.
max_requests = 1000
max_requests_jitter = 100

# Logs to stdout/stderr: the container runtime collects them.
accesslog = "-"
errorlog = "-"

# Only trust X-Forwarded-For/-Proto from these addresses (the reverse proxy). Default: only a
# proxy on the same host. Set FORWARDED_ALLOW_IPS to the load balancer's addresses (or "*"
# when the network guarantees only the proxy can reach us).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# Heartbeat files on tmpfs: on overlay filesystems the default (/tmp) can stall workers.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Gunicorn >= 25 opens a control socket under $HOME by default; a container has no use for it
# (and the non-root user may have no writable home). Opt in with GUNICORN_CONTROL_SOCKET=<path>.
if os.environ.get("GUNICORN_CONTROL_SOCKET"):
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]
else:
    control_socket_disable = True

# Each open answer stream costs two file descriptors (client socket, Redis): take the hard limit.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY or _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard if _hard != resource.RLIM_INFINITY else 65_536, _hard))


# Metrics from several workers (prometheus-client's multiprocess mode, core.metrics): samples of processes
# that are gone are removed when the server starts, and a worker's live gauges stop counting when it exits.
def on_starting(server):
    from core.metrics import multiprocess_dir_clean

    multiprocess_dir_clean()


def child_exit(server, worker):
    from core.metrics import process_dead

    process_dead(worker.pid)
