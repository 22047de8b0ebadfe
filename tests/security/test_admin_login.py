"""The Django admin signs staff in through allauth (`secure_admin_login`), with its MFA and checks.

Django's own admin form would skip MFA, allauth's rate limits and email verification; with
`ADMIN_REQUIRE_MFA` on, staff without a second factor are sent to enrol before the admin opens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from cryptography.fernet import Fernet
from django.test import Client

from tests.servers import production_secrets

from .totp import ENROL_URL, PASSWORD, password_login, person, signed_in, totp_enrol, totp_now

pytestmark = pytest.mark.django_db

def test_admin_login_hands_over_to_allauth_and_its_form_signs_nobody_in():
    staff = person("staff", staff=True)
    client = Client()
    page = client.get("/admin/login/?next=/admin/")
    assert page.status_code == 302 and page["Location"] == "/accounts/login/?next=%2Fadmin%2F"
    # Django's own form (no MFA, no allauth rate limit) no longer accepts a password.
    posted = client.post("/admin/login/?next=/admin/", {"username": staff.email, "password": PASSWORD})
    assert posted.status_code == 302 and posted["Location"].startswith("/accounts/login/")
    assert not signed_in(client)
    assert client.get("/admin/")["Location"].startswith("/admin/login/")


def test_staff_with_totp_sign_in_to_the_admin_with_a_code():
    staff = person("staff", staff=True)
    secret = generate_totp_secret()
    TOTP.activate(staff, secret)
    client = Client()
    to_login = client.get("/admin/login/?next=/admin/")["Location"]
    first_step = client.post(to_login, {"login": staff.email, "password": PASSWORD})
    assert first_step.status_code == 302 and first_step["Location"] == "/accounts/2fa/authenticate/"
    assert client.get("/admin/").status_code == 302  # not in on the password alone
    done = client.post("/accounts/2fa/authenticate/", {"code": totp_now(secret)})
    assert done.status_code == 302 and done["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_admin_require_mfa_sends_staff_without_a_factor_to_enrol(settings):
    staff = person("staff", staff=True)
    client = Client()
    assert password_login(client, staff, next_url="/admin/")["Location"] == "/admin/"
    settings.ADMIN_REQUIRE_MFA = False
    assert client.get("/admin/").status_code == 200  # the setting is what refuses

    settings.ADMIN_REQUIRE_MFA = True
    for path in ("/admin/", "/admin/accounts/user/", "/admin/login/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"] == ENROL_URL, path
    followed = client.get("/admin/", follow=True)
    assert "The admin requires two-factor authentication" in followed.content.decode()
    # Pages outside the admin are not affected.
    assert client.get("/accounts/profile/").status_code == 200

    totp_enrol(client)
    assert client.get("/admin/").status_code == 200


def test_staff_with_an_unverified_email_cannot_reach_the_admin():
    staff = person("staff", staff=True, verified=False)
    client = Client()
    response = client.post(client.get("/admin/login/?next=/admin/")["Location"],
                           {"login": staff.email, "password": PASSWORD})
    # allauth's mandatory verification: a code is sent and nobody is signed in until it is entered.
    assert response.status_code == 302 and response["Location"].startswith("/accounts/confirm-email/")
    assert not signed_in(client)
    assert client.get("/admin/")["Location"].startswith("/admin/login/")


def test_signed_in_non_staff_are_refused_by_the_admin_login():
    user = person()
    client = Client()
    password_login(client, user)
    assert client.get("/admin/login/").status_code == 403
    assert client.get("/admin/", follow=True).status_code == 403


def test_failed_admin_sign_ins_hit_allauths_rate_limit(settings):
    import uuid

    settings.ACCOUNT_RATE_LIMITS = {"login_failed": "3/m/ip"}
    staff = person("staff", staff=True)
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"  # a fresh counter
    client = Client(REMOTE_ADDR=ip)
    login_url = client.get("/admin/login/?next=/admin/")["Location"]
    for _ in range(3):
        assert client.post(login_url, {"login": staff.email, "password": "wrong"}).status_code == 200
    blocked = client.post(login_url, {"login": staff.email, "password": PASSWORD})
    assert blocked.status_code == 200 and "Too many failed login attempts" in blocked.content.decode()
    assert client.get("/admin/").status_code == 302


def _production_check(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in {"MFA_ENCRYPTION_KEYS", "ADMIN_REQUIRE_MFA"}}
    base.update(production_secrets(), DJANGO_SETTINGS_MODULE="config.settings.prod",
                DATABASE_URL="postgresql://u@db.internal/prumo", ALLOWED_HOSTS="prumo.example.com")
    base.pop("MFA_ENCRYPTION_KEYS")
    code = "from django.conf import settings; print('ADMIN_REQUIRE_MFA', settings.ADMIN_REQUIRE_MFA)"
    return subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=Path(__file__).resolve().parents[2],
                          env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_production_requires_mfa_for_the_admin_and_keys_for_totp_secrets():
    refused = _production_check()
    assert refused.returncode != 0 and "MFA_ENCRYPTION_KEYS must be set in production" in refused.stderr
    started = _production_check(MFA_ENCRYPTION_KEYS=Fernet.generate_key().decode())
    assert started.returncode == 0, started.stderr
    assert "ADMIN_REQUIRE_MFA True" in started.stdout
