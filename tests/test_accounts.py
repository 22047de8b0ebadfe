"""Accounts through allauth: signup with mandatory verification, login by code, reset, profile."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from accounts.models import User

pytestmark = pytest.mark.django_db

PASSWORD = "a-Long-unusual-passphrase-42"


def _code(message) -> str:
    match = re.search(r"^\s*([A-Z0-9]{4}-[A-Z0-9]{4})\s*$", message.body, re.MULTILINE)
    assert match, message.body
    return match.group(1)


def test_signup_requires_the_emailed_code_then_signs_in():
    client = Client()
    response = client.post("/accounts/signup/", {"email": "Fresh@Example.com", "password1": PASSWORD,
                                                 "password2": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    user = User.objects.get(email="fresh@example.com")
    assert user.check_password(PASSWORD)
    # Not signed in until the email is verified.
    assert client.get("/orgs/").status_code == 302
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["fresh@example.com"]

    wrong = client.post("/accounts/confirm-email/", {"code": "ZZZZZZ"})
    assert wrong.status_code == 200 and "Incorrect code" in wrong.content.decode()
    done = client.post("/accounts/confirm-email/", {"code": _code(mail.outbox[0])})
    assert done.status_code == 302
    # Signed in, with no organization yet: the first step is creating one.
    first_step = client.get("/orgs/")
    assert first_step.status_code == 302 and first_step["Location"] == "/orgs/new/"
    assert client.get("/orgs/new/").status_code == 200
    assert user.emailaddress_set.get().verified


def test_signup_rejects_a_weak_password_with_a_form_error():
    response = Client().post("/accounts/signup/", {"email": "weak@example.com", "password1": "123",
                                                   "password2": "123"})
    assert response.status_code == 200
    assert "too short" in response.content.decode()
    assert not User.objects.filter(email="weak@example.com").exists()


def test_password_login_and_logout(tenant_world):
    client = Client()
    bad = client.post("/accounts/login/", {"login": "owner-a@example.com", "password": "nope"})
    assert bad.status_code == 200 and "not correct" in bad.content.decode()
    good = client.post("/accounts/login/", {"login": "owner-a@example.com", "password": "correct-horse-battery"})
    assert good.status_code == 302 and good["Location"] == "/orgs/"
    assert client.get("/orgs/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/orgs/").status_code == 302


def test_login_by_emailed_code(tenant_world):
    client = Client()
    response = client.post("/accounts/login/code/", {"email": "member-a@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    confirmed = client.post("/accounts/login/code/confirm/", {"code": _code(mail.outbox[0])})
    assert confirmed.status_code == 302
    assert client.get("/orgs/").status_code == 200


def test_password_reset_by_email_link(tenant_world):
    client = Client()
    client.post("/accounts/password/reset/", {"email": "viewer-a@example.com"})
    assert len(mail.outbox) == 1
    link = re.search(r"(/accounts/password/reset/key/\S+/)", mail.outbox[0].body).group(1)
    form = client.get(link, follow=True)
    action = form.redirect_chain[-1][0] if form.redirect_chain else link
    done = client.post(action, {"password1": "Brand-new-secret-77", "password2": "Brand-new-secret-77"})
    assert done.status_code == 302
    assert User.objects.get(email="viewer-a@example.com").check_password("Brand-new-secret-77")


def test_profile_updates_name_and_language(client_for):
    client = client_for("b", "viewer")
    response = client.post("/accounts/profile/", {"name": "Ana Souza", "language": "pt-br"})
    assert response.status_code == 302
    user = User.objects.get(email="viewer-b@example.com")
    assert (user.name, user.language) == ("Ana Souza", "pt-br")
    page = client.get("/accounts/profile/")
    assert '<html lang="pt-br" ' in page.content.decode()
    assert "Perfil" in page.content.decode()


def test_profile_requires_sign_in():
    response = Client().get("/accounts/profile/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_language_switch_is_remembered_for_signed_in_users(client_for):
    client = client_for("b", "member")
    response = client.post("/i18n/setlang/", {"language": "pt-br", "next": "/orgs/"})
    assert response.status_code == 302 and response["Location"] == "/orgs/"
    assert User.objects.get(email="member-b@example.com").language == "pt-br"
    assert "Suas organizações" in client.get("/orgs/").content.decode()
    offsite = client.post("/i18n/setlang/", {"language": "en", "next": "https://evil.example/"})
    assert offsite["Location"] == "/"


def test_email_is_unique_case_insensitively(tenant_world):
    response = Client().post("/accounts/signup/", {"email": "OWNER-A@example.com", "password1": PASSWORD,
                                                   "password2": PASSWORD})
    # allauth does not reveal that the address exists: it behaves as a signup, sends no second account.
    assert User.objects.filter(email__iexact="owner-a@example.com").count() == 1
    assert response.status_code in (200, 302)


def test_failed_logins_are_rate_limited_per_client(tenant_world, settings):
    import uuid

    settings.ACCOUNT_RATE_LIMITS = {"login_failed": "3/m/ip"}
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"  # fresh counter
    client = Client(REMOTE_ADDR=ip)
    for _ in range(3):
        page = client.post("/accounts/login/", {"login": "owner-a@example.com", "password": "wrong"})
        assert "Too many failed login attempts" not in page.content.decode()
    blocked = client.post("/accounts/login/", {"login": "owner-a@example.com", "password": "correct-horse-battery"})
    # Even the right password is refused until the window passes; the form says why.
    assert blocked.status_code == 200
    assert "Too many failed login attempts" in blocked.content.decode()
    other_client = Client(REMOTE_ADDR="192.0.2.1" if ip != "192.0.2.1" else "192.0.2.2")
    assert other_client.post("/accounts/login/", {"login": "owner-a@example.com",
                                                  "password": "correct-horse-battery"}).status_code == 302
