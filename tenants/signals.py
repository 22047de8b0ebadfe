"""Receivers for other apps' signals: they call a service and hold no logic of their own."""

from __future__ import annotations

from django.dispatch import receiver

from accounts.signals import user_deactivated

from .api_keys import api_keys_revoke_held_by
from .audit.services import Actor


@receiver(user_deactivated)
def api_keys_revoke_on_deactivation(sender, user, **kwargs) -> None:
    api_keys_revoke_held_by(user=user, actor=Actor.system("account deactivated"), reason="user.deactivated")
