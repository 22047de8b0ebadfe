"""Fixtures for end-to-end tests under tests/: a live server process and a Celery worker.

See tests/servers.py: both subprocesses see only committed data in the test database.
"""

from __future__ import annotations

import os

import pytest
import stripe

from .fake_stripe import FakeStripe
from .servers import CeleryWorker, LiveServer, database_url, start_celery_worker, start_live_server

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOG_TAIL_LINES = 150


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Expose each phase's report on the item (`item.rep_call`); attach server logs to failures."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    if report.failed:
        for name in ("live_server_process", "celery_worker_process"):
            running = getattr(item, "funcargs", {}).get(name)
            if running is not None:
                tail = "\n".join(running.process.log().splitlines()[-LOG_TAIL_LINES:])
                report.sections.append((f"{running.process.name} log (last {LOG_TAIL_LINES} lines)", tail))
    return report


def _print_uncaptured(request, process) -> None:
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        process.print_log()
        return
    with capture.global_and_fixture_disabled():
        process.print_log()


@pytest.fixture(scope="session")
def test_database_url(django_db_setup, django_db_blocker) -> str:
    """DATABASE_URL of the test database pytest-django set up (never the development one)."""
    from django.db import connection

    with django_db_blocker.unblock():
        assert connection.settings_dict["NAME"].startswith("test_"), "refusing to run servers on a non-test database"
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_database()")
            (current,) = cursor.fetchone()
        assert current == connection.settings_dict["NAME"], (current, connection.settings_dict["NAME"])
        return database_url(connection.settings_dict)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


@pytest.fixture(scope="session")
def live_server_process(request, test_database_url, redis_url, tmp_path_factory) -> LiveServer:
    """The production-style web server (gunicorn + uvicorn worker) on a free 127.0.0.1 port.

    `.url` is its base URL, `.outbox()` the emails it sent (filebased backend), oldest first.
    """
    workdir = tmp_path_factory.mktemp("live-server")
    server = start_live_server(database_url=test_database_url, redis_url=redis_url, workdir=workdir)
    yield server
    server.process.stop()
    if request.session.testsfailed:
        _print_uncaptured(request, server.process)


@pytest.fixture(scope="session")
def celery_worker_process(request, live_server_process, test_database_url, redis_url,
                          tmp_path_factory) -> CeleryWorker:
    """A Celery worker (solo pool) on every queue, mailing into the live server's outbox."""
    workdir = tmp_path_factory.mktemp("celery-worker")
    worker = start_celery_worker(
        database_url=test_database_url, redis_url=redis_url, workdir=workdir,
        email_dir=live_server_process.email_dir, site_url=live_server_process.url,
    )
    yield worker
    worker.process.stop()
    if request.session.testsfailed:
        _print_uncaptured(request, worker.process)


@pytest.fixture
def fake():
    """A local fake Stripe API; the official SDK (and dj-stripe) talk to it for the test."""
    server = FakeStripe().start()
    previous, stripe.api_base = stripe.api_base, server.url
    yield server
    stripe.api_base = previous
    server.stop()
    assert server.unrecognized() == [], "the fake Stripe lacks endpoints our code or dj-stripe called"


# ---------------------------------------------------------------- checks


@pytest.fixture
def registries(settings):
    """The fake CNPJ registries, every client pointed at them, no rate limits, short timeouts, and a
    Redis namespace of the test's own (cache, limits, breakers), dropped afterwards."""
    import uuid

    from core.redis_clients import redis_client

    from .fake_registries import PROVIDERS, FakeRegistries

    settings.CHECKS_REDIS_PREFIX = prefix = f"checks-test-{uuid.uuid4().hex[:12]}"
    settings.CHECKS_RATE_LIMITS = dict.fromkeys(PROVIDERS, "")
    settings.CHECKS_CONNECT_TIMEOUT = settings.CHECKS_READ_TIMEOUT = 0.5
    with FakeRegistries() as server:
        for name, value in server.settings().items():
            setattr(settings, name, value)
        yield server
    keys = list(redis_client().scan_iter(match=f"{prefix}*", count=500))
    if keys:
        redis_client().delete(*keys)


@pytest.fixture
def funded(org_a, org_b):
    """Organizations A and B on Starter (200 checks a month) with 500 credits, in the test's transaction."""
    from decimal import Decimal

    from billing.models import BillingAccount, Plan

    starter = Plan.objects.get(code="starter")
    for org in (org_a, org_b):
        BillingAccount.objects.filter(pk=org.pk).update(plan=starter, credits=Decimal("500"))
    return org_a, org_b


@pytest.fixture(autouse=True)
def chat_sends_uncounted():
    """Each test starts with no chat sends counted: the plan's per-member limit is a minute, tests send faster."""
    from core.redis_clients import redis_client

    keys = list(redis_client().scan_iter(match="rl:send:*", count=500))
    if keys:
        redis_client().delete(*keys)


@pytest.fixture(autouse=True)
def org_snapshots_fresh():
    """Each test starts with no per-process organization snapshot (chat.snapshot): a row a test changes
    without signals (`QuerySet.update`) must not reach the next test through this process's cache."""
    from chat.snapshot import org_config_forget

    org_config_forget()


@pytest.fixture(autouse=True)
def default_language():
    """Each test starts in the default language: a test client's request leaves its language (say pt-BR, from
    tests/test_i18n.py) active in this thread, and text rendered outside a request would come out translated."""
    from django.utils import translation

    translation.deactivate()
