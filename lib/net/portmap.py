"""Port mapping: ask the home router to forward the node's P2P UDP port (NAT-PMP/PCP or
UPnP-IGD, through libtorrent's port mapper), so that a peer anywhere can reach the node
directly at the mapped address, even behind a NAT that defeats hole punching.

The caller owns the `libtorrent.session` (created with `enable_natpmp`/`enable_upnp` on) and
its alert loop: it forwards every alert to `on_alert` and calls `tick` now and then. libtorrent
maps the port once per listen interface and per protocol (NAT-PMP, UPnP) and reports each
result as an alert; this module turns those into one state:

    off --start--> trying --the router maps it, external IP known--> mapped
                     |                                                  |   ^
                     |                           mapping lost (an error) v   | a late success
                     '--every protocol failed, or the deadline-----> unavailable
    any --stop--> off;   remap() = stop() + start(), after the session replaced a listen socket

A router that refuses or does not answer is not an error: the state is "unavailable" with a
plain reason. libtorrent never gives up on a silent router by itself (NAT-PMP retries each
mapping for about 11 s, one mapping after the other, UPnP searches for minutes), and it takes
miniupnpd's PCP refusal for silence too (it resends), hence the deadline.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any, Callable, Literal, Optional, TypedDict

import libtorrent as lt

log = logging.getLogger("chatp2p.portmap")

DEADLINE = 60.0  # seconds after start() with no mapping before the state is "unavailable"

State = Literal["off", "trying", "mapped", "unavailable"]
Protocol = Literal["natpmp", "upnp"]
Mapped = tuple[str, int]  # (external IPv4 address, external UDP port)


class PortMapStatus(TypedDict):
    state: State
    protocol: Optional[Protocol]
    external: Optional[str]  # "ip:port"
    error: Optional[str]


def _protocol(transport: Any) -> Protocol:
    """libtorrent's portmap_transport as our name for it."""
    return "natpmp" if transport == lt.portmap_transport.natpmp else "upnp"


def usable_external_ip(text: str) -> Optional[str]:
    """The address in canonical form when a peer could reach it, else None. A router (or a
    DHT vote) can name anything: loopback, multicast, unspecified, link-local or reserved
    addresses would send peers somewhere else. NAT-PMP and UPnP-IGD map IPv4 only."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version != 4 or ip.is_loopback or ip.is_multicast or ip.is_unspecified \
            or ip.is_link_local or ip.is_reserved:
        return None
    return str(ip)


class PortMapper:
    """Maps one local UDP port on the router through a libtorrent session; see the module
    docstring. Not thread-safe: call it from the greenlet that polls the session's alerts."""

    def __init__(self, session: Any, local_port: int, *,
                 on_change: Optional[Callable[[Optional[Mapped]], None]] = None,
                 deadline: float = DEADLINE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= local_port <= 65535:
            raise ValueError(f"local port out of range: {local_port}")
        self._session = session
        self.local_port = local_port
        self._on_change = on_change
        self._deadline_after = deadline
        self._clock = clock
        self._state: State = "off"
        self._handles: set[int] = set()  # libtorrent's mapping indices for our port
        self._ports: dict[Protocol, int] = {}  # external port per protocol that mapped it
        self._errors: dict[Protocol, str] = {}  # last failure per protocol
        self._tried: set[Protocol] = set()  # the protocols the session has on
        self._external_ip: Optional[str] = None
        self._deadline = 0.0
        self._reason: Optional[str] = None  # why "unavailable"
        self._mapped: Optional[Mapped] = None

    # -- the owner's calls ---------------------------------------------------------------------

    def start(self) -> None:
        """Ask every port mapper of the session (one per listen interface and protocol) to map
        `local_port` to the same external port. Does nothing unless the state is "off"."""
        if self._state != "off":
            return
        handles = self._session.add_port_mapping(lt.portmap_protocol.udp, self.local_port,
                                                 self.local_port)
        self._handles = {int(handle) for handle in handles}
        settings = self._session.get_settings()
        protocols: tuple[Protocol, ...] = ("natpmp", "upnp")
        self._tried = {p for p in protocols if settings.get(f"enable_{p}")}
        self._ports.clear()
        self._errors.clear()
        self._reason = None
        self._deadline = self._clock() + self._deadline_after
        if self._handles:
            self._state = "trying"
            log.info("port mapping: asking the router to map UDP port %d", self.local_port)
        else:
            self._unavailable("the session has no port mapper (NAT-PMP and UPnP off, or no "
                              "interface with a route to the internet)")

    def stop(self) -> None:
        """Delete the mapping on the router (on exit; the session must still be alive)."""
        if self._state == "off":
            return
        for handle in sorted(self._handles):
            self._session.delete_port_mapping(handle)
        self._handles.clear()
        self._ports.clear()
        self._state = "off"
        self._update()
        log.info("port mapping: removed UDP port %d", self.local_port)

    def remap(self) -> None:
        """Map again on the session's current listen sockets. libtorrent forgets the mappings
        added here, without an alert, when it replaces a listen socket (a `listen_interfaces`
        change, an interface that went away): call this after such a change."""
        if self._state != "off":
            self.stop()
            self.start()

    def on_alert(self, alert: Any) -> bool:
        """Take one session alert; True when it was a port-mapping or external-IP alert (read
        here; the caller may use it too). Alerts about other mappings change nothing."""
        kind = alert.what()
        if kind == "portmap_log":
            log.debug("port mapping: %s", alert.message())
        elif kind == "external_ip":
            self._external_ip = usable_external_ip(str(alert.external_address)) or self._external_ip
        elif kind == "portmap":
            if self._ours(alert):
                port = int(alert.external_port)
                if 1 <= port <= 65535:
                    self._ports[_protocol(alert.map_transport)] = port
                    self._errors.pop(_protocol(alert.map_transport), None)
                else:
                    self._errors[_protocol(alert.map_transport)] = f"router gave port {port}"
        elif kind == "portmap_error":
            if self._ours(alert):
                protocol = _protocol(alert.map_transport)
                self._ports.pop(protocol, None)
                self._errors[protocol] = alert.error.message() or "refused"
        else:
            return False
        self._update()
        return True

    def tick(self) -> None:
        """Check the deadline (call it from the alert loop; `status` calls it too)."""
        self._update()

    # -- what the node reads ---------------------------------------------------------------------

    @property
    def mapped(self) -> Optional[Mapped]:
        """(external ip, external port) once the router mapped the port and the external IP is
        known, else None."""
        return self._mapped

    def status(self) -> PortMapStatus:
        self._update()
        protocol = self._protocol_in_use()
        external = f"{self._mapped[0]}:{self._mapped[1]}" if self._mapped else None
        if self._state == "unavailable":
            error = self._reason
        elif self._state == "trying":
            error = self._error_text()  # one protocol failed, another may still answer
        else:
            error = None
        return {"state": self._state, "protocol": protocol, "external": external, "error": error}

    # -- the state machine ---------------------------------------------------------------------

    def _ours(self, alert: Any) -> bool:
        """The alert is about our mapping. Each mapper numbers its mappings (libtorrent's own
        listen ports come first), so the index tells; portmap_error_alert has no protocol."""
        udp = lt.portmap_protocol.udp
        return (self._state != "off" and int(alert.mapping) in self._handles
                and getattr(alert, "map_protocol", udp) == udp)

    def _protocol_in_use(self) -> Optional[Protocol]:
        if self._mapped is None:
            return None
        return next((p for p in ("natpmp", "upnp") if self._ports.get(p) == self._mapped[1]), None)

    def _error_text(self) -> Optional[str]:
        if not self._errors:
            return None
        return "; ".join(f"{p}: {e}" for p, e in sorted(self._errors.items()))

    def _unavailable(self, reason: str) -> None:
        if self._state != "unavailable":
            log.info("port mapping unavailable: %s", reason)
        self._state = "unavailable"
        self._reason = reason

    def _update(self) -> None:
        """Derive the state and `mapped` from what the alerts said; report a change of
        `mapped`."""
        if self._state != "off":
            port = self._ports.get("natpmp") or self._ports.get("upnp")
            if port is not None and self._external_ip is not None:
                self._state = "mapped"
                self._reason = None
            elif self._state == "mapped" or (self._state == "trying" and self._all_failed()):
                self._unavailable(self._error_text() or "the router removed the mapping")
            elif self._state == "trying" and self._clock() >= self._deadline:
                if port is not None:
                    self._unavailable(f"the router mapped port {port} but did not say a "
                                      "usable external address")
                else:
                    self._unavailable(self._error_text() or "no mapping from the router within "
                                      f"{self._deadline_after:g} s (no NAT-PMP/PCP or UPnP-IGD, "
                                      "or it refused)")
        mapped = None
        if self._state == "mapped":
            port = self._ports.get("natpmp") or self._ports.get("upnp")
            assert port is not None and self._external_ip is not None
            mapped = (self._external_ip, port)
        if mapped != self._mapped:
            self._mapped = mapped
            if mapped is not None:
                log.info("port mapping: UDP port %d is reachable at %s:%d", self.local_port, *mapped)
            if self._on_change is not None:
                try:
                    self._on_change(mapped)
                except Exception:  # the owner's bug must not stop the alert loop
                    log.exception("port mapping: on_change failed")

    def _all_failed(self) -> bool:
        """Every protocol the session has on has failed (a silent one never does: the deadline
        decides then)."""
        return bool(self._tried) and not self._ports and self._tried <= set(self._errors)
