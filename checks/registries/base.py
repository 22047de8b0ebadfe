"""What one call to one registry can end in, and the HTTP plumbing the clients share.

Outcomes of a provider call (CHECKS-RESEARCH §2.7):

    found         200 with a company: normalized into a record.
    not_found     404, or ReceitaWS "CNPJ rejeitado pela Receita Federal". NOT final: mirrors lag
                  and have answered false 404s; the lookup asks the next provider.
    unsupported   400, or ReceitaWS "CNPJ inválido", for a CNPJ we validated: the provider does
                  not accept it (likely an alphanumeric CNPJ). Not final either.
    rate_limited  429: the provider is paused for every worker (Retry-After, cnpj.ws's
                  "Liberação ocorrerá em …", or CHECKS_COOLDOWN_DEFAULT).
    unavailable   5xx, timeout, connection error, a 200 that is not JSON, ReceitaWS "Timeout":
                  counts toward the provider's circuit breaker.
    error         any other answer (403, 405, a 200 whose JSON is not a company): also counts
                  toward the breaker.

And, without a call (the lookup decided not to ask):

    throttled     our global rate limit for the provider is used up, or it is cooling down after a 429.
    circuit_open  the provider's circuit breaker is open (or another worker is probing it).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from functools import cache
from typing import Any

import certifi
import httpx
from django.conf import settings

from .normalize import now_iso

logger = logging.getLogger("checks.registries")

FOUND = "found"
NOT_FOUND = "not_found"
UNSUPPORTED = "unsupported"
RATE_LIMITED = "rate_limited"
UNAVAILABLE = "unavailable"
ERROR = "error"
THROTTLED = "throttled"
CIRCUIT_OPEN = "circuit_open"
OUTCOMES = (FOUND, NOT_FOUND, UNSUPPORTED, RATE_LIMITED, UNAVAILABLE, ERROR, THROTTLED, CIRCUIT_OPEN)
# A provider's Retry-After is believed up to this many seconds.
MAX_WAIT_SECONDS = 3600

_LIBERACAO = re.compile(r"Libera\w+ ocorrer\w+ em \w{3} (\w{3} \d{1,2} \d{4} \d{2}:\d{2}:\d{2}) GMT([+-]\d{4})")


@dataclass(frozen=True)
class ProviderAnswer:
    """One provider's answer for one CNPJ; `record` only when found. No raw payload is kept."""

    provider: str
    outcome: str
    http_status: int | None = None
    latency_ms: int = 0
    record: dict | None = None
    retry_after: int | None = None  # seconds the provider asked us to wait (429, or a 5xx with Retry-After)
    detail: str = ""  # short and payload-free: "timeout", "connect", "non_json", "status 403", …


@dataclass(frozen=True)
class Attempt:
    """A line of a lookup's history: what was asked (or skipped), and how it went."""

    provider: str
    outcome: str
    http_status: int | None = None
    latency_ms: int = 0
    retry_after: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def wait_seconds(value: float) -> int:
    """Whole seconds to wait, rounded up, at least 1 and at most MAX_WAIT_SECONDS."""
    return int(min(max(1, -(-value // 1)), MAX_WAIT_SECONDS))


def retry_after_seconds(response: httpx.Response, *, now: datetime | None = None) -> int | None:
    """`Retry-After` in seconds (delta or HTTP date), else cnpj.ws's "Liberação ocorrerá em <date>" in
    its JSON body; None when neither says (or says something already past)."""
    now = now or datetime.now(UTC)
    header = (response.headers.get("retry-after") or "").strip()
    if header:
        try:
            seconds = float(header)
        except ValueError:
            try:
                seconds = (parsedate_to_datetime(header) - now).total_seconds()
            except (TypeError, ValueError, IndexError):
                seconds = 0
        if seconds > 0:
            return wait_seconds(seconds)
    match = _LIBERACAO.search(response.text[:2000]) if response.content else None
    if match:
        try:
            release = datetime.strptime(f"{match.group(1)} {match.group(2)}", "%b %d %Y %H:%M:%S %z")
        except ValueError:
            return None
        seconds = (release - now).total_seconds()
        if seconds > 0:
            return wait_seconds(seconds)
    return None


@cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every client: building one (loading the CA bundle) costs ~20 ms."""
    return ssl.create_default_context(cafile=certifi.where())


class RegistryClient:
    """One provider: `fetch(cnpj)` → `ProviderAnswer`. Subclasses give the path, the payload check and
    the normalizer; they run synchronously (inside Celery tasks)."""

    name = ""
    base_url_setting = ""

    def url(self, cnpj: str) -> str:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return getattr(settings, self.base_url_setting).rstrip("/")

    def normalize(self, payload: dict, *, cnpj: str, fetched_at: str) -> dict:
        raise NotImplementedError

    def is_company(self, payload: dict) -> bool:
        raise NotImplementedError

    def classify_ok(self, payload: dict) -> tuple[str, str]:
        """Outcome and detail for a 200 with a JSON object (ReceitaWS reports errors this way)."""
        return (FOUND, "") if self.is_company(payload) else (ERROR, "not_a_company")

    def http_client(self) -> httpx.Client:
        timeout = httpx.Timeout(settings.CHECKS_READ_TIMEOUT, connect=settings.CHECKS_CONNECT_TIMEOUT)
        return httpx.Client(timeout=timeout, follow_redirects=False, verify=_ssl_context(),
                            headers={"User-Agent": settings.CHECKS_USER_AGENT, "Accept": "application/json"})

    def get(self, url: str) -> httpx.Response:
        with self.http_client() as client:
            return client.get(url)

    def fetch(self, cnpj: str) -> ProviderAnswer:
        started = time.monotonic()
        latency: list[int] = []

        def answer(outcome: str, status: int | None = None, **extra: Any) -> ProviderAnswer:
            # The provider's time: the request, not our normalization after it.
            elapsed = latency[0] if latency else int((time.monotonic() - started) * 1000)
            return ProviderAnswer(self.name, outcome, status, elapsed, **extra)

        try:
            response = self.get(self.url(cnpj))
        except httpx.TimeoutException:
            return answer(UNAVAILABLE, detail="timeout")
        except httpx.TransportError as exc:
            return answer(UNAVAILABLE, detail=type(exc).__name__)
        latency.append(int((time.monotonic() - started) * 1000))
        status = response.status_code
        if status == 429:
            return answer(RATE_LIMITED, status, retry_after=retry_after_seconds(response), detail="429")
        if status == 404:
            return answer(NOT_FOUND, status)
        if status in (400, 422):
            return answer(UNSUPPORTED, status)
        if status >= 500:
            return answer(UNAVAILABLE, status, retry_after=retry_after_seconds(response), detail=f"status {status}")
        if status != 200:
            return answer(ERROR, status, detail=f"status {status}")
        try:
            payload = json.loads(response.content, parse_float=Decimal)
        except ValueError:
            return answer(UNAVAILABLE, status, detail="non_json")
        if not isinstance(payload, dict):
            return answer(ERROR, status, detail="not_an_object")
        outcome, detail = self.classify_ok(payload)
        if outcome != FOUND:
            return answer(outcome, status, detail=detail)
        try:
            record = self.normalize(payload, cnpj=cnpj, fetched_at=now_iso())
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # The exception's text could quote the payload: log its type only.
            logger.warning("registry payload unparsable cnpj=%s provider=%s error=%s", cnpj, self.name,
                           type(exc).__name__)
            return answer(ERROR, status, detail="unparsable")
        return answer(FOUND, status, record=record)
