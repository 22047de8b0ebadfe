"""Container packaging: Dockerfile, entrypoint, gunicorn config and docker-compose (its observability profile too).

No Docker engine is needed: files are parsed, the gunicorn config is executed, and the
entrypoint and healthcheck commands are run against stand-ins.
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
GUNICORN_CONF = ROOT / "config" / "gunicorn.py"
COMPOSE = ROOT / "docker-compose.yml"
# Every queue a task is routed to in the settings, Celery's default one, and billing's (named on its tasks).
QUEUES = {"default", "billing"} | {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}


# ---------------------------------------------------------------- helpers


def dockerfile_stages() -> list[list[dict]]:
    """Instructions (comments dropped) grouped by build stage, in order."""
    parser = DockerfileParser(path=str(DOCKERFILE))
    stages: list[list[dict]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if item["instruction"] != "COMMENT":
            assert stages, "instruction before the first FROM"
            stages[-1].append(item)
    return stages


def instructions(stage: list[dict], name: str) -> list[str]:
    return [item["value"] for item in stage if item["instruction"] == name]


def healthcheck_command() -> str:
    (value,) = instructions(dockerfile_stages()[-1], "HEALTHCHECK")
    _, _, command = value.partition("CMD ")
    assert command, f"HEALTHCHECK without CMD: {value}"
    return command.strip()


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def healthcheck_text(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def load_gunicorn_conf(monkeypatch, **env: str) -> dict:
    for name in (
        "PORT",
        "BIND",
        "WEB_CONCURRENCY",
        "FORWARDED_ALLOW_IPS",
        "GUNICORN_CONTROL_SOCKET",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(GUNICORN_CONF))


# ---------------------------------------------------------------- gunicorn config


def test_gunicorn_reads_port_and_web_concurrency(monkeypatch):
    conf = load_gunicorn_conf(monkeypatch, PORT="9123", WEB_CONCURRENCY="3")
    assert conf["bind"] == "0.0.0.0:9123"
    assert conf["workers"] == 3


def test_gunicorn_defaults(monkeypatch):
    conf = load_gunicorn_conf(monkeypatch)
    assert conf["bind"] == "0.0.0.0:8000"
    assert conf["workers"] == 2
    assert conf["forwarded_allow_ips"] == "127.0.0.1"
    assert conf["accesslog"] == "-" and conf["errorlog"] == "-"
    # Workers must be given time to finish requests before they are killed.
    assert conf["timeout"] >= conf["graceful_timeout"] > 0


def test_gunicorn_bind_and_proxy_overrides(monkeypatch):
    conf = load_gunicorn_conf(
        monkeypatch,
        PORT="9123",
        BIND="unix:/tmp/prumo.sock",
        FORWARDED_ALLOW_IPS="10.0.0.1",
    )
    assert conf["bind"] == "unix:/tmp/prumo.sock"
    assert conf["forwarded_allow_ips"] == "10.0.0.1"


def test_gunicorn_accepts_every_setting_and_loads_the_uvicorn_worker(monkeypatch):
    """Gunicorn silently ignores unknown names in a config file: catch typos here."""
    from gunicorn.config import Config
    from uvicorn_worker import UvicornWorker

    from config.web_worker import DrainingUvicornWorker

    conf = load_gunicorn_conf(monkeypatch, PORT="9123", WEB_CONCURRENCY="3")
    # Everything the file defines except helpers, imports and dunders.
    settings = {
        k: v
        for k, v in conf.items()
        if not k.startswith("_") and not callable(v) and not isinstance(v, type(os)) and k != "annotations"
    }
    cfg = Config()
    unknown = sorted(set(settings) - set(cfg.settings))
    assert not unknown, f"not gunicorn settings: {unknown}"
    for name, value in settings.items():
        cfg.set(name, value)  # runs gunicorn's own validators
    assert cfg.address == [("0.0.0.0", 9123)]
    assert cfg.workers == 3
    assert cfg.worker_class is DrainingUvicornWorker and issubclass(cfg.worker_class, UvicornWorker)


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multi_stage_and_runtime_reuses_builder_venv():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    builder_runs = instructions(builder, "RUN")
    assert any("venv /opt/venv" in run for run in builder_runs)
    assert any("pip install" in run and "requirements.txt" in run for run in builder_runs)
    assert any(copy.startswith("--from=") and "/opt/venv" in copy for copy in instructions(final, "COPY"))
    # Compilers stay in the builder.
    assert any("build-essential" in run for run in instructions(builder, "RUN"))
    assert not any("build-essential" in run or "gcc" in run for run in instructions(final, "RUN"))


def test_dockerfile_final_stage_runs_as_non_root_user():
    final = dockerfile_stages()[-1]
    users = instructions(final, "USER")
    assert users, "final stage never switches user"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert any("useradd" in run and "10001" in run and user in run for run in instructions(final, "RUN"))


def test_dockerfile_runtime_environment():
    final = dockerfile_stages()[-1]
    env = " ".join(instructions(final, "ENV"))
    assert "DJANGO_SETTINGS_MODULE=config.settings.prod" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert "/opt/venv/bin" in env
    assert "8000" in instructions(final, "EXPOSE")


def test_dockerfile_collects_static_in_final_stage_without_baking_secrets():
    stages = dockerfile_stages()
    final_runs = instructions(stages[-1], "RUN")
    (collect,) = [run for run in final_runs if "collectstatic" in run]
    assert "--noinput" in collect
    # prod settings refuse to load without these, so the build passes throwaways inline...
    assert "SECRET_KEY=" in collect and "DATABASE_URL=" in collect
    # ...and never as ENV/ARG, which would persist them in the image.
    for stage in stages:
        for name in ("ENV", "ARG"):
            for value in instructions(stage, name):
                assert "SECRET_KEY" not in value and "DATABASE_URL" not in value


def test_dockerfile_healthcheck_probes_healthz_with_python():
    command = healthcheck_command()
    assert "/healthz" in command
    assert "urllib" in command
    assert "curl" not in command  # not installed in python:*-slim


class _ProdLikeHandler(BaseHTTPRequestHandler):
    """Answers like prod: plain-HTTP requests are redirected to https unless the proxy says https."""

    status = 200

    def do_GET(self):
        if self.headers.get("X-Forwarded-Proto") != "https":
            self.send_response(301)
            self.send_header("Location", f"https://127.0.0.1{self.path}")
        elif self.path != "/healthz":
            self.send_response(404)
        else:
            self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_dockerfile_healthcheck_command_reports_health(status, healthy):
    handler = type("Handler", (_ProdLikeHandler,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            **os.environ,
            "PORT": str(server.server_address[1]),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        result = subprocess.run(
            ["sh", "-c", healthcheck_command()],
            check=False,
            env=env,
            capture_output=True,
            timeout=30,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr.decode()


def test_dockerfile_entrypoint_defaults_to_web():
    final = dockerfile_stages()[-1]
    (entrypoint,) = instructions(final, "ENTRYPOINT")
    (cmd,) = instructions(final, "CMD")
    assert yaml.safe_load(entrypoint) == ["/app/docker/entrypoint.sh"]
    assert yaml.safe_load(cmd) == ["web"]


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for entry in (".venv", ".data", ".git", "staticfiles", "media", ".pytest_cache"):
        assert entry in ignored
    assert ignored & {"__pycache__", "**/__pycache__"}


# ---------------------------------------------------------------- entrypoint


@pytest.fixture
def stub_bin(tmp_path):
    """`python`, `gunicorn` and `celery` stand-ins that record their arguments."""
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "gunicorn", "celery"):
        script = bin_dir / name
        script.write_text(
            "#!/bin/sh\n"
            f'echo "{name} $*" >> "{log}"\n'
            # Lets a test make `python manage.py deploy_migrate` fail.
            f'if [ "{name}" = python ] && [ -n "${{FAIL_MIGRATE:-}}" ]; then exit 3; fi\n'
        )
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir, log


def run_entrypoint(stub_bin, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir, log = stub_bin
    full_env = {k: v for k, v in os.environ.items() if k not in {"MIGRATE_ON_START", "FAIL_MIGRATE"}}
    full_env.update(env, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        check=False,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_entrypoint_is_strict_and_executable():
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!")
    assert "set -euo pipefail" in text
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR


def test_entrypoint_web_migrates_then_serves_asgi_with_uvicorn_workers(stub_bin, monkeypatch):
    result, calls = run_entrypoint(stub_bin, "web")
    assert result.returncode == 0, result.stderr
    assert calls == [
        "python manage.py deploy_migrate",
        "gunicorn config.asgi:application -c config/gunicorn.py",
    ]
    # The config file gunicorn is pointed at is the one that selects the (draining) uvicorn worker.
    assert load_gunicorn_conf(monkeypatch)["worker_class"] == "config.web_worker.DrainingUvicornWorker"


def test_entrypoint_web_can_skip_migrations(stub_bin):
    result, calls = run_entrypoint(stub_bin, "web", MIGRATE_ON_START="0")
    assert result.returncode == 0, result.stderr
    assert calls == ["gunicorn config.asgi:application -c config/gunicorn.py"]


def test_entrypoint_web_does_not_serve_when_migrations_fail(stub_bin):
    result, calls = run_entrypoint(stub_bin, "web", FAIL_MIGRATE="1")
    assert result.returncode != 0
    assert calls == ["python manage.py deploy_migrate"]


def test_entrypoint_workers_consume_every_queue_between_them(stub_bin):
    consumed = set()
    for role in ("worker", "generator"):
        result, calls = run_entrypoint(stub_bin, role)
        assert result.returncode == 0, result.stderr
        argv = shlex.split(calls[-1])  # the stub's log keeps every role's call
        assert argv[:4] == ["celery", "-A", "config", "worker"]
        consumed |= set(argv[argv.index("-Q") + 1].split(","))
        if role == "generator":
            # Answers wait on providers: a thread pool streams many at once.
            assert argv[argv.index("-Q") + 1] == "generation" and "threads" in argv
    assert consumed == QUEUES


def test_entrypoint_beat(stub_bin):
    result, calls = run_entrypoint(stub_bin, "beat")
    assert result.returncode == 0, result.stderr
    (call,) = calls
    assert shlex.split(call)[:4] == ["celery", "-A", "config", "beat"]


def test_entrypoint_runs_any_other_command_as_given(stub_bin):
    result, calls = run_entrypoint(stub_bin, "python", "manage.py", "shell")
    assert result.returncode == 0, result.stderr
    assert calls == ["python manage.py shell"]


# ---------------------------------------------------------------- docker-compose


def test_compose_defines_the_stack():
    services = compose()["services"]
    assert {"web", "worker", "generator", "beat", "postgres", "redis"} <= set(services)
    assert services["generator"]["command"] == "generator"
    assert services["web"]["command"] == "web"
    assert services["worker"]["command"] == "worker"
    assert services["beat"]["command"] == "beat"
    assert "8000:8000" in services["web"]["ports"]


def test_compose_app_services_share_image_and_point_at_stack_services():
    services = compose()["services"]
    app = [services[name] for name in ("web", "worker", "generator", "beat")]
    assert all(service["build"] == "." for service in app)
    assert len({service.get("image") for service in app}) == 1
    for service in app:
        env = service["environment"]
        assert {"SECRET_KEY", "PROVIDER_KEY_ENCRYPTION_KEYS", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS"} <= set(env)
        assert "@pgbouncer:6432/" in env["DATABASE_URL"]  # PostgreSQL through PgBouncer
        assert env["REDIS_URL"].startswith("redis://redis:6379")
        # The healthcheck's Host must be accepted by Django.
        assert "127.0.0.1" in env["ALLOWED_HOSTS"]


def test_compose_every_service_has_a_healthcheck():
    services = compose()["services"]
    for name in ("web", "worker", "generator", "beat", "postgres", "pgbouncer", "redis"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "/healthz" in healthcheck_text(services["web"])
    assert "inspect ping" in healthcheck_text(services["worker"])
    assert "pg_isready -U prumo" in healthcheck_text(services["postgres"])
    assert "redis-cli ping" in healthcheck_text(services["redis"])
    assert "pg_isready -h 127.0.0.1 -p 6432" in healthcheck_text(services["pgbouncer"])
    # Worker and beat serve no HTTP: they must not inherit the image's /healthz probe.
    for name in ("worker", "generator", "beat"):
        assert "/healthz" not in healthcheck_text(services[name])


def test_compose_named_volumes_back_postgres_and_redis():
    data = compose()
    declared = set(data["volumes"])
    assert {"pgdata", "redisdata"} <= declared

    def mounts(service: str) -> dict[str, str]:
        return dict(v.split(":")[:2] for v in data["services"][service].get("volumes", []))

    assert mounts("postgres").get("pgdata") == "/var/lib/postgresql/data"
    assert mounts("redis").get("redisdata") == "/data"
    # Uploads are shared by web and worker through a named volume at MEDIA_ROOT.
    for service in ("web", "worker"):
        (media_volume,) = [name for name, target in mounts(service).items() if target == "/app/.data/media"]
        assert media_volume in declared


def test_compose_app_waits_for_healthy_dependencies():
    services = compose()["services"]
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        for dependency in ("pgbouncer", "redis"):
            assert depends[dependency]["condition"] == "service_healthy", f"{name} -> {dependency}"
    assert services["pgbouncer"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_pgbouncer_is_debians_with_the_tested_configuration():
    """The image tests/test_pgbouncer.py stands for: Debian's package, docker/pgbouncer/pgbouncer.ini, not root."""
    import configparser

    services = compose()["services"]
    assert services["pgbouncer"]["build"] == "docker/pgbouncer"
    folder = ROOT / "docker" / "pgbouncer"
    parsed = DockerfileParser(path=str(folder / "Dockerfile")).structure
    steps = [(item["instruction"], item["value"]) for item in parsed if item["instruction"] != "COMMENT"]
    assert steps[0][0] == "FROM" and steps[0][1].startswith("debian:")
    assert any(kind == "RUN" and "apt-get install" in value and " pgbouncer " in value for kind, value in steps)
    assert ("COPY", "pgbouncer.ini /etc/pgbouncer/pgbouncer.ini") in steps
    assert [value for kind, value in steps if kind == "USER"][-1] == "postgres"  # PgBouncer refuses to run as root
    config = configparser.ConfigParser(interpolation=None)
    config.read(folder / "pgbouncer.ini")
    assert config["databases"]["prumo"] == "host=postgres port=5432 dbname=prumo"
    assert config["pgbouncer"]["listen_port"] == "6432"
    # Session pooling (tests/test_pgbouncer.py shows why) within PostgreSQL's default max_connections of 100.
    assert config["pgbouncer"]["pool_mode"] == "session"
    assert config["pgbouncer"]["server_reset_query"] == "DISCARD ALL"
    assert int(config["pgbouncer"]["max_db_connections"]) <= 90
    # The user list is written at start from the environment, with the PostgreSQL password compose gives both.
    start = (folder / "start.sh").read_text()
    assert "set -eu" in start and config["pgbouncer"]["auth_file"] in start and start.rstrip().endswith(
        "exec pgbouncer /etc/pgbouncer/pgbouncer.ini")
    assert (folder / "start.sh").stat().st_mode & 0o111
    env = services["pgbouncer"]["environment"]
    assert env["PGBOUNCER_PASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert env["PGBOUNCER_USER"] == services["postgres"]["environment"]["POSTGRES_USER"]


def test_the_generator_drains_its_answers_before_compose_kills_it(settings):
    """A warm shutdown waits GENERATION_DRAIN_SECONDS for the answers streaming on the worker's loop
    (chat.generation.answers_drain): compose's grace period before SIGKILL must be longer."""
    grace = compose()["services"]["generator"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > settings.GENERATION_DRAIN_SECONDS


# ---------------------------------------------------------------- docker-compose: the observability profile


def compose_services() -> dict:
    return compose()["services"]


def bind_mounts(service: dict) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        found[target] = source
    return found


def test_only_the_observability_profile_starts_prometheus_and_grafana():
    services = compose_services()
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert profiled == {"prometheus", "grafana"}
    for name in profiled:
        assert services[name]["profiles"] == ["observability"]
        _image, _, version = services[name]["image"].partition(":")
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", version), f"{name}: image not pinned to a version"
        assert services[name]["healthcheck"]["test"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_prometheus_and_grafana_mount_the_documented_files():
    services = compose_services()
    prometheus, grafana = bind_mounts(services["prometheus"]), bind_mounts(services["grafana"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == "./docs/observability/prometheus.yml"
    assert prometheus["/etc/prometheus/alerts.yml"] == "./docs/observability/alerts.yml"  # rule_files: alerts.yml
    for source in [*prometheus.values(), *grafana.values()]:
        assert not source.startswith("./") or (ROOT / source).is_file(), source
    # Grafana: the data source at the prometheus service, the dashboard where the provider looks.
    datasources = yaml.safe_load((ROOT / grafana["/etc/grafana/provisioning/datasources/prumo.yml"]).read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090" and source["isDefault"]
    assert "9090:9090" in services["prometheus"]["ports"]
    providers = yaml.safe_load((ROOT / grafana["/etc/grafana/provisioning/dashboards/prumo.yml"]).read_text())
    (provider,) = providers["providers"]
    folder = provider["options"]["path"]
    dashboards = [source for target, source in grafana.items() if target.startswith(f"{folder}/")]
    assert dashboards == ["./docs/observability/grafana-dashboard.json"]


def run_prometheus_start(tmp_path: Path, token: str) -> subprocess.CompletedProcess:
    """The prometheus service's start command as its shell runs it (compose's `$$` is `$`), with a stand-in for
    /bin/prometheus that records its arguments, and the token file in tmp_path."""
    command = compose_services()["prometheus"]["command"][0].replace("$$", "$")
    stub = tmp_path / "prometheus"
    stub.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\n')
    stub.chmod(0o755)
    command = command.replace("/tmp/metrics_token", str(tmp_path / "token")).replace("/bin/prometheus", str(stub))
    return subprocess.run(["/bin/sh", "-c", command], env={"METRICS_TOKEN": token, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)


def test_prometheus_starts_only_with_the_token_the_app_checks(tmp_path):
    services = compose_services()
    assert services["prometheus"]["entrypoint"] == ["/bin/sh", "-c"]
    # One variable for both sides.
    assert services["prometheus"]["environment"]["METRICS_TOKEN"] == "${METRICS_TOKEN:-}"
    for name in ("web", "worker", "generator"):
        assert services[name]["environment"]["METRICS_TOKEN"] == "${METRICS_TOKEN:-}"

    missing = run_prometheus_start(tmp_path, "")
    assert missing.returncode == 1 and "set METRICS_TOKEN" in missing.stderr
    assert not (tmp_path / "args").exists()

    started = run_prometheus_start(tmp_path, "s3cret-token")
    assert started.returncode == 0, started.stderr
    assert (tmp_path / "token").read_text() == "s3cret-token"  # no newline: it is the whole credential
    assert (tmp_path / "args").read_text().split() == ["--config.file=/etc/prometheus/prometheus.yml",
                                                       "--storage.tsdb.path=/prometheus"]


def test_every_app_container_writes_its_samples_to_a_tmpfs_of_its_own():
    services = compose_services()
    for name in ("web", "worker", "generator", "beat"):
        directory = services[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        assert [mount.split(":")[0] for mount in services[name]["tmpfs"]] == [directory], name
    # Worker containers serve their own samples (they are not the web server's processes).
    assert services["worker"]["environment"]["METRICS_WORKER_PORT"] == "9808"
    assert services["generator"]["environment"]["METRICS_WORKER_PORT"] == "9808"
    assert "METRICS_WORKER_PORT" not in services["web"]["environment"]


def test_dockerfile_sets_the_multiprocess_directory_after_the_root_build_steps():
    """Set before collectstatic (run as root) it would leave a root-owned directory the app user cannot write."""
    final = dockerfile_stages()[-1]
    order = [item["instruction"] for item in final]
    (env,) = [index for index, item in enumerate(final)
              if item["instruction"] == "ENV" and "PROMETHEUS_MULTIPROC_DIR=" in item["value"]]
    assert env > max(index for index, name in enumerate(order) if name == "RUN")
    assert env > order.index("USER")
    directory = final[env]["value"].split("PROMETHEUS_MULTIPROC_DIR=")[1].split()[0]
    assert directory == compose()["services"]["web"]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
