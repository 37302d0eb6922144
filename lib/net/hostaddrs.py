"""This host's own addresses: the IPv6 ones read from the kernel (Linux /proc/net/if_inet6),
and the source address the routing table picks towards a destination.

The parsing and the choice are pure (`codec/addresses.py`); this module only asks the kernel.
Elsewhere (no /proc) the lists are empty: the node then offers no IPv6 host candidate, and
still reaches peers through STUN and rendezvous.
"""

from __future__ import annotations

import socket
from typing import Optional

from ..codec.addresses import GLOBAL, InterfaceAddress, global_ipv6, is_ipv6, parse_if_inet6, plain_address, \
    scope_or_none

# Destinations whose route picks our outward address (documentation prefixes: a UDP connect
# sends nothing, it only asks the routing table).
OUTWARD_PROBES = (("192.0.2.1", 9), ("2001:db8::1", 9))

IF_INET6 = "/proc/net/if_inet6"


def interface_ipv6_addresses(path: str = IF_INET6) -> list[InterfaceAddress]:
    """Every IPv6 address of every interface, as the kernel lists it ([] when unreadable)."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return parse_if_inet6(handle.read())
    except OSError:
        return []


def global_ipv6_addresses(path: str = IF_INET6) -> list[str]:
    """The global IPv6 addresses others can reach this host at (`codec.addresses.global_ipv6`):
    no loopback, link-local, ULA, tentative or deprecated address."""
    return global_ipv6(interface_ipv6_addresses(path))


def local_ip_towards(address: tuple) -> Optional[str]:
    """Our interface address used to reach `address` (a UDP connect sends nothing)."""
    try:
        probe = socket.socket(socket.AF_INET6 if is_ipv6(address[0]) else socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        probe.connect((address[0], address[1] or 9))
        return plain_address(probe.getsockname())[0]
    except OSError:
        return None
    finally:
        probe.close()


def outward_addresses() -> list[str]:
    """The addresses this host reaches the internet from: the IPv4 source of the default
    route, and the IPv6 one when it is global. A socket bound to the unspecified address would
    also talk from loopback and link-local addresses, where nothing answers."""
    found = []
    for probe in OUTWARD_PROBES:
        ip = local_ip_towards(probe)
        if ip and (not is_ipv6(ip) or scope_or_none(ip) == GLOBAL):
            found.append(ip)
    return found
