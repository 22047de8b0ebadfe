"""CNPJ registries: one client per provider, shared limits in Redis, and `registry_lookup` on top.

    from checks.registries import registry_lookup
    result = registry_lookup("12.ABC.345/01DE-35")
    result.outcome   # "found" | "not_found" | "invalid" | "throttled" | "failed"
    result.record    # normalized, LGPD-masked company (schema: checks.registries.normalize)
    result.attempts  # (Attempt(provider, outcome, http_status, latency_ms, retry_after), ...)
"""

from .base import (
    CIRCUIT_OPEN,
    ERROR,
    FOUND,
    NOT_FOUND,
    OUTCOMES,
    RATE_LIMITED,
    THROTTLED,
    UNAVAILABLE,
    UNSUPPORTED,
    Attempt,
    ProviderAnswer,
)
from .lookup import (
    CLIENTS,
    FALLBACK_ORDER,
    LOOKUP_FAILED,
    LOOKUP_FOUND,
    LOOKUP_INVALID,
    LOOKUP_NOT_FOUND,
    LOOKUP_OUTCOMES,
    LOOKUP_THROTTLED,
    SOURCES,
    LookupResult,
    provider_attempt,
    registry_lookup,
)
from .normalize import SCHEMA_VERSION

__all__ = [
    "CIRCUIT_OPEN", "CLIENTS", "ERROR", "FALLBACK_ORDER", "FOUND", "LOOKUP_FAILED", "LOOKUP_FOUND", "LOOKUP_INVALID",
    "LOOKUP_NOT_FOUND", "LOOKUP_OUTCOMES", "LOOKUP_THROTTLED", "NOT_FOUND", "OUTCOMES", "RATE_LIMITED",
    "SCHEMA_VERSION", "SOURCES", "THROTTLED", "UNAVAILABLE", "UNSUPPORTED", "Attempt", "LookupResult",
    "ProviderAnswer", "provider_attempt", "registry_lookup",
]
