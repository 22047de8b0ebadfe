"""Writes for the catalog: the seed of real models and prices, organizations' provider keys."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from django.db import transaction
from django.utils.translation import gettext as _

from accounts.models import User
from billing.models import Price
from chat.providers.base import key_is_printable_ascii
from tenants.audit.services import Actor, audit_record
from tenants.models import Organization

from .crypto import key_encrypt, key_rotate
from .models import Model, ModelAlias, Provider, ProviderKey

PRICES_FROM = datetime(2026, 1, 1, tzinfo=UTC)

# (id, display name, tier, context window, max output, vision, tools, input, output per million tokens
#  in credits (100 credits = US$ 1, the providers' list prices), aliases, fallbacks)
CATALOG_SEEDS: list[tuple] = [
    ("openai/gpt-5", "GPT-5", "premium", 400_000, 128_000, True, True, "125", "1000", ["gpt-5"],
     ["anthropic/claude-sonnet-4-5", "gemini/gemini-2.5-pro"]),
    ("openai/gpt-5-mini", "GPT-5 mini", "standard", 400_000, 128_000, True, True, "25", "200", ["gpt-5-mini"],
     ["gemini/gemini-2.5-flash"]),
    ("openai/gpt-4.1", "GPT-4.1", "standard", 1_047_576, 32_768, True, True, "200", "800", ["gpt-4.1"],
     ["anthropic/claude-sonnet-4-5"]),
    ("openai/gpt-4.1-mini", "GPT-4.1 mini", "basic", 1_047_576, 32_768, True, True, "40", "160",
     ["gpt-4.1-mini"], ["gemini/gemini-2.5-flash-lite", "anthropic/claude-haiku-4-5"]),
    ("openai/gpt-4o-mini", "GPT-4o mini", "basic", 128_000, 16_384, True, True, "15", "60", ["gpt-4o-mini"],
     ["gemini/gemini-2.5-flash-lite"]),
    ("anthropic/claude-opus-4-1", "Claude Opus 4.1", "premium", 200_000, 32_000, True, True, "1500", "7500",
     ["claude-opus", "claude-opus-4-1"], ["anthropic/claude-sonnet-4-5"]),
    ("anthropic/claude-sonnet-4-5", "Claude Sonnet 4.5", "premium", 200_000, 64_000, True, True, "300", "1500",
     ["claude-sonnet", "claude-sonnet-4-5"], ["openai/gpt-4.1"]),
    ("anthropic/claude-haiku-4-5", "Claude Haiku 4.5", "standard", 200_000, 64_000, True, True, "100", "500",
     ["claude-haiku", "claude-haiku-4-5"], ["openai/gpt-4.1-mini"]),
    ("gemini/gemini-2.5-pro", "Gemini 2.5 Pro", "premium", 1_048_576, 65_536, True, True, "125", "1000",
     ["gemini-pro", "gemini-2.5-pro"], ["openai/gpt-5"]),
    ("gemini/gemini-2.5-flash", "Gemini 2.5 Flash", "standard", 1_048_576, 65_536, True, True, "30", "250",
     ["gemini-flash", "gemini-2.5-flash"], ["openai/gpt-5-mini"]),
    ("gemini/gemini-2.5-flash-lite", "Gemini 2.5 Flash-Lite", "basic", 1_048_576, 65_536, True, True, "10", "40",
     ["gemini-flash-lite", "gemini-2.5-flash-lite"], ["openai/gpt-4.1-mini"]),
    ("deepseek/deepseek-chat", "DeepSeek V3.2", "basic", 128_000, 8_000, False, True, "28", "42",
     ["deepseek-chat"], ["openai/gpt-4.1-mini"]),
    ("deepseek/deepseek-reasoner", "DeepSeek V3.2 (thinking)", "standard", 128_000, 64_000, False, False, "28",
     "42", ["deepseek-reasoner"], ["deepseek/deepseek-chat"]),
    ("ollama/llama3.2", "Llama 3.2 (Ollama)", "basic", 128_000, 8_192, False, True, "0", "0", ["llama3.2"], []),
    ("ollama/qwen3", "Qwen3 (Ollama)", "basic", 40_960, 8_192, False, True, "0", "0", ["qwen3"], []),
    ("demo/prumo-demo", "Prumo demo (built-in, not an AI)", "basic", 8_192, 1_024, False, False, "0", "0",
     ["demo", "prumo-demo"], []),
]


@transaction.atomic
def catalog_seed(*, model_class=Model, alias_class=ModelAlias, price_class=Price) -> int:
    """Add the seeded models, aliases and prices that do not exist yet. Returns how many models were added.

    The data migration passes its historical model classes.
    """
    added = 0
    for order, (model_id, name, tier, context, max_out, vision, tools, price_in, price_out, aliases,
                fallbacks) in enumerate(CATALOG_SEEDS):
        provider, provider_model = model_id.split("/", 1)
        _model, created = model_class.objects.get_or_create(id=model_id, defaults={
            "provider": provider, "provider_model": provider_model, "display_name": name, "tier": tier,
            "context_window": context, "max_output_tokens": max_out, "vision": vision, "tools": tools,
            "fallbacks": fallbacks, "sort_order": order,
        })
        added += created
        for alias in aliases:
            alias_class.objects.get_or_create(alias=alias, defaults={"model_id": model_id})
        if not price_class.objects.filter(kind="model", key=model_id).exists():
            price_class.objects.create(kind="model", key=model_id, input_per_million=Decimal(price_in),
                                       output_per_million=Decimal(price_out), effective_from=PRICES_FROM)
    return added


# The prefixes providers give their keys (OpenAI's sk-proj-/sk-svcacct- keys start with sk- too); Ollama's
# optional key (a proxy in front of it) has no known shape.
KEY_PREFIXES = {"openai": "sk-", "deepseek": "sk-", "anthropic": "sk-ant-", "gemini": "AIza"}
KEY_MIN_LENGTH = 20
KEY_MAX_LENGTH = 300


def provider_key_problem(*, provider: str, secret: str) -> str | None:
    """Why `secret` cannot be `provider`'s key, as a sentence for the form; None when it looks right."""
    if not key_is_printable_ascii(secret):
        return _("An API key has only printable ASCII characters, without spaces or accents. Copy it again "
                 "from the provider's console.")
    prefix = KEY_PREFIXES.get(provider)
    if prefix and not secret.startswith(prefix):
        return _("%(provider)s keys start with “%(prefix)s”. Check that you copied the whole key, for the "
                 "right provider.") % {"provider": Provider(provider).label, "prefix": prefix}
    if not KEY_MIN_LENGTH <= len(secret) <= KEY_MAX_LENGTH:
        return _("An API key has between %(low)s and %(high)s characters; this one has %(length)s.") % {
            "low": KEY_MIN_LENGTH, "high": KEY_MAX_LENGTH, "length": len(secret)}
    return None


@transaction.atomic
def provider_key_set(*, organization: Organization, provider: str, secret: str, user: User,
                     actor: Actor) -> ProviderKey:
    """Store (or replace) the organization's key for `provider`; only its last 4 characters are shown again.

    The form checks the key's shape (`provider_key_problem`); here a key that no HTTP request could
    carry is refused whoever calls.
    """
    secret = secret.strip()
    if not key_is_printable_ascii(secret):
        raise ValueError("a provider key must be printable ASCII without spaces")
    key, created = ProviderKey.objects.update_or_create(
        organization=organization, provider=provider,
        defaults={"encrypted_key": key_encrypt(secret), "last4": secret[-4:], "created_by": user},
    )
    audit_record(organization=organization, actor=actor,
                 action="provider_key.created" if created else "provider_key.replaced", target=key,
                 after={"provider": provider, "last4": key.last4})
    return key


@transaction.atomic
def provider_key_delete(*, organization: Organization, provider: str, actor: Actor) -> bool:
    key = ProviderKey.objects.filter(organization=organization, provider=provider).first()
    if key is None:
        return False
    audit_record(organization=organization, actor=actor, action="provider_key.deleted", target=key,
                 before={"provider": provider, "last4": key.last4})
    key.delete()
    return True


def provider_keys_rotate(*, batch: int = 500) -> int:
    """Re-encrypt every stored key with the newest encryption key. Returns how many rows were rewritten."""
    rotated = 0
    last_pk = 0
    while True:
        with transaction.atomic():
            rows = list(ProviderKey.objects.select_for_update().filter(pk__gt=last_pk).order_by("pk")[:batch])
            if not rows:
                return rotated
            for row in rows:
                row.encrypted_key = key_rotate(row.encrypted_key)
            ProviderKey.objects.bulk_update(rows, ["encrypted_key"])
            rotated += len(rows)
            last_pk = rows[-1].pk
