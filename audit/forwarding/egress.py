"""Where SIEM forwarding may connect: every address a destination's host resolves to is checked before connecting.

Owners choose a destination's host, and Airlock shows them the first bytes of a receiver's error answer: without a
check, a destination could reach the cloud metadata service or, where the operator says so, this machine or
internal networks. Link-local networks (cloud metadata services live there), the unspecified addresses and the
metadata addresses outside link-local are always refused; `AIRLOCK_AUDIT_DESTINATION_BLOCKED_NETWORKS` adds the
operator's own (e.g. `127.0.0.0/8,::1/128` where organizations must not reach this machine). The check runs on the
resolved addresses and the connection goes to the address checked, so a name that later resolves elsewhere
(DNS rebinding) gains nothing.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from django.conf import settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALWAYS_BLOCKED = (
    "169.254.0.0/16",  # IPv4 link-local: AWS, GCP, Azure, OpenStack metadata (169.254.169.254)
    "fe80::/10",  # IPv6 link-local
    "0.0.0.0/8",  # "this network": 0.0.0.0 reaches this machine on Linux
    "::/128",
    "fd00:ec2::254/128",  # AWS metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "168.63.129.16/32",  # Azure WireServer (host agent, not link-local)
    "fd20:ce::254/128",  # Google Cloud metadata over IPv6
    "fd00:c1::a9fe:a9fe/128",  # Oracle Cloud metadata over IPv6
)
# IPv6 forms that carry an IPv4 address a NAT64 gateway or a tunnel would reach.
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: the operator picks the prefix length
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
# RFC 6052 section 2.2: where the IPv4 address sits for each prefix length (bits 64 to 71 are skipped).
_NAT64_LAYOUTS = {32: (32,), 40: (40, 72), 48: (48, 72), 56: (56, 72), 64: (72,), 96: (96,)}
SETTING = "AIRLOCK_AUDIT_DESTINATION_BLOCKED_NETWORKS"


class BlockedAddressError(OSError):
    """A destination's host is, or resolves to, an address in a blocked network."""


_ALWAYS = tuple(ipaddress.ip_network(network) for network in ALWAYS_BLOCKED)


def blocked_networks() -> tuple[IPNetwork, ...]:
    """The always-blocked networks and the operator's."""
    return _ALWAYS + tuple(getattr(settings, "AUDIT_DESTINATION_BLOCKED_NETWORKS", ()))


def _reached(ip: IPAddress) -> list[IPAddress]:
    """`ip` and every IPv4 address it stands for: IPv4-mapped, IPv4-compatible, 6to4, Teredo and NAT64 forms."""
    if isinstance(ip, ipaddress.IPv4Address):
        return [ip]
    reached: list[IPAddress] = [ip]
    if ip.ipv4_mapped is not None:
        reached.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        reached.append(ip.sixtofour)
    if ip.teredo is not None:
        reached.extend(ip.teredo)
    if ip in _NAT64_WELL_KNOWN or ip in _IPV4_TRANSLATED or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        reached.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip in _NAT64_LOCAL:
        # Every layout the prefix could have; 0.0.0.0/8 is what the other layouts read from a real one's zeros.
        candidates = (_nat64_embedded(ip, length) for length in _NAT64_LAYOUTS if length >= 48)
        reached.extend(candidate for candidate in candidates if candidate not in _THIS_NETWORK)
    return reached


def _nat64_embedded(ip: ipaddress.IPv6Address, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address an RFC 6052 address with a prefix of `prefix_length` bits carries."""
    bits = format(int(ip), "0128b")
    starts = _NAT64_LAYOUTS[prefix_length]
    if len(starts) == 1:
        embedded = bits[starts[0] : starts[0] + 32]
    else:  # split around the u octet (bits 64 to 71)
        before = 64 - starts[0]
        embedded = bits[starts[0] : 64] + bits[72 : 72 + 32 - before]
    return ipaddress.IPv4Address(int(embedded, 2))


def blocking_network(address: str) -> IPNetwork | None:
    """The blocked network `address`, or an IPv4 address it carries (see `_reached`), lies in; or None."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone index
    networks = blocked_networks()
    for candidate in _reached(ip):
        for network in networks:
            if candidate.version == network.version and candidate in network:
                return network
    return None


def refusal(address: str, network: IPNetwork) -> str:
    """Why a destination may not reach `address`, naming the setting that decides."""
    return (
        f"{address} lies in {network}, a network SIEM destinations may not reach "
        f"(link-local and cloud metadata addresses always, and {SETTING})"
    )


def create_connection(
    address: tuple[str, int], timeout: float | None = None, source_address: object = None
) -> socket.socket:
    """`socket.create_connection` refusing a host any of whose addresses is blocked; connects to the checked one.

    Takes http.client's arguments (`source_address` is never set here). Raises BlockedAddressError (an OSError,
    so a sender reports it like any other connection failure).
    """
    host, port = address
    candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_ignored, sockaddr in candidates:
        network = blocking_network(sockaddr[0])
        if network is not None:
            raise BlockedAddressError(errno.EACCES, refusal(sockaddr[0], network))
    last_error: OSError | None = None
    for family, kind, protocol, _name, sockaddr in candidates:
        sock = socket.socket(family, kind, protocol)
        try:
            if isinstance(timeout, int | float):  # http.client may pass socket's "global default" sentinel
                sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
    raise last_error or OSError(f"{host} has no address")
