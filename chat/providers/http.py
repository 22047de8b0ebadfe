"""HTTP helpers every adapter shares, and the base of the adapters that speak plain HTTP (httpx)."""

from __future__ import annotations

import email.utils
import functools
import ssl
import time
from collections.abc import Mapping

import httpx

from .base import ProviderAdapter, ProviderError


def kind_for_status(status: int) -> str:
    """The ProviderError kind for an HTTP error status; 402 (DeepSeek's "Insufficient Balance") is a key problem."""
    if status in (401, 402, 403):
        return ProviderError.AUTH
    if status == 429:
        return ProviderError.RATE_LIMITED
    if status == 408:
        return ProviderError.TIMEOUT
    if 400 <= status < 500:
        return ProviderError.BAD_REQUEST
    if status >= 500:
        return ProviderError.UNAVAILABLE
    return ProviderError.PROTOCOL


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` (seconds or an HTTP date)."""
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except ValueError:
        pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# Raised while the request is being built, before a byte leaves: our configuration, not the provider.
LOCAL_ERRORS = (UnicodeEncodeError, httpx.LocalProtocolError, httpx.InvalidURL, httpx.UnsupportedProtocol)


def local_error(error: BaseException) -> BaseException | None:
    """The request-construction error behind `error` (itself or a cause an SDK wrapped), if any."""
    import httpx2  # the Anthropic SDK's HTTP client raises its own copies of httpx's errors

    local = (*LOCAL_ERRORS, httpx2.LocalProtocolError, httpx2.InvalidURL, httpx2.UnsupportedProtocol)
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, local):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def describe(error: BaseException) -> str:
    """`Type: message` of the transport error behind an SDK's generic "Connection error."."""
    cause = error.__cause__ or error
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every adapter's HTTP client: each new one loads the CA bundle (~20 ms of CPU),
    which hundreds of concurrent streams cannot afford on the event loop."""
    return httpx.create_ssl_context()


class HttpxAdapter(ProviderAdapter):
    """An adapter over its own httpx client (Gemini, Ollama: no official async SDK needed)."""

    _client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        # Made on first use, inside the event loop that will use its connections.
        if self._client is None:
            # Shared by every call of an event loop: as many connections as the OpenAI SDK allows.
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeouts.read, connect=self.timeouts.connect),
                                             verify=tls_context(),
                                             limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def stream_error(self, error: Exception, *, started: bool) -> ProviderError:
        """What an httpx or parsing error while reading a stream means (after `started`, a cut answer)."""
        if not started and (local := local_error(error)) is not None:
            return self.error(ProviderError.CONFIG, f"The request could not be built: {describe(local)}")
        if isinstance(error, httpx.TimeoutException):
            return self.error(ProviderError.TIMEOUT, "No answer within the read timeout.")
        if isinstance(error, httpx.TransportError):
            if started:
                return self.error(ProviderError.INTERRUPTED, f"The stream broke off: {describe(error)}")
            return self.error(ProviderError.UNAVAILABLE, f"Cannot connect: {describe(error)}")
        if isinstance(error, ValueError | TypeError | AttributeError):
            return self.error(ProviderError.PROTOCOL, f"Malformed data in the stream: {error}")
        return self.error(ProviderError.PROTOCOL, repr(error))
