"""Which webhook receivers the service will call: http or https URLs on a web port whose host resolves only
to globally routable addresses (unless the operator allows private ones, for development: then any port),
checked when an endpoint is registered and again before every attempt, because a name that resolved to a
public address yesterday may not today."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

MAX_URL_CHARS = 2000
# NAT64's well-known prefix carries an IPv4 address in its last 32 bits (RFC 6052).
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Not globally routable, whatever the ipaddress tables of this Python say: IETF protocol assignments,
# deprecated site-local IPv6, the 2023 IPv6 documentation prefix, local-use NAT64, SRv6 SIDs.
REFUSED = [ipaddress.ip_network(n) for n in ("192.0.0.0/24", "fec0::/10", "3fff::/20", "64:ff9b:1::/48",
                                             "5f00::/16", "2001:db8::/32")]
# The ports a public receiver may listen on: a tenant must not probe any port of any host from the workers.
PORTS = (80, 443, 8080, 8443)


class BadUrl(ValueError):
    """A receiver URL the service will not call; the message says why, without naming any address."""


def parse_url(url: str) -> SplitResult:
    """The syntax rules: http or https, a host, no user name or password, at most MAX_URL_CHARS."""
    if len(url) > MAX_URL_CHARS:
        raise BadUrl(f"at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number in range)
    except ValueError as exc:
        raise BadUrl("is not a valid URL") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise BadUrl("must be an http or https URL")
    if "@" in parts.netloc:
        raise BadUrl("must not hold a user name or password")
    if not parts.hostname:
        raise BadUrl("has no host")
    return parts


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (mapped, 6to4, Teredo, NAT64): each must pass too."""
    embedded = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if address in NAT64:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [a for a in embedded if a is not None]


def is_refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, link-local, private, unique-local, multicast, reserved, unspecified, or anything else not
    globally routable (shared address space, documentation ranges), including through an IPv6 form."""
    if isinstance(address, ipaddress.IPv6Address) and any(is_refused(v4) for v4 in _embedded_ipv4(address)):
        return True
    return (address.is_loopback or address.is_link_local or address.is_private or address.is_multicast
            or address.is_reserved or address.is_unspecified or not address.is_global
            or any(address in network for network in REFUSED if network.version == address.version))


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_receiver(url: str, allow_private: bool) -> tuple[SplitResult, list[Address]]:
    """The URL's parts and the addresses its host resolves to, all of them allowed; else :class:`BadUrl`.
    Every address must pass, since the connection could use any of them."""
    parts = parse_url(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    if not allow_private and port not in PORTS:
        raise BadUrl(f"the port must be one of {', '.join(map(str, PORTS))}")
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise BadUrl("the host does not resolve") from exc
    addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos))
    if not addresses:
        raise BadUrl("the host does not resolve")
    if not allow_private and any(is_refused(a) for a in addresses):
        raise BadUrl("the host resolves to a loopback, private, link-local or reserved address (an operator "
                     "can allow such receivers with RLPRUNE_WEBHOOK_ALLOW_PRIVATE)")
    return parts, addresses
