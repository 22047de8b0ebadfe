"""Outbound HTTP to addresses our users give us (webhook endpoints), safe from SSRF.

A URL is checked when it is saved (`url_check`: https only unless http is allowed, no userinfo,
a host) and again at every request: the host is resolved then, every address it resolves to is
vetted (`address_refusal`: loopback, private, link-local, multicast, reserved, unspecified,
shared/CGNAT, the cloud metadata addresses, and the IPv4 addresses IPv6 can carry: mapped,
compatible, 6to4, NAT64), and the request connects to the vetted address itself, sending the
original Host header and TLS server name, so a DNS answer that changes between the check and the
connection (rebinding) cannot redirect it. Redirects are never followed, proxies from the
environment never used, and the response body is read up to a cap.

`allowed` networks (settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS) are let through whatever their
kind, for tests and on-premise installs, except the metadata addresses, which are never reached.
The resolver is a parameter so that tests can play a rebinding DNS server.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

TIMEOUT_SECONDS = 15.0
READ_LIMIT_BYTES = 64 * 1024  # the most of a response body we read
KEEP_BYTES = 2 * 1024  # the part of it we keep

METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254"))
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class EgressError(Exception):
    """A request that was not sent, or got no answer."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class EgressRefused(EgressError):
    """Refused by policy (the URL, or an address its host resolves to): nothing was sent."""


class EgressFailed(EgressError):
    """Sent (or tried) but no answer: connection refused, TLS, timeout, a broken response."""


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str  # a hostname, or an IP literal without brackets
    port: int
    target: bytes  # path and query

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class EgressResponse:
    status: int
    headers: httpx.Headers
    body_head: str  # the first KEEP_BYTES of the body, decoded leniently
    address: str  # the address we connected to


def networks_parse(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (a setting's list) as networks; raises ValueError on a malformed one."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values if value.strip())


def url_check(url: str, *, allow_http: bool) -> Destination:
    """Where `url` points, or EgressRefused when it may never be called."""
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        raise EgressRefused("invalid_url", str(error)) from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parsed.scheme not in schemes:
        raise EgressRefused("scheme", f"{parsed.scheme or 'no scheme'} is not allowed")
    if parsed.userinfo:
        raise EgressRefused("userinfo", "credentials in the URL are not allowed")
    host = parsed.host
    if not host:
        raise EgressRefused("invalid_url", "no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return Destination(scheme=parsed.scheme, host=host, port=port, target=parsed.raw_path or b"/")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _kind(address: IPAddress) -> str | None:
    """Why `address` may not be reached (its first matching kind), None for a public address."""
    if address in METADATA:
        return "metadata"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if address.version == 4 and address in SHARED:
        return "shared"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return None


def address_refusal(address: IPAddress | str, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why `address` may not be reached, or None. An IPv6 address carrying an IPv4 one is judged as
    that IPv4 address too; `allowed` networks pass (checked against either form), metadata never."""
    address = ipaddress.ip_address(address)
    embedded = _embedded_ipv4(address) if address.version == 6 else None
    forms = [address] if embedded is None else [embedded, address]
    if any(form in METADATA for form in forms):
        return "metadata"
    allowed = tuple(allowed)
    if any(form in network for form in forms for network in allowed if form.version == network.version):
        return None
    # A carried IPv4 address is what the packets reach: the IPv6 form is only its envelope.
    return _kind(forms[0])


def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for `host`, in its order, without repeats."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise EgressFailed("unresolvable", f"{host}: {error}") from None
    return list(dict.fromkeys(info[4][0].split("%")[0] for info in infos))


def address_vet(destination: Destination, *, allowed: Iterable[IPNetwork] = (),
                resolve: Resolver = system_resolve) -> IPAddress:
    """The address to connect to: the destination's host resolved now, refused if ANY of its addresses is."""
    try:
        addresses = [ipaddress.ip_address(destination.host)]
    except ValueError:
        addresses = [ipaddress.ip_address(value) for value in resolve(destination.host, destination.port)]
    if not addresses:
        raise EgressFailed("unresolvable", destination.host)
    allowed = tuple(allowed)
    for address in addresses:
        reason = address_refusal(address, allowed)
        if reason is not None:
            raise EgressRefused(reason, f"{destination.host} resolves to {address}")
    return addresses[0]


@cache
def _tls_context() -> ssl.SSLContext:
    """The verifying TLS context of every request, built once per process: loading the CA bundle for each
    new client cost ~25 ms a delivery (bench/webhooks.py)."""
    return httpx.create_ssl_context()


def egress_post(url: str, *, content: bytes, headers: dict[str, str], allow_http: bool,
                allowed: Iterable[IPNetwork] = (), resolve: Resolver = system_resolve,
                timeout: float = TIMEOUT_SECONDS, read_limit: int = READ_LIMIT_BYTES, keep: int = KEEP_BYTES,
                verify: ssl.SSLContext | None = None) -> EgressResponse:
    """POST `content` to `url` through the vetted address; the response whatever its status (never
    redirected). EgressRefused before anything is sent, EgressFailed when no response came."""
    destination = url_check(url, allow_http=allow_http)
    address = address_vet(destination, allowed=allowed, resolve=resolve)
    pinned = httpx.URL(scheme=destination.scheme, host=str(address), port=destination.port,
                       raw_path=destination.target)
    extensions = {"sni_hostname": destination.host} if destination.scheme == "https" else {}
    # Identity encoding: the cap counts bytes on the wire, and a compressed body cannot expand past it.
    sent_headers = {**headers, "Host": destination.host_header, "Accept-Encoding": "identity"}
    deadline = time.monotonic() + timeout
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False,
                          verify=verify or _tls_context()) as client:
            request = client.build_request("POST", pinned, content=content, headers=sent_headers,
                                           extensions=extensions)
            response = client.send(request, stream=True)
            try:
                body = bytearray()
                for chunk in response.iter_raw():
                    body += chunk
                    if len(body) >= read_limit or time.monotonic() > deadline:
                        break
            finally:
                response.close()
    except httpx.TimeoutException as error:
        raise EgressFailed("timeout", str(error) or type(error).__name__) from None
    except httpx.HTTPError as error:
        raise EgressFailed("connection", str(error) or type(error).__name__) from None
    return EgressResponse(status=response.status_code, headers=response.headers,
                          body_head=bytes(body[:keep]).decode("utf-8", errors="replace"), address=str(address))
