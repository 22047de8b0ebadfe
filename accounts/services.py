from __future__ import annotations

from .models import User


def user_profile_update(*, user: User, name: str | None = None, language: str | None = None) -> User:
    fields = []
    if name is not None:
        user.name = name
        fields.append("name")
    if language is not None:
        user.language = language
        fields.append("language")
    if fields:
        user.save(update_fields=fields)
    return user
