from __future__ import annotations

from dataclasses import dataclass

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings
from django.utils import translation


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
