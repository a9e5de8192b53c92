"""Where a webhook may be sent: an http(s) URL with a host that resolves to public addresses only.

A tenant's URL makes the server send requests, so by default no URL may reach the server's own network
(loopback, private, link-local, carrier-grade NAT, reserved addresses: server-side request forgery). The
check runs when a URL is registered (a clear 400) and again at every delivery, at connect time, on the very
addresses the connection uses (CheckedBackend), so a name that later resolves elsewhere (DNS rebinding)
is refused too. FTAAS_WEBHOOK_ALLOW_PRIVATE_URLS=true turns the address check off (tests, private networks).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from urllib.parse import urlsplit

import httpcore
import httpx


class WebhookUrlRefused(Exception):
    """The URL is malformed, does not resolve, or reaches an address webhooks may not reach."""


def url_host_and_port(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL with a host, without credentials in it."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a bad port, a bad IPv6 literal
        raise WebhookUrlRefused(f"URL is not valid: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlRefused("URL must start with https:// or http://")
    if not parts.hostname:
        raise WebhookUrlRefused("URL has no host")
    if parts.username is not None or parts.password is not None:
        # they would travel in logs and listings; the signature is what proves a delivery's origin
        raise WebhookUrlRefused("URL must not carry credentials (user:password@)")
    if port == 0:
        raise WebhookUrlRefused("URL port 0 is not a port one can connect to")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix: the last 32 bits are an IPv4 address
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # RFC 4291's deprecated ::a.b.c.d


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, in every form a network may route to them: IPv4-mapped
    (::ffff:a.b.c.d), NAT64 (64:ff9b::a.b.c.d), 6to4 (2002:aabb:ccdd::), Teredo (2001:0::, server and client)
    and IPv4-compatible (::a.b.c.d, as ::7f00:1 for 127.0.0.1)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in NAT64 or (ip in IPV4_COMPATIBLE and int(ip) > 1):  # not :: nor ::1, judged as IPv6 themselves
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def is_public(address: str) -> bool:
    """Whether `address` (the one actually connected to) is a public unicast one, judged by the ipaddress module's
    classification of the address and of every IPv4 address embedded in it."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) is link-local anyway
    candidates = [ip] + (embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else [])
    return all(c.is_global and not c.is_multicast for c in candidates)


def resolve(host: str, port: int, timeout_s: float) -> list[str]:
    """The host's addresses; getaddrinfo has no timeout of its own, so it runs in a daemon thread that is
    abandoned past timeout_s (a request never hangs on a slow resolver)."""
    found: list[str] = []
    failure: list[BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.extend(dict.fromkeys(str(info[4][0]) for info in infos))
        except (OSError, UnicodeError) as exc:
            failure.append(exc)

    thread = threading.Thread(target=lookup, name="webhook-dns", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise WebhookUrlRefused(f"host {host} did not resolve within {timeout_s:g} s")
    if failure or not found:
        raise WebhookUrlRefused(f"host {host} does not resolve")
    return found


def public_addresses(host: str, port: int, timeout_s: float) -> list[str]:
    """The host's addresses, all of them public, or WebhookUrlRefused. Every address must be public: with a
    name that also resolves to a private one, the connection could be steered there."""
    addresses = resolve(host, port, timeout_s)
    private = [a for a in addresses if not is_public(a)]
    if private:
        raise WebhookUrlRefused(
            f"host {host} resolves to {private[0]}, a loopback, private, link-local or reserved address; "
            "webhooks go to public addresses only (FTAAS_WEBHOOK_ALLOW_PRIVATE_URLS=true allows others)"
        )
    return addresses


def check_url(url: str, *, allow_private: bool, dns_timeout_s: float) -> None:
    """At registration: the URL's shape, and unless private addresses are allowed, its addresses now."""
    host, port = url_host_and_port(url)
    if not allow_private:
        public_addresses(host, port, dns_timeout_s)


class CheckedBackend(httpcore.SyncBackend):
    """httpcore's network backend, resolving the host within dns_timeout_s and connecting only to addresses
    that pass the check (all of them, with allow_private). TLS still verifies the certificate against the URL's
    host name: httpcore passes it on as server_hostname after connecting."""

    def __init__(self, *, allow_private: bool, dns_timeout_s: float) -> None:
        self.allow_private, self.dns_timeout_s = allow_private, dns_timeout_s

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        if self.allow_private:
            addresses = resolve(host, port, self.dns_timeout_s)
        else:
            addresses = public_addresses(host, port, self.dns_timeout_s)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:  # try the host's next address
                last_error = exc
        raise last_error  # type: ignore[misc]


class CheckedTransport(httpx.HTTPTransport):
    """httpx's transport with its connection pool on CheckedBackend. httpx takes no network backend, so the
    pool it made is replaced by one built with httpcore's public `network_backend` argument."""

    def __init__(self, *, allow_private: bool, dns_timeout_s: float) -> None:
        super().__init__(trust_env=False, retries=0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=1,
            network_backend=CheckedBackend(allow_private=allow_private, dns_timeout_s=dns_timeout_s),
        )


def webhook_client(*, allow_private: bool, timeout_s: float, dns_timeout_s: float) -> httpx.Client:
    """One client per delivery: no redirects followed (a 3xx is a failed attempt, and a redirect could point
    anywhere), no proxy from the environment (it would bypass the address check), short timeouts."""
    transport = CheckedTransport(allow_private=allow_private, dns_timeout_s=dns_timeout_s)
    return httpx.Client(transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False)
