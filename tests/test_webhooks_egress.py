"""SSRF-safe egress (core.egress): which URLs and addresses are refused, and that a request goes to the
address that was vetted, whatever the DNS answers next (rebinding), with the host's own name in Host and SNI."""

from __future__ import annotations

import ssl

import pytest

from core.egress import (
    EgressFailed,
    EgressRefused,
    address_refusal,
    address_vet,
    egress_post,
    networks_parse,
    url_check,
)

from .webhook_receiver import Receiver, tls_files

HOST = "hooks.example.test"  # in no DNS: only an injected resolver knows it


class Rebinding:
    """A resolver whose answers change from one lookup to the next (the last one repeats)."""

    def __init__(self, *answers: list[str]):
        self.answers = list(answers)
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]


REFUSED = [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.254", "private"), ("192.168.1.1", "private"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("169.254.1.1", "link_local"), ("fe80::1", "link_local"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("192.0.2.10", "private"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("100.64.0.1", "shared"), ("100.127.255.254", "shared"),
    # IPv6 forms carrying an IPv4 address are judged by the IPv4 address.
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:100.64.0.1", "shared"), ("::127.0.0.1", "loopback"), ("::10.0.0.1", "private"),
    ("64:ff9b::a9fe:a9fe", "metadata"), ("64:ff9b::7f00:1", "loopback"), ("2002:a00:1::", "private"),
    ("2002:7f00:1::", "loopback"),
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_every_non_public_address_is_refused_with_its_kind(address, reason):
    assert address_refusal(address) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses_pass(address):
    assert address_refusal(address) is None


def test_allowed_private_networks_let_their_addresses_through_but_never_the_metadata_address():
    allowed = networks_parse(["127.0.0.0/8", "10.20.0.0/16", "fd12::/16", "169.254.0.0/16"])
    assert address_refusal("127.0.0.1", allowed) is None
    assert address_refusal("::ffff:127.0.0.1", allowed) is None
    assert address_refusal("10.20.30.40", allowed) is None
    assert address_refusal("fd12:3456::1", allowed) is None
    assert address_refusal("10.21.0.1", allowed) == "private"
    assert address_refusal("::1", allowed) == "loopback"
    assert address_refusal("169.254.169.254", allowed) == "metadata"


def test_a_host_is_refused_when_any_of_its_addresses_is():
    destination = url_check(f"https://{HOST}/hook", allow_http=False)
    with pytest.raises(EgressRefused) as refused:
        address_vet(destination, resolve=lambda host, port: ["93.184.216.34", "10.0.0.7"])
    assert refused.value.reason == "private"
    assert str(address_vet(destination, resolve=lambda host, port: ["93.184.216.34"])) == "93.184.216.34"


@pytest.mark.parametrize(("url", "reason"), [
    ("http://example.com/hook", "scheme"),
    ("ftp://example.com/hook", "scheme"),
    ("https://user:pass@example.com/hook", "userinfo"),
    ("https://token@example.com/hook", "userinfo"),
    ("https:///hook", "invalid_url"),
    ("not a url", "scheme"),
])
def test_urls_that_may_never_be_called(url, reason):
    with pytest.raises(EgressRefused) as refused:
        url_check(url, allow_http=False)
    assert refused.value.reason == reason


def test_http_only_where_allowed_and_any_port():
    assert url_check("http://example.com/hook", allow_http=True).port == 80
    destination = url_check("https://example.com:8443/in?x=1", allow_http=False)
    assert (destination.host, destination.port, destination.target) == ("example.com", 8443, b"/in?x=1")
    assert destination.host_header == "example.com:8443"


def test_literal_addresses_in_urls_are_vetted_too():
    with pytest.raises(EgressRefused) as refused:
        egress_post("http://[::ffff:169.254.169.254]/latest/meta-data/", content=b"{}", headers={},
                    allow_http=True, allowed=networks_parse(["0.0.0.0/0"]))
    assert refused.value.reason == "metadata"


def test_loopback_is_refused_unless_allowed_and_nothing_is_sent():
    with Receiver() as receiver:
        with pytest.raises(EgressRefused) as refused:
            egress_post(receiver.url(), content=b"{}", headers={}, allow_http=True)
        assert refused.value.reason == "loopback" and receiver.requests == []
        response = egress_post(receiver.url(), content=b'{"a": 1}', headers={"X-Test": "1"}, allow_http=True,
                               allowed=networks_parse(["127.0.0.0/8"]))
    assert response.status == 200 and response.body_head == "ok"
    assert receiver.requests[0].body == b'{"a": 1}' and receiver.requests[0].headers["X-Test"] == "1"


def test_dns_rebinding_cannot_switch_the_address_a_delivery_connects_to():
    """The first lookup answers the receiver's (allowed) address, the next a private one. The first delivery
    reaches the receiver under the host's name, though that name resolves nowhere but in our resolver: it
    connected to the vetted address. The second is refused before anything is sent."""
    allowed = networks_parse(["127.0.0.0/8"])
    resolver = Rebinding(["127.0.0.1"], ["10.0.0.5"])
    with Receiver() as receiver:
        url = receiver.url(host=HOST)
        first = egress_post(url, content=b"1", headers={}, allow_http=True, allowed=allowed, resolve=resolver)
        with pytest.raises(EgressRefused) as refused:
            egress_post(url, content=b"2", headers={}, allow_http=True, allowed=allowed, resolve=resolver)
    assert first.status == 200 and first.address == "127.0.0.1"
    assert refused.value.reason == "private"
    assert resolver.lookups == [HOST, HOST]  # resolved once per delivery, never again by the HTTP client
    assert [r.body for r in receiver.requests] == [b"1"]
    assert receiver.requests[0].headers["Host"] == f"{HOST}:{receiver.port}"


def test_over_tls_the_client_names_and_verifies_the_host_it_meant(tmp_path):
    cert, key, ca = tls_files(tmp_path, HOST)
    trust = ssl.create_default_context(cafile=str(ca))
    allowed = networks_parse(["127.0.0.0/8"])
    with Receiver(certfile=cert, keyfile=key) as receiver:
        response = egress_post(receiver.url(host=HOST), content=b"{}", headers={}, allow_http=False,
                               allowed=allowed, resolve=lambda host, port: ["127.0.0.1"], verify=trust)
        assert response.status == 200
        assert receiver.requests[0].server_name == HOST
        assert receiver.requests[0].headers["Host"] == f"{HOST}:{receiver.port}"
        # Another name pointed at the same address is not what the certificate is for.
        with pytest.raises(EgressFailed) as failed:
            egress_post(receiver.url(host="other.example.test"), content=b"{}", headers={}, allow_http=False,
                        allowed=allowed, resolve=lambda host, port: ["127.0.0.1"], verify=trust)
    assert failed.value.reason == "connection" and len(receiver.requests) == 1


def test_redirects_are_not_followed_and_the_body_read_is_capped():
    allowed = networks_parse(["127.0.0.0/8"])
    with Receiver() as receiver:
        receiver.reply_next(302, {"Location": "http://169.254.169.254/latest/"})
        receiver.reply_next(200, body=b"x" * 200_000)
        redirected = egress_post(receiver.url(), content=b"{}", headers={}, allow_http=True, allowed=allowed)
        large = egress_post(receiver.url(), content=b"{}", headers={}, allow_http=True, allowed=allowed)
    assert redirected.status == 302 and len(receiver.requests) == 2
    assert large.status == 200 and large.body_head == "x" * 2048


def test_an_unreachable_receiver_is_a_failure_not_a_refusal():
    with Receiver() as receiver:
        url = receiver.url()
    with pytest.raises(EgressFailed) as failed:
        egress_post(url, content=b"{}", headers={}, allow_http=True, allowed=networks_parse(["127.0.0.0/8"]))
    assert failed.value.reason == "connection"
