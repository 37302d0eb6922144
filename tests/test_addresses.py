"""Address classification, the socket's address forms and /proc/net/if_inet6 (codec/addresses.py,
net/hostaddrs.py)."""

from __future__ import annotations

import pytest

from chatp2p_core.codec import addresses as a
from chatp2p_core.codec.addresses import address_scope, global_ipv6, parse_if_inet6, plain_address, socket_address
from chatp2p_core.net import hostaddrs


@pytest.mark.parametrize("ip, scope", [
    ("127.0.0.1", a.LOOPBACK), ("127.5.6.7", a.LOOPBACK), ("::1", a.LOOPBACK),
    ("169.254.1.1", a.LINK_LOCAL), ("fe80::1", a.LINK_LOCAL), ("fe80::1%eth0", a.LINK_LOCAL),
    ("febf::1", a.LINK_LOCAL),
    ("224.0.0.251", a.MULTICAST), ("239.1.2.3", a.MULTICAST), ("ff02::1", a.MULTICAST), ("ff0e::1", a.MULTICAST),
    ("0.0.0.0", a.UNSPECIFIED), ("::", a.UNSPECIFIED),
    ("10.1.2.3", a.PRIVATE), ("172.16.0.1", a.PRIVATE), ("172.31.255.254", a.PRIVATE), ("192.168.1.1", a.PRIVATE),
    ("100.64.0.1", a.PRIVATE), ("100.127.255.254", a.PRIVATE), ("fc00::1", a.PRIVATE), ("fd12:3456::1", a.PRIVATE),
    ("240.0.0.1", a.RESERVED), ("255.255.255.255", a.RESERVED), ("0.1.2.3", a.RESERVED),
    # Documentation prefixes stand for the internet in tests: global.
    ("192.0.2.1", a.GLOBAL), ("198.51.100.1", a.GLOBAL), ("203.0.113.9", a.GLOBAL), ("2001:db8::1", a.GLOBAL),
    ("8.8.8.8", a.GLOBAL), ("172.32.0.1", a.GLOBAL), ("100.128.0.1", a.GLOBAL), ("2a00:1450::1", a.GLOBAL),
    ("fec0::1", a.PRIVATE),  # the old site-local prefix
    # An IPv4-mapped address is judged as its IPv4 address.
    ("::ffff:127.0.0.1", a.LOOPBACK), ("::ffff:192.168.0.1", a.PRIVATE), ("::ffff:198.51.100.1", a.GLOBAL),
])
def test_address_scope(ip, scope):
    assert address_scope(ip) == scope
    assert scope in a.SCOPES


@pytest.mark.parametrize("text", ["", "example.org", "1.2.3", "::g", "1.2.3.4:5", "[::1]"])
def test_address_scope_refuses_what_is_not_an_ip(text):
    with pytest.raises(ValueError):
        address_scope(text)
    assert a.scope_or_none(text) is None


def test_plain_address_unmaps_ipv4_and_drops_the_extra_fields_of_ipv6():
    assert plain_address(("::ffff:192.0.2.1", 4000, 0, 0)) == ("192.0.2.1", 4000)
    assert plain_address(("2001:db8::1", 4000, 0, 0)) == ("2001:db8::1", 4000)
    assert plain_address(("fe80::1%eth0", 4000, 0, 2)) == ("fe80::1%eth0", 4000)
    assert plain_address(("192.0.2.1", 4000)) == ("192.0.2.1", 4000)
    assert plain_address(("::ffff:0:1", 4000, 0, 0)) == ("::ffff:0:1", 4000)  # not an IPv4 spelling


def test_socket_address_maps_ipv4_only_on_a_dual_stack_socket():
    assert socket_address(("192.0.2.1", 4000), True) == ("::ffff:192.0.2.1", 4000)
    assert socket_address(("192.0.2.1", 4000), False) == ("192.0.2.1", 4000)
    assert socket_address(("2001:db8::1", 4000), True) == ("2001:db8::1", 4000)
    assert socket_address(("localhost", 4000), True) == ("localhost", 4000)  # names are left to sendto
    for mapped in (socket_address(("203.0.113.5", 1), True), ("2001:db8::5", 1)):
        assert plain_address(mapped) == plain_address(socket_address(plain_address(mapped), True))


IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
20010db8000000000000000000000010 02 40 00 80     eth0
20010db80000000011223344556677aa 02 40 00 01     eth0
20010db8000000000000000000000011 02 40 00 20     eth0
20010db8000000000000000000000012 02 40 00 40     eth0
20010db8000000000000000000000013 02 40 00 08     eth0
fd000000000000000000000000000002 02 40 00 80     eth0
fe8000000000000000fc00fffe000001 02 40 20 80     eth0
ff020000000000000000000000000001 02 40 00 80     eth0
garbage line
zz0db8000000000000000000000000ff 02 40 00 80     eth0
20010db8000000000000000000000010 03 40 00 80     eth1
"""


def test_parse_if_inet6_reads_every_well_formed_line():
    entries = parse_if_inet6(IF_INET6)
    assert len(entries) == 10
    assert entries[1] == a.InterfaceAddress("2001:db8::10", 64, 0x00, 0x80, "eth0")
    assert entries[0].scope == a.LOOPBACK and entries[7].scope == a.LINK_LOCAL


def test_global_ipv6_keeps_usable_global_addresses_temporary_first():
    """No loopback, link-local, ULA, multicast, deprecated (0x20), tentative (0x40) or DAD-failed
    (0x08) address; the temporary one (0x01) first; each address once."""
    assert global_ipv6(parse_if_inet6(IF_INET6)) == ["2001:db8::1122:3344:5566:77aa", "2001:db8::10"]
    assert global_ipv6([]) == []


def test_host_reader_reads_the_file_and_survives_its_absence(tmp_path):
    path = tmp_path / "if_inet6"
    path.write_text(IF_INET6)
    assert hostaddrs.global_ipv6_addresses(str(path)) == ["2001:db8::1122:3344:5566:77aa", "2001:db8::10"]
    assert hostaddrs.interface_ipv6_addresses(str(tmp_path / "missing")) == []
    assert hostaddrs.global_ipv6_addresses(str(tmp_path / "missing")) == []
    path.write_bytes(b"\xff\xfe garbage \x00\n" * 100)
    assert hostaddrs.global_ipv6_addresses(str(path)) == []


def test_this_machines_list_parses():
    for entry in hostaddrs.interface_ipv6_addresses():
        assert entry.scope in a.SCOPES
    assert all(address_scope(ip) == a.GLOBAL for ip in hostaddrs.global_ipv6_addresses())


def test_a_typed_address_resolves_in_the_families_the_socket_can_reach():
    """`p2p connect` addresses: `[v6]:port` and `v4:port`, refused when the socket cannot
    send to that family, and an IPv4-mapped literal spelled as the IPv4 address."""
    import socket

    from chatp2p_core.errors import Invalid, NotFound
    from chatp2p_core.services.connect import resolve

    both = (socket.AF_INET, socket.AF_INET6)
    assert resolve("[2001:db8::1]:4000", both) == ("2001:db8::1", 4000)
    assert resolve("192.0.2.1:4000", both) == ("192.0.2.1", 4000)
    assert resolve("[::ffff:192.0.2.1]:4000", both) == ("192.0.2.1", 4000)
    assert resolve("[2001:db8::1]:4000", (socket.AF_INET6,)) == ("2001:db8::1", 4000)
    with pytest.raises(NotFound):
        resolve("[2001:db8::1]:4000", (socket.AF_INET,))
    with pytest.raises(NotFound):
        resolve("192.0.2.1:4000", (socket.AF_INET6,))
    for bad in ("2001:db8::1", "[2001:db8::1]", "[2001:db8::1:4000", "[::1]:0", "[::1]:99999", ""):
        with pytest.raises(Invalid):
            resolve(bad, both)
