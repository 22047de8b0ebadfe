from __future__ import annotations

from dataclasses import dataclass

from allauth.account.adapter import DefaultAccountAdapter
from allauth.mfa.adapter import DefaultMFAAdapter
from cryptography.fernet import MultiFernet
from django.conf import settings
from django.utils import translation

from core.fernet import fernet_for


@dataclass(frozen=True)
class Site:
    """What allauth's emails print as the site (we do not install django.contrib.sites)."""

    name: str
    domain: str


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request, user, form, commit=True):
        # A new account speaks the language it signed up in.
        user.language = translation.get_language() or user.language
        return super().save_user(request, user, form, commit=commit)

    def send_mail(self, template_prefix: str, email: str, context: dict) -> None:
        request = context.get("request")
        domain = request.get_host() if request is not None else settings.SITE_URL.split("://", 1)[-1]
        context = {"current_site": Site(name=settings.SITE_NAME, domain=domain), **context}
        super().send_mail(template_prefix, email, context)


def mfa_fernet() -> MultiFernet:
    return fernet_for("mfa-secrets", settings.MFA_ENCRYPTION_KEYS)


class MFAAdapter(DefaultMFAAdapter):
    """TOTP secrets and recovery-code seeds are stored as Fernet tokens (allauth.mfa's `encrypt` hook).

    `MFA_ENCRYPTION_KEYS` lists Fernet keys, newest first: new values are encrypted with the
    first, any listed key decrypts. Without keys, development and tests derive one from
    SECRET_KEY; production settings refuse to load without them.
    """

    def encrypt(self, text: str) -> str:
        return mfa_fernet().encrypt(text.encode()).decode()

    def decrypt(self, encrypted_text: str) -> str:
        return mfa_fernet().decrypt(encrypted_text.encode()).decode()
