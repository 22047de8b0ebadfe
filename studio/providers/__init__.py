"""Studio providers behind one interface (`StudioProvider.run`), each speaking its real wire protocol over httpx.

Platform keys and base URLs are chat's (settings.LLM_PROVIDERS) for the providers both use; an organization's own
key (chat.catalog.ProviderKey, encrypted) is used instead when it has one.
"""

from __future__ import annotations

from django.utils.module_loading import import_string

from .base import Artifact, StudioError, StudioProvider, StudioRequest, StudioResult

ADAPTERS = {"openai": "studio.providers.openai.OpenAIStudio"}

__all__ = ["Artifact", "StudioError", "StudioProvider", "StudioRequest", "StudioResult", "provider_for"]


def provider_for(provider: str) -> StudioProvider:
    return import_string(ADAPTERS[provider])()
