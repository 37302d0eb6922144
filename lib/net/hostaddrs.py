"""This host's own IPv6 addresses, read from the kernel (Linux /proc/net/if_inet6).

The parsing and the choice are pure (`codec/addresses.py`); this module only reads the file.
Elsewhere (no /proc) the lists are empty: the node then offers no IPv6 host candidate, and
still reaches peers through STUN and rendezvous.
"""

from __future__ import annotations

from ..codec.addresses import InterfaceAddress, global_ipv6, parse_if_inet6

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
