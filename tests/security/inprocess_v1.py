"""/v1 in this process for the security tests: chat.v1's ASGI app behind httpx's ASGI transport
(raw HTTP, to read statuses, envelopes and headers), real PostgreSQL and Redis, fake providers."""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import asynccontextmanager
from decimal import Decimal

import httpx
import psycopg

from billing.ledger import credit_debit, credit_grant
from billing.models import BillingAccount, Plan
from chat import v1
from chat.redis import async_client_close
from core import db_async
from core.redis_clients import redis_client
from tenants.api_keys import api_key_create
from tenants.audit.services import Actor
from tenants.services import organization_create

CHEAP = "openai/gpt-4.1-mini"


class CountingConnection(psycopg.AsyncConnection):
    """psycopg's connection, noting each statement and each pipeline (one round trip for all of its
    statements)."""

    log: list[str] = []
    pipelined = False

    async def execute(self, *args, **kwargs):
        CountingConnection.log.append("pipelined statement" if self.pipelined else "statement")
        return await super().execute(*args, **kwargs)

    @asynccontextmanager
    async def pipeline(self):
        CountingConnection.log.append("pipeline")
        self.pipelined = True
        try:
            async with super().pipeline() as pipeline:
                yield pipeline
        finally:
            self.pipelined = False


def starter_organization(owner, *, credits: str | None = None, name: str = "Security"):
    """A committed organization of `owner` on Starter (API access), with `credits` when given."""
    org = organization_create(user=owner, name=f"{name} {uuid.uuid4().hex[:6]}", actor=Actor.system("tests"))
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="starter"))
    if credits is not None:
        balance_set(org, Decimal(credits))
    return org


def api_organization(owner, *, credits: str = "1000"):
    """A committed organization on Starter (API access) with `credits` and a chat key: (org, raw key)."""
    org = starter_organization(owner, credits=credits)
    key = api_key_create(organization=org, name="security", scopes=["chat"], actor=Actor.system())
    return org, key.raw


def openai_at(settings, url: str, monkeypatch) -> None:
    """OpenAI's base URL at a fake upstream, statements on the async pool counted (CountingConnection), snapshots
    rebuilt (those built under other settings are stale) and no circuit breaker left open by another test.
    The caller has the database unblocked."""
    from chat.snapshot import org_config_bump

    providers = {name: dict(config) for name, config in settings.LLM_PROVIDERS.items()}
    providers["openai"] = {"base_url": url, "api_key": "sk-upstream"}
    settings.LLM_PROVIDERS = providers
    monkeypatch.setattr(db_async, "CONNECTION_CLASS", CountingConnection)
    org_config_bump()
    redis_forget("chat:breaker:*")


def balance_set(org, credits: Decimal) -> None:
    """Move the balance to `credits` through the ledger (so the ledger still adds up to it)."""
    current = BillingAccount.objects.get(pk=org.pk).credits
    key = f"tests:{uuid.uuid4().hex}"
    if credits > current:
        credit_grant(organization=org, amount=credits - current, key=key)
    elif credits < current:
        credit_debit(organization=org, amount=current - credits, key=key)


def redis_forget(*patterns: str) -> None:
    for pattern in patterns:
        for key in redis_client().scan_iter(pattern):
            redis_client().delete(key)


def run(scenario):
    """Run the coroutine function `scenario` in a fresh event loop, closing the loop's pools after."""

    async def wrapped():
        try:
            return await scenario()
        finally:
            await db_async.async_pool_close()
            await async_client_close()

    return asyncio.run(wrapped())


def post(key: str, body: dict) -> httpx.Response:
    """POST /v1/chat/completions once, in a fresh event loop."""

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=v1.application, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post("/v1/chat/completions", content=json.dumps(body),
                                         headers={"authorization": f"Bearer {key}",
                                                  "content-type": "application/json"})
            await response.aread()
            return response

    return run(call)


def ask(key: str, text: str = "Hello", **extra) -> httpx.Response:
    return post(key, {"model": CHEAP, "messages": [{"role": "user", "content": text}], **extra})
