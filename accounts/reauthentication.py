"""Recent re-authentication (allauth's reauthenticate flow) for actions that mint secrets."""

from __future__ import annotations

from allauth.account.adapter import get_adapter
from allauth.account.decorators import reauthentication_required
from allauth.core.exceptions import ReauthenticationRequired
from django.http import HttpRequest
from django.urls import reverse


@reauthentication_required
def _confirmed(request: HttpRequest) -> None:
    return None


def recently_reauthenticated(request: HttpRequest) -> bool:
    """Whether the signed-in user confirmed who they are (password or second factor) within
    ACCOUNT_REAUTHENTICATION_TIMEOUT; allauth's own decorator decides, so its rules apply."""
    try:
        _confirmed(request)
    except ReauthenticationRequired:
        return False
    return True


def reauthentication_url(request: HttpRequest) -> str:
    """Where the user confirms who they are: allauth's first method for them (password, or a second
    factor), as its middleware would choose."""
    methods = get_adapter().get_reauthentication_methods(request.user)
    return methods[0]["url"] if methods else reverse("account_login")
