"""Receivers for other apps' signals: they call a service and hold no logic of their own."""

from __future__ import annotations

from allauth.account import signals as account_signals
from allauth.mfa import signals as mfa_signals
from django.contrib.auth.signals import user_login_failed
from django.dispatch import receiver

from accounts.mfa import MFA_FACTOR_TYPES
from accounts.signals import user_deactivated

from .api_keys import api_keys_revoke_held_by
from .audit.records import login_failed_record, user_event_record
from .audit.services import Actor


@receiver(user_deactivated)
def api_keys_revoke_on_deactivation(sender, user, **kwargs) -> None:
    api_keys_revoke_held_by(user=user, actor=Actor.system("account deactivated"), reason="user.deactivated")


# A person's sign-ins and security changes, in the log of every organization they belong to.


@receiver(account_signals.user_logged_in, dispatch_uid="audit_user_login")
def audit_user_login(sender, request, user, **kwargs) -> None:
    user_event_record(user=user, action="user.login", request=request)


@receiver(user_login_failed, dispatch_uid="audit_user_login_failed")
def audit_user_login_failed(sender, credentials, request=None, **kwargs) -> None:
    # Django has already masked the password in `credentials`; only the address is read.
    login_failed_record(email=credentials.get("email") or credentials.get("username") or "", request=request)


@receiver(mfa_signals.authentication_failed, dispatch_uid="audit_mfa_failed")
def audit_mfa_failed(sender, request, user, **kwargs) -> None:
    user_event_record(user=user, action="user.login_failed", request=request, after={"reason": "second_factor"})


@receiver(mfa_signals.authenticator_added, dispatch_uid="audit_mfa_added")
def audit_mfa_added(sender, request, user, authenticator, **kwargs) -> None:
    if authenticator.type in MFA_FACTOR_TYPES:
        user_event_record(user=user, action="user.mfa_enabled", request=request, after={"type": authenticator.type})


@receiver(mfa_signals.authenticator_removed, dispatch_uid="audit_mfa_removed")
def audit_mfa_removed(sender, request, user, authenticator, **kwargs) -> None:
    if authenticator.type in MFA_FACTOR_TYPES:
        user_event_record(user=user, action="user.mfa_disabled", request=request, after={"type": authenticator.type})


@receiver(account_signals.password_changed, dispatch_uid="audit_password_changed")
@receiver(account_signals.password_set, dispatch_uid="audit_password_set")
def audit_password_changed(sender, request, user, **kwargs) -> None:
    user_event_record(user=user, action="user.password_changed", request=request)


@receiver(account_signals.password_reset, dispatch_uid="audit_password_reset")
def audit_password_reset(sender, request, user, **kwargs) -> None:
    user_event_record(user=user, action="user.password_reset", request=request)
