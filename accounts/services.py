from __future__ import annotations

from allauth.mfa.models import Authenticator
from django.db import transaction

from .adapters import mfa_fernet
from .models import User


def user_profile_update(*, user: User, name: str | None = None, language: str | None = None,
                        theme: str | None = None) -> User:
    fields = []
    if name is not None:
        user.name = name
        fields.append("name")
    if language is not None:
        user.language = language
        fields.append("language")
    if theme is not None:
        user.theme = theme
        fields.append("theme")
    if fields:
        user.save(update_fields=fields)
    return user


@transaction.atomic
def mfa_secrets_rotate() -> int:
    """Re-encrypt every TOTP secret and recovery-code seed with the first of MFA_ENCRYPTION_KEYS."""
    fernet = mfa_fernet()
    rotated = 0
    for authenticator in Authenticator.objects.select_for_update().filter(
            type__in=[Authenticator.Type.TOTP, Authenticator.Type.RECOVERY_CODES]):
        data = authenticator.data
        for name in ("secret", "seed"):
            if isinstance(data.get(name), str):
                data[name] = fernet.rotate(data[name].encode()).decode()
        if isinstance(data.get("migrated_codes"), list):
            data["migrated_codes"] = [fernet.rotate(code.encode()).decode() for code in data["migrated_codes"]]
        authenticator.save(update_fields=["data"])
        rotated += 1
    return rotated
