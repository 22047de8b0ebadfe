"""Driving allauth's real MFA pages with the test client: people, TOTP codes, enrolment, sign-in."""

from __future__ import annotations

import time
import uuid

from allauth.account.models import EmailAddress
from allauth.mfa import app_settings
from allauth.mfa.totp.internal.auth import SECRET_SESSION_KEY, format_hotp_value, hotp_value
from django.test import Client

from accounts.models import User

PASSWORD = "correct-horse-battery"

ENROL_URL = "/accounts/2fa/totp/activate/"


def person(label: str = "person", *, staff: bool = False, verified: bool = True) -> User:
    """A new account (a fresh email per call) with a password and a verified email unless told otherwise."""
    email = f"{label}-{uuid.uuid4().hex[:10]}@example.com"
    user = User.objects.create_user(email=email, password=PASSWORD, is_staff=staff, is_superuser=staff)
    EmailAddress.objects.create(user=user, email=email, verified=verified, primary=True)
    return user


def totp_now(secret: str) -> str:
    """The code an authenticator app shows right now for `secret` (allauth's own HOTP arithmetic)."""
    return format_hotp_value(hotp_value(secret, int(time.time()) // app_settings.TOTP_PERIOD))


def password_login(client: Client, user: User, next_url: str | None = None):
    data = {"login": user.email, "password": PASSWORD}
    url = f"/accounts/login/?next={next_url}" if next_url else "/accounts/login/"
    return client.post(url, data)


def reauthenticate(client: Client) -> None:
    """allauth asks for the password again before a sensitive change such as adding a factor."""
    response = client.post("/accounts/reauthenticate/", {"password": PASSWORD})
    assert response.status_code == 302, response.content.decode()[:2000]


def totp_enrol(client: Client) -> str:
    """Activate TOTP on the signed-in client's account through allauth's page; the secret it showed."""
    page = client.get("/accounts/2fa/totp/activate/")
    if page.status_code == 302 and page["Location"].startswith("/accounts/reauthenticate/"):
        reauthenticate(client)
        page = client.get("/accounts/2fa/totp/activate/")
    assert page.status_code == 200, page.status_code
    secret = client.session[SECRET_SESSION_KEY]
    assert secret in page.content.decode()  # shown for manual entry, beside the QR code
    done = client.post("/accounts/2fa/totp/activate/", {"code": totp_now(secret)})
    assert done.status_code == 302, done.content.decode()[:2000]
    return secret


def signed_in(client: Client) -> bool:
    return client.get("/accounts/profile/").status_code == 200
