"""Health, readiness, request ids in responses and logs, production settings, admin."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from core.observability import RequestContextFilter
from tenants.models import Membership

from .servers import production_secrets

BASE_DIR = Path(__file__).resolve().parent.parent


def test_healthz_answers_without_touching_the_database():
    # No db fixture: a database query here would fail the test.
    response = Client(HTTP_HOST="unknown-host.example").get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_database_and_redis():
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_readyz_names_the_failing_part(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["redis"] and body["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_request_id_is_accepted_returned_or_generated():
    client = Client()
    assert client.get("/", HTTP_X_REQUEST_ID="abc-123").headers["X-Request-ID"] == "abc-123"
    generated = client.get("/").headers["X-Request-ID"]
    assert len(generated) == 32
    hostile = client.get("/", HTTP_X_REQUEST_ID="bad id\nforged: log").headers["X-Request-ID"]
    assert "\n" not in hostile and hostile != "bad id\nforged: log"


@pytest.mark.django_db
def test_log_lines_carry_request_id_organization_and_user_as_json(client_for, org_a, tenant_world):
    from pythonjsonlogger.json import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(
        JsonFormatter("%(levelname)s %(name)s %(message)s %(request_id)s %(organization)s %(user_id)s")
    )
    logger = logging.getLogger("tenants")
    logger.addHandler(handler)
    try:
        target = Membership.objects.get(organization=org_a, user=tenant_world["a"]["viewer"])
        client_for("a", "owner").post(
            f"/o/{org_a.slug}/settings/members/{target.pk}/role/", {"role": "member"}, HTTP_X_REQUEST_ID="req-42"
        )
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    audit = [line for line in lines if line["message"].startswith("audit membership.role_changed")]
    assert audit, lines
    assert audit[0]["request_id"] == "req-42"
    assert audit[0]["organization"] == org_a.slug
    assert audit[0]["user_id"] == str(tenant_world["a"]["owner"].pk)


def _manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("missing", ["SECRET_KEY", "DATABASE_URL"])
def test_production_settings_refuse_to_start_without_secret_and_database(missing):
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.prod",
        **production_secrets(),
        "DATABASE_URL": "postgresql://u@db.internal/prumo",
    }
    env.pop(missing)
    result = _manage(["check"], env)
    assert result.returncode != 0
    assert f"{missing} must be set in production" in result.stderr


def test_check_deploy_passes_under_production_settings():
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.prod",
        **production_secrets(),
        "DATABASE_URL": "postgresql://u@db.internal/prumo",
        "ALLOWED_HOSTS": "prumo.example.com",
    }
    result = _manage(["check", "--deploy", "--fail-level", "WARNING"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_refused_in_production(settings):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from accounts.models import User
    from tenants.models import Organization

    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo", stdout=io.StringIO())
    demo = Organization.objects.get(slug="demo")
    owner = User.objects.get(email="demo@example.com")
    assert owner.check_password("prumo-demo")
    assert Membership.objects.get(organization=demo, user=owner).role == "owner"
    assert Organization.objects.filter(slug="demo").count() == 1
    settings.DEMO_SEED_ALLOWED = False
    with pytest.raises(CommandError):
        call_command("seed_demo", stdout=io.StringIO())


@pytest.mark.django_db
def test_staff_admin_lists_and_searches_tenancy_models(admin_client, org_a):
    for url in (
        "/admin/tenants/organization/",
        "/admin/tenants/membership/",
        "/admin/tenants/domain/",
        "/admin/accounts/user/",
        "/admin/tenants/invitation/",
    ):
        assert admin_client.get(url).status_code == 200, url
    found = admin_client.get("/admin/tenants/organization/", {"q": "owner-a@example.com"})
    assert org_a.name in found.content.decode()
    filtered = admin_client.get("/admin/tenants/membership/", {"role__exact": "viewer"})
    assert "viewer-a@example.com" in filtered.content.decode()
    assert "owner-a@example.com" not in filtered.content.decode()


@pytest.mark.django_db
def test_pages_send_a_strict_content_security_policy():
    response = Client().get("/")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "<script>" not in response.content.decode()  # no inline scripts to allow
