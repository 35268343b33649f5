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
)
# IPv6 forms that carry an IPv4 address a NAT64 gateway or a tunnel would reach (RFC 6052 and 8215).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
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
    if any(ip in network for network in _NAT64) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        reached.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return reached


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

    Raises BlockedAddressError (an OSError, so a sender reports it like any other connection failure).
    """
    host, port = address
    candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_ignored, sockaddr in candidates:
        network = blocking_network(sockaddr[0])
        if network is not None:
            error = BlockedAddressError(refusal(sockaddr[0], network))
            error.strerror = str(error)
            raise error
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
