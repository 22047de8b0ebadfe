"""Reads for the catalog: resolving model names, what an organization may use, its own keys."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Q
from django.utils import timezone

from billing.models import Price
from billing.selectors import Entitlements
from chat.providers import provider_configured
from tenants.models import Organization

from .crypto import InvalidToken, key_decrypt
from .models import Model, ProviderKey


@dataclass(frozen=True)
class ModelOption:
    """A model with its price in force: what the model picker and the router work with."""

    model: Model
    input_per_million: Decimal
    output_per_million: Decimal

    @property
    def id(self) -> str:
        return self.model.id

    def cost_bound(self, *, input_tokens: int, output_tokens: int) -> Decimal:
        return (Decimal(input_tokens) * self.input_per_million
                + Decimal(output_tokens) * self.output_per_million) / Decimal(1_000_000)


def model_resolve(name: str) -> Model | None:
    """The active model called `name`: its id (`provider/model`) or one of its aliases."""
    name = (name or "").strip()
    if not name:
        return None
    return Model.objects.filter(Q(id=name) | Q(aliases__alias=name), is_active=True).distinct().first()


def provider_keys_for(organization: Organization | None) -> dict[str, str]:
    """The organization's own provider keys, decrypted (unreadable ones are skipped)."""
    if organization is None:
        return {}
    keys = {}
    for row in ProviderKey.objects.filter(organization=organization):
        try:
            keys[row.provider] = key_decrypt(row.encrypted_key)
        except InvalidToken:
            continue  # encrypted with a key that was dropped: treat as absent
    return keys


def provider_key_list(*, organization: Organization):
    return ProviderKey.objects.filter(organization=organization).select_related("created_by").order_by("provider")


def provider_usable(provider: str, own_keys: dict[str, str]) -> bool:
    return provider in own_keys or provider_configured(provider)


def _prices(model_ids: list[str]) -> dict[str, Price]:
    """The price in force for each model, in one query."""
    prices: dict[str, Price] = {}
    rows = (Price.objects.filter(kind=Price.Kind.MODEL, key__in=model_ids, effective_from__lte=timezone.now())
            .order_by("key", "-effective_from").distinct("key"))
    for price in rows:
        prices[price.key] = price
    return prices


def model_options(*, entitlements: Entitlements | None, own_keys: dict[str, str],
                  ids: list[str] | None = None) -> list[ModelOption]:
    """Active, priced models whose provider can be called and whose tier the plan allows (any tier when None)."""
    models = Model.objects.filter(is_active=True)
    if ids is not None:
        models = models.filter(id__in=ids)
    models = [m for m in models if usable_by(m, entitlements=entitlements, own_keys=own_keys)]
    options = options_priced(models, _prices([m.id for m in models]))
    if ids is not None:
        options.sort(key=lambda option: ids.index(option.id))
    return options


def usable_by(model: Model, *, entitlements: Entitlements | None, own_keys: dict[str, str]) -> bool:
    """Whether a plan (any, when None) and these own keys let `model` be used."""
    return provider_usable(model.provider, own_keys) and (entitlements is None
                                                           or entitlements.allows_model_tier(model.tier))


def options_priced(models: list[Model], prices: dict[str, Price]) -> list[ModelOption]:
    """`models` with their price in force, in their order; a model without one is left out."""
    return [ModelOption(m, prices[m.id].input_per_million, prices[m.id].output_per_million)
            for m in models if m.id in prices]


def catalog_prices(models: list[Model]) -> dict[str, Price]:
    """The price in force of each of `models`, in one query."""
    return _prices([m.id for m in models])


def model_cheapest(options: list[ModelOption]) -> ModelOption | None:
    """The cheapest option (by the price of a typical short exchange); the demo model only when alone."""
    real = [o for o in options if o.model.provider != "demo"] or options
    return min(real, key=lambda o: (o.input_per_million + 4 * o.output_per_million, o.model.sort_order), default=None)
