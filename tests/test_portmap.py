"""The PortMapper state machine (lib/net/portmap.py) alert by alert, on a fake clock.

The alerts here are stand-ins with the attributes of libtorrent's (what(), mapping,
map_protocol, map_transport, external_port, error, external_address), carrying libtorrent's
real enums; tests/test_portmap_netns.py proves the mapping against a real router."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import libtorrent as lt
import pytest

from chatp2p_core.net.portmap import PortMapper, usable_external_ip
from clock import FakeClock

NATPMP, UPNP = lt.portmap_transport.natpmp, lt.portmap_transport.upnp
UDP, TCP = lt.portmap_protocol.udp, lt.portmap_protocol.tcp
PORT = 40000


class Session:
    """Records the port-mapping calls PortMapper makes on a libtorrent session."""

    def __init__(self, handles: list[int], natpmp: bool = True, upnp: bool = True) -> None:
        self.handles = handles
        self.settings = {"enable_natpmp": natpmp, "enable_upnp": upnp, "enable_dht": False}
        self.added: list[tuple[Any, int, int]] = []
        self.deleted: list[int] = []

    def add_port_mapping(self, protocol, external, local):
        self.added.append((protocol, external, local))
        return list(self.handles)

    def delete_port_mapping(self, handle):
        self.deleted.append(handle)

    def get_settings(self):
        return dict(self.settings)


@dataclasses.dataclass
class Error:
    text: str

    def message(self) -> str:
        return self.text


# The attributes libtorrent 2.1's bindings give each alert (portmap_error_alert has no
# map_protocol, no alert has the local address).
FIELDS = {
    "portmap": ("mapping", "map_protocol", "map_transport", "external_port"),
    "portmap_error": ("mapping", "map_transport", "error"),
    "portmap_log": ("map_transport",),
    "external_ip": ("external_address",),
    "dht_put": (),
}
DEFAULTS = {"mapping": 2, "map_protocol": UDP, "map_transport": NATPMP, "external_port": PORT,
            "error": Error("refused"), "external_address": "198.51.100.11"}


class Alert:
    """A stand-in for one libtorrent alert of `kind`, with only that kind's attributes."""

    def __init__(self, kind: str, **values: Any) -> None:
        assert set(values) <= set(FIELDS[kind]), f"{kind} alerts have no {set(values) - set(FIELDS[kind])}"
        self.kind = kind
        for name in FIELDS[kind]:
            setattr(self, name, values.get(name, DEFAULTS[name]))

    def what(self) -> str:
        return self.kind

    def message(self) -> str:
        return f"{self.kind} alert"


def started(handles=(2, 2), deadline=60.0, **protocols):
    session, clock, changes = Session(list(handles), **protocols), FakeClock(), []
    mapper = PortMapper(session, PORT, on_change=changes.append, deadline=deadline, clock=clock)
    mapper.start()
    return mapper, session, clock, changes


def test_start_asks_for_the_same_external_port_and_reports_trying():
    mapper, session, _, changes = started()
    assert session.added == [(UDP, PORT, PORT)]
    assert mapper.status() == {"state": "trying", "protocol": None, "external": None, "error": None}
    assert mapper.mapped is None and changes == []


def test_mapped_needs_both_the_router_port_and_the_external_address():
    mapper, _, _, changes = started()
    assert mapper.on_alert(Alert("portmap", external_port=40001))
    assert mapper.status()["state"] == "trying" and changes == []
    assert mapper.on_alert(Alert("external_ip"))
    assert mapper.mapped == ("198.51.100.11", 40001)
    assert mapper.status() == {"state": "mapped", "protocol": "natpmp",
                               "external": "198.51.100.11:40001", "error": None}
    assert changes == [("198.51.100.11", 40001)]
    mapper.on_alert(Alert("portmap", external_port=40001))  # a refresh: no new change
    assert changes == [("198.51.100.11", 40001)]


def test_alerts_about_other_mappings_change_nothing():
    mapper, _, _, changes = started()
    mapper.on_alert(Alert("external_ip"))
    assert mapper.on_alert(Alert("portmap", mapping=1))  # libtorrent's own listen port
    assert mapper.on_alert(Alert("portmap", map_protocol=TCP))
    assert mapper.on_alert(Alert("portmap_error", mapping=0))
    assert not mapper.on_alert(Alert("dht_put"))
    assert mapper.status()["state"] == "trying" and changes == []


@pytest.mark.parametrize("address", ["127.0.0.1", "224.0.0.1", "0.0.0.0", "169.254.1.1",
                                     "255.255.255.255", "240.0.0.1", "2001:db8::1", "garbage", ""])
def test_an_unusable_external_address_is_ignored(address):
    mapper, _, _, changes = started()
    mapper.on_alert(Alert("portmap"))
    mapper.on_alert(Alert("external_ip", external_address=address))
    assert mapper.mapped is None and changes == []
    assert usable_external_ip(address) is None


def test_a_later_bad_external_address_keeps_the_good_one():
    mapper, _, _, _ = started()
    mapper.on_alert(Alert("external_ip"))
    mapper.on_alert(Alert("external_ip", external_address="127.0.0.1"))
    mapper.on_alert(Alert("portmap"))
    assert mapper.mapped == ("198.51.100.11", PORT)


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_an_impossible_external_port_is_a_failure_not_a_mapping(port):
    mapper, _, clock, _ = started(deadline=5)
    mapper.on_alert(Alert("external_ip"))
    mapper.on_alert(Alert("portmap", external_port=port))
    assert mapper.mapped is None
    clock.advance(5)
    assert mapper.status() == {"state": "unavailable", "protocol": None, "external": None,
                               "error": f"natpmp: router gave port {port}"}


def test_a_silent_router_is_unavailable_at_the_deadline_not_before():
    mapper, _, clock, changes = started(deadline=30)
    clock.advance(29.9)
    mapper.tick()
    assert mapper.status()["state"] == "trying"
    clock.advance(0.1)
    status = mapper.status()
    assert status["state"] == "unavailable" and "no mapping from the router" in status["error"]
    assert changes == []


def test_refused_by_both_protocols_is_unavailable_at_once_with_the_reasons():
    mapper, _, _, _ = started()
    mapper.on_alert(Alert("portmap_error", error=Error("not authorized")))
    assert mapper.status() == {"state": "trying", "protocol": None, "external": None,
                               "error": "natpmp: not authorized"}
    mapper.on_alert(Alert("portmap_error", map_transport=UPNP, error=Error("")))
    assert mapper.status() == {"state": "unavailable", "protocol": None, "external": None,
                               "error": "natpmp: not authorized; upnp: refused"}


def test_refused_by_the_only_protocol_on_is_unavailable_at_once():
    mapper, _, _, _ = started(natpmp=False)
    mapper.on_alert(Alert("portmap_error", map_transport=UPNP, error=Error("unknown UPnP error (606)")))
    assert mapper.status() == {"state": "unavailable", "protocol": None, "external": None,
                               "error": "upnp: unknown UPnP error (606)"}


def test_a_port_without_an_external_address_is_unavailable_at_the_deadline():
    mapper, _, clock, _ = started(deadline=5)
    mapper.on_alert(Alert("portmap"))
    clock.advance(5)
    status = mapper.status()
    assert status["state"] == "unavailable" and "usable external address" in status["error"]


def test_a_lost_mapping_is_reported_and_a_late_success_maps_again():
    mapper, _, clock, changes = started(deadline=5)
    mapper.on_alert(Alert("external_ip"))
    mapper.on_alert(Alert("portmap"))
    mapper.on_alert(Alert("portmap_error", error=Error("timed out")))
    assert mapper.mapped is None and changes == [("198.51.100.11", PORT), None]
    assert mapper.status()["state"] == "unavailable" and mapper.status()["error"] == "natpmp: timed out"
    clock.advance(100)
    mapper.on_alert(Alert("portmap", map_transport=UPNP, external_port=40002))
    assert mapper.status() == {"state": "mapped", "protocol": "upnp",
                               "external": "198.51.100.11:40002", "error": None}
    assert changes[-1] == ("198.51.100.11", 40002)


def test_one_protocol_failing_keeps_the_other_ones_mapping():
    mapper, _, _, changes = started()
    mapper.on_alert(Alert("external_ip"))
    mapper.on_alert(Alert("portmap", map_transport=UPNP))
    mapper.on_alert(Alert("portmap_error"))
    assert mapper.status()["state"] == "mapped" and mapper.status()["protocol"] == "upnp"
    assert changes == [("198.51.100.11", PORT)]


def test_stop_deletes_each_mapping_once_and_reports_the_change():
    mapper, session, _, changes = started(handles=(2, 2, 3))
    mapper.on_alert(Alert("external_ip"))
    mapper.on_alert(Alert("portmap"))
    mapper.stop()
    mapper.stop()
    assert session.deleted == [2, 3]
    assert mapper.status() == {"state": "off", "protocol": None, "external": None, "error": None}
    assert changes == [("198.51.100.11", PORT), None]
    mapper.on_alert(Alert("portmap"))  # a late answer after stop maps nothing
    assert mapper.mapped is None


def test_a_session_without_port_mappers_is_unavailable_and_start_runs_once():
    mapper, session, _, _ = started(handles=())
    status = mapper.status()
    assert status["state"] == "unavailable" and "no port mapper" in status["error"]
    mapper.start()
    assert len(session.added) == 1
    mapper.stop()
    assert session.deleted == []


def test_a_failing_on_change_is_logged_and_the_mapper_goes_on(caplog):
    def broken(mapped):
        raise RuntimeError("owner bug")

    mapper = PortMapper(Session([2]), PORT, on_change=broken, clock=FakeClock())
    mapper.start()
    with caplog.at_level(logging.ERROR, logger="chatp2p.portmap"):
        mapper.on_alert(Alert("external_ip"))
        mapper.on_alert(Alert("portmap"))
    assert mapper.mapped == ("198.51.100.11", PORT)
    assert "on_change failed" in caplog.text


def test_log_alerts_go_to_debug(caplog):
    mapper, _, _, _ = started()
    with caplog.at_level(logging.DEBUG, logger="chatp2p.portmap"):
        assert mapper.on_alert(Alert("portmap_log"))
    assert "portmap_log alert" in caplog.text


@pytest.mark.parametrize("port", [0, 65536, -5])
def test_a_local_port_out_of_range_is_refused(port):
    with pytest.raises(ValueError):
        PortMapper(Session([2]), port)


def test_remap_deletes_and_asks_again_and_reports_both_changes():
    mapper, session, _, changes = started(handles=(2,))
    mapper.on_alert(Alert("external_ip"))
    mapper.on_alert(Alert("portmap"))
    session.handles = [2, 3]
    mapper.remap()
    assert session.deleted == [2] and len(session.added) == 2
    assert mapper.status()["state"] == "trying" and changes == [("198.51.100.11", PORT), None]
    mapper.on_alert(Alert("portmap", mapping=3))
    assert changes[-1] == ("198.51.100.11", PORT) and mapper.status()["state"] == "mapped"


def test_remap_when_off_does_nothing():
    session = Session([2])
    PortMapper(session, PORT, clock=FakeClock()).remap()
    assert session.added == [] and session.deleted == []
