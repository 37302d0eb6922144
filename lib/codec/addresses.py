"""IP addresses, pure: what kind of address an IP is, the socket's address forms and the
kernel's list of interface addresses, parsed. No I/O (`net/hostaddrs.py` reads the list).

Everything above the transport sees a UDP endpoint as a plain ``(host, port)`` 2-tuple, IPv4
as dotted text, IPv6 as compressed text. The node's socket is dual-stack (an AF_INET6 socket
that also carries IPv4), whose addresses are 4-tuples with IPv4 written as ``::ffff:a.b.c.d``:
`plain_address` and `socket_address` translate at that one boundary, so an IPv4 peer has one
spelling everywhere (candidate lists, known hosts, rate limits by host).

`address_scope` says where an address is reachable from. It decides which addresses a node
offers to others (candidates, DHT records) and which it accepts from strangers.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Optional, Union

from ..util import Address

LOOPBACK = "loopback"
LINK_LOCAL = "link_local"
MULTICAST = "multicast"
UNSPECIFIED = "unspecified"
RESERVED = "reserved"      # IPv4 240/4, 0/8 and broadcast, unallocated IPv6 space: unusable
PRIVATE = "private"        # RFC 1918, CGNAT 100.64/10, IPv6 ULA fc00::/7 (and old site-local)
GLOBAL = "global"          # everything else, documentation prefixes included (tests use them)
SCOPES = (LOOPBACK, LINK_LOCAL, MULTICAST, UNSPECIFIED, RESERVED, PRIVATE, GLOBAL)

_PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10"))
_ZERO_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_MAPPED_PREFIX = "::ffff:"

# /proc/net/if_inet6: the kernel's scope column and the flags (IFA_F_* in <linux/if_addr.h>)
# that make an address unusable as a source: DAD failed or still running, or deprecated
# (its preferred lifetime is over: the kernel no longer picks it for new traffic).
KERNEL_SCOPE_GLOBAL = 0x00
IFA_F_TEMPORARY = 0x01
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
_UNUSABLE_FLAGS = IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE

# The byte form of an endpoint others are told to send to (PROTOCOL §9.1; rendezvous records,
# group HINTs): family-tagged by its first byte. An IPv4 address never starts with 0xF0-0xFF
# (240/4 is reserved and refused), so the tag is unambiguous.
ENDPOINT_LEN = 6  # IPv4 (4) + port (2)
IPV6_TAG = 0xF6  # then IPv6 (16) + port (2)
ENDPOINT6_LEN = 1 + 16 + 2


def address_scope(ip: str) -> str:
    """One of `SCOPES` for an IP address in text (an IPv6 zone ``%eth0`` is ignored, an
    IPv4-mapped IPv6 address is judged as its IPv4 address). ValueError if `ip` is not an IP
    address."""
    address = ipaddress.ip_address(str(ip).split("%", 1)[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return UNSPECIFIED
    if address.is_loopback:
        return LOOPBACK
    if address.is_multicast:
        return MULTICAST
    if address.is_link_local:
        return LINK_LOCAL
    if any(address in network for network in _PRIVATE_NETWORKS):
        return PRIVATE
    if address.is_reserved or (address.version == 4 and address in _ZERO_NETWORK):
        return RESERVED  # IPv4 broadcast counts as reserved in `ipaddress` (240/4)
    return GLOBAL


def scope_or_none(ip: str) -> Optional[str]:
    """`address_scope`, or None for text that is not an IP address (a host name)."""
    try:
        return address_scope(ip)
    except ValueError:
        return None


def is_ipv6(host: str) -> bool:
    """An IPv6 address in text (the one test the hot paths need: IPv4 text has no colon)."""
    return ":" in host


def plain_address(address: tuple) -> Address:
    """A socket address as the rest of the node spells it: ``(host, port)``, an IPv4-mapped
    IPv6 address back to IPv4 text. Accepts the 2-tuples of an AF_INET socket and the
    4-tuples (host, port, flowinfo, scope id) of an AF_INET6 one; an IPv6 zone stays in
    the host text (``fe80::1%eth0``), as Python writes it."""
    host = address[0]
    if host.startswith(_MAPPED_PREFIX) and "." in host:
        return host[len(_MAPPED_PREFIX):], address[1]
    if len(address) == 2:
        return address  # type: ignore[return-value]
    return host, address[1]


def socket_address(address: Address, dual_stack: bool) -> Address:
    """What to pass to `sendto`: on a dual-stack socket an IPv4 ``(host, port)`` becomes its
    IPv4-mapped form; anything else is returned as it is."""
    host = address[0]
    if dual_stack and ":" not in host and host.replace(".", "").isdigit():
        return _MAPPED_PREFIX + host, address[1]
    return address


def encode_endpoint(address: Address, error: type[Exception]) -> bytes:
    """``(ip text, port)`` -> 6 bytes (IPv4 ‖ port) or 19 (IPV6_TAG ‖ IPv6 ‖ port); `error`
    otherwise. Refuses what no one should be told to send to: unspecified, multicast and
    reserved (including broadcast) addresses, IPv6 link-local ones (their zone means nothing
    to another host), IPv4-mapped IPv6 (an IPv4 address has one spelling), port 0."""
    try:
        host, port = address
        ip = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        raise error(f"not an IP (host, port) address: {address!r}") from None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 0xFFFF:
        raise error(f"port out of range in {address!r}")
    if ip.version == 6 and ip.ipv4_mapped is not None:
        raise error(f"IPv4-mapped address {host}: send it as IPv4")
    unusable: tuple[str, ...] = (UNSPECIFIED, MULTICAST, RESERVED)
    if ip.version == 6:
        unusable += (LINK_LOCAL,)
    if address_scope(host) in unusable:
        raise error(f"unusable address {host}")
    if ip.version == 4:
        return ip.packed + port.to_bytes(2, "big")
    return bytes([IPV6_TAG]) + ip.packed + port.to_bytes(2, "big")


def endpoint_length(data: bytes, offset: int, error: type[Exception]) -> int:
    """The length of the encoded endpoint that starts at `offset` (6, or 19 after IPV6_TAG)."""
    if offset >= len(data):
        raise error("address missing")
    return ENDPOINT6_LEN if data[offset] == IPV6_TAG else ENDPOINT_LEN


def decode_endpoint(data: bytes, error: type[Exception]) -> Address:
    """6 or 19 bytes -> ``(ip text, port)``, with encode_endpoint's checks."""
    data = bytes(data)
    if len(data) != endpoint_length(data, 0, error):
        raise error(f"an address is {ENDPOINT_LEN} or {ENDPOINT6_LEN} bytes, got {len(data)}")
    ip: Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
    if len(data) == ENDPOINT_LEN:
        ip = ipaddress.IPv4Address(data[:4])
    else:
        ip = ipaddress.IPv6Address(data[1:17])
    address = (str(ip), int.from_bytes(data[-2:], "big"))
    encode_endpoint(address, error)
    return address


def split_endpoint(data: bytes, offset: int, error: type[Exception]) -> tuple[Address, int]:
    """The endpoint at `offset` in `data`, and the offset after it."""
    end = offset + endpoint_length(data, offset, error)
    if end > len(data):
        raise error("address cut short")
    return decode_endpoint(data[offset:end], error), end


@dataclasses.dataclass(frozen=True)
class InterfaceAddress:
    """One line of /proc/net/if_inet6."""

    ip: str
    prefix_len: int
    kernel_scope: int
    flags: int
    interface: str

    @property
    def usable(self) -> bool:
        """The kernel would use it as a source now: not tentative, failed or deprecated."""
        return not self.flags & _UNUSABLE_FLAGS

    @property
    def scope(self) -> str:
        return address_scope(self.ip)


def parse_if_inet6(text: str) -> list[InterfaceAddress]:
    """The lines of /proc/net/if_inet6 (32 hex digits of address, then interface index,
    prefix length, scope and flags in hex, then the interface name); malformed lines are
    skipped."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        try:
            ip = str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
            prefix_len, kernel_scope, flags = (int(f, 16) for f in fields[2:5])
        except ValueError:
            continue
        found.append(InterfaceAddress(ip, prefix_len, kernel_scope, flags, fields[5]))
    return found


def global_ipv6(addresses: list[InterfaceAddress]) -> list[str]:
    """The addresses others on the internet can reach us at: global scope for the kernel and
    for `address_scope` (so no ULA), usable now, each once. Temporary addresses (privacy
    extensions, RFC 8981) come first: the kernel prefers them as the source of outgoing
    traffic, so they are the ones a peer's firewall and ours open for, and they do not reveal
    a long-lived interface identifier. Otherwise the kernel's order."""
    chosen = [a for a in addresses
              if a.kernel_scope == KERNEL_SCOPE_GLOBAL and a.usable and a.scope == GLOBAL]
    chosen.sort(key=lambda a: not a.flags & IFA_F_TEMPORARY)
    return list(dict.fromkeys(a.ip for a in chosen))
