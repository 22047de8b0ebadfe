"""What chat needs to know about an organization, per process: its plan's entitlements, its own provider
keys and the models it may use, priced.

Reading that from the database costs five or six queries (billing account and plan, provider keys,
models, aliases, prices), and every send, answer and /v1 call needs it. So each process keeps the catalog
(`Catalog`: models, aliases, prices; the same for everyone) and a snapshot per organization (`OrgConfig`: its
plan and keys, two queries, over the catalog), and rebuilds them when a version in Redis changes. A change to
the catalog, prices, plans, an organization's plan or its provider keys sets a new `CONFIG_VERSION_KEY`
(chat.signals): the process that made it rebuilds at once, the others on their next use (synchronous code
reads the version at most once a second, so within a second). CONFIG_MAX_AGE bounds the rest: a price whose
`effective_from` arrives, a Redis that lost the key. A settings change (tests' `override_settings`: which
providers are configured) drops every snapshot of the process.

`org_config` is for the event loop (the /v1 gateway, which reads the version in a round trip it makes
anyway); `org_config_now` for synchronous code (chat sends, answers, titles).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from django.core.signals import setting_changed
from django.dispatch import receiver

from billing.models import Price
from billing.selectors import Entitlements, entitlements_for
from core.db_async import orm_call
from core.redis_clients import redis_client
from tenants.models import Organization

from .catalog.models import Model
from .catalog.selectors import ModelOption, catalog_prices, options_priced, provider_keys_for, usable_by

CONFIG_VERSION_KEY = "gw:config:v"
CONFIG_MAX_AGE = 60.0


def _stale(built_at: float) -> bool:
    return time.monotonic() - built_at > CONFIG_MAX_AGE


@dataclass(frozen=True)
class OrgConfig:
    version: str | None
    built_at: float
    entitlements: Entitlements
    own_keys: dict[str, str]
    names: dict[str, Model]  # every active model by id and by alias
    options: dict[str, ModelOption]  # what the plan allows and a configured provider can serve, priced, in order

    def candidates(self, model: Model) -> list[ModelOption]:
        """The model and its fallbacks this organization can use, in order."""
        return [self.options[i] for i in dict.fromkeys((model.id, *model.fallbacks)) if i in self.options]

    @property
    def stale(self) -> bool:
        return _stale(self.built_at)


@dataclass(frozen=True)
class Catalog:
    """The models, their names and their prices in force: the same for every organization, so read once per
    version (and CONFIG_MAX_AGE) per process, not once per organization."""

    version: str | None
    built_at: float
    models: list[Model]  # active, in catalog order
    names: dict[str, Model]  # by id and by alias
    prices: dict[str, Price]

    @property
    def stale(self) -> bool:
        return _stale(self.built_at)


def _catalog_build(version: str | None) -> Catalog:
    models = list(Model.objects.filter(is_active=True).prefetch_related("aliases"))
    names = {model.id: model for model in models}
    for model in models:
        for alias in model.aliases.all():
            names.setdefault(alias.alias, model)
    return Catalog(version=version, built_at=time.monotonic(), models=models, names=names,
                   prices=catalog_prices(models))


_catalog: list[Catalog] = []  # this process's, once read


def _catalog_for(version: str | None) -> Catalog:
    catalog = _catalog[0] if _catalog else None
    if catalog is None or catalog.version != version or catalog.stale:
        catalog = _catalog_build(version)
        _catalog[:] = [catalog]
    return catalog


def org_config_build(organization_id: int, version: str | None) -> OrgConfig:
    """The organization's plan and own keys (two queries) over the process's catalog (read when it is stale)."""
    organization = Organization(pk=organization_id)
    entitlements = entitlements_for(organization)
    own_keys = provider_keys_for(organization)
    catalog = _catalog_for(version)
    usable = [model for model in catalog.models if usable_by(model, entitlements=entitlements, own_keys=own_keys)]
    options = {option.id: option for option in options_priced(usable, catalog.prices)}
    return OrgConfig(version=version, built_at=time.monotonic(), entitlements=entitlements, own_keys=own_keys,
                     names=catalog.names, options=options)


_configs: dict[int, OrgConfig] = {}


async def org_config(organization_id: int, version: str | None) -> OrgConfig:
    """The organization's snapshot for `version` (read by the caller), built in a thread when stale."""
    config = _configs.get(organization_id)
    if config is None or config.version != version or config.stale:
        config = await orm_call(org_config_build, organization_id, version)
        _configs[organization_id] = config
    return config


VERSION_READ_SECONDS = 1.0
_version_read = [0.0, None]  # when this process last read the version, and what it was


def _version_now() -> str | None:
    """The snapshots' version, read from Redis at most once a VERSION_READ_SECONDS per process (a send or an
    answer asks several times): another process's change is seen within that, this process's own at once."""
    read_at, version = _version_read
    if time.monotonic() - read_at >= VERSION_READ_SECONDS:
        version = redis_client().get(CONFIG_VERSION_KEY)
        _version_read[:] = [time.monotonic(), version]
    return version


def org_config_now(organization_id: int) -> OrgConfig:
    """The organization's current snapshot, for synchronous code (no round trip when it is fresh)."""
    version = _version_now()
    config = _configs.get(organization_id)
    if config is None or config.version != version or config.stale:
        config = _configs[organization_id] = org_config_build(organization_id, version)
    return config


def org_config_bump() -> None:
    """Make every process rebuild its snapshots (a random token: a restarted Redis cannot repeat one); this one at
    once."""
    redis_client().set(CONFIG_VERSION_KEY, uuid.uuid4().hex)
    org_config_forget()


def org_config_forget() -> None:
    """Drop this process's snapshots and its reading of the version."""
    _configs.clear()
    _catalog.clear()
    _version_read[:] = [0.0, None]


@receiver(setting_changed, dispatch_uid="chat_snapshot_settings")
def _settings_changed(**kwargs) -> None:
    org_config_forget()  # which providers are configured comes from settings
