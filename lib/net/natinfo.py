"""Classic NAT typing (RFC 3489: full cone, restricted, port restricted, symmetric) with pystun3.

This is diagnostic information for the user, not something the node's connectivity depends
on (`StunClient.discover` gives the mapping behaviour that matters for hole punching). It
needs a STUN server with two IP addresses that honours CHANGE-REQUEST, and runs on its OWN
socket: pystun3 reads every datagram on the socket it is given, so it must never see the
node's traffic.

pystun3 2.0 has hazards this module contains:

* it resends forever when it gets a STUN error response (a one-address coturn answers
  CHANGE-REQUEST with 420), and it cannot be cancelled from inside: every call runs under a
  `gevent.Timeout`, and a guard around the socket aborts on an error response;
* a datagram with an unknown message type raises KeyError: the guard drops anything that is
  not a well-formed STUN answer from the server (an address pystun3 sent to, or one of the
  IP/port combinations of the server and its CHANGED-ADDRESS that answers to CHANGE-REQUEST
  come from);
* a server that cannot change its address (no CHANGED-ADDRESS, or coturn's one-address mode,
  which names its own address there) makes the verdicts meaningless: the guard aborts;
* for port-restricted NATs the mapped address it returns is None: the guard keeps the one
  from the first answer;
* with `stun_host=None` it walks a list of public servers: the server is always passed.

Whenever pystun3 cannot give a trustworthy verdict the answer is "unknown", with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from typing import Optional

import gevent
from gevent import socket as gsocket

from . import stun
from ..codec.stun import Attr, Class, Message, Method, StunError, decode, format_address
from ..util import Address

log = logging.getLogger("chatp2p.natinfo")

UNKNOWN = "unknown"
OPEN_INTERNET = "Open Internet"
FULL_CONE = "Full Cone"
RESTRICTED_CONE = "Restricted Cone"
PORT_RESTRICTED_CONE = "Port Restricted Cone"
SYMMETRIC_NAT = "Symmetric NAT"
SYMMETRIC_FIREWALL = "Symmetric UDP Firewall"
BLOCKED = "Blocked"

# pystun3's verdict strings -> ours. Its "Meet an error, when do Test1 on Changed IP and Port"
# (the server's other address did not answer) is no verdict: it maps to UNKNOWN.
_PYSTUN_VERDICTS = {
    "Open Internet": OPEN_INTERNET,
    "Full Cone": FULL_CONE,
    "Restric NAT": RESTRICTED_CONE,
    "Restric Port NAT": PORT_RESTRICTED_CONE,
    "Symmetric NAT": SYMMETRIC_NAT,
    "Symmetric UDP Firewall": SYMMETRIC_FIREWALL,
    "Blocked": BLOCKED,
}

DEFAULT_TIMEOUT = 10.0  # whole classification (up to 5 tests of 4 tries each)
PER_TRY = 0.5  # pystun3 waits this long for each answer, 4 tries per test
MAX_SENDS = 40  # more requests than pystun3 makes in a normal run (5 tests x 4 tries)


@dataclasses.dataclass(frozen=True)
class NatInfo:
    """`nat_type`: one of the constants above; `mapped`: our public address for the probing
    socket (not the node's), when a server answered; `detail`: why, in words."""

    nat_type: str
    mapped: Optional[Address]
    detail: str


class _Abort(BaseException):
    """Stops pystun3 from inside its loops. A BaseException on purpose: pystun3 wraps its
    `recvfrom` in `except Exception` and would otherwise retry forever."""


class _GuardedSocket:
    """The socket pystun3 sees: only sendto/recvfrom, filtered (see the module docstring)."""

    def __init__(self, sock: gsocket.socket, max_sends: int = MAX_SENDS) -> None:
        self._sock = sock
        self._max_sends = max_sends
        self.sends = 0
        self.destinations: set[Address] = set()
        self.changed_sources: set[Address] = set()  # where answers to CHANGE-REQUEST come from
        self.mapped: Optional[Address] = None
        self.ignored = 0
        self.last_ignored = ""

    def sendto(self, data: bytes, address: Address) -> int:
        self.sends += 1
        if self.sends > self._max_sends:
            raise _Abort(f"pystun3 sent more than {self._max_sends} requests")
        try:
            target = (str(address[0]), int(address[1]))
        except (TypeError, ValueError, IndexError):
            raise _Abort(f"pystun3 tried to send to {address!r}") from None
        self.destinations.add(target)
        return self._sock.sendto(data, target)

    def recvfrom(self, size: int) -> tuple[bytes, Address]:
        while True:
            data, address = self._sock.recvfrom(size)  # socket.timeout: pystun3 counts a try
            address = tuple(address[:2])
            if address not in self.destinations and address not in self.changed_sources:
                self._ignore(f"datagram from {format_address(address)}, which was not asked")
                continue
            try:
                message = decode(data, rfc3489=True)
            except StunError as exc:
                self._ignore(f"malformed answer from {format_address(address)}: {exc}")
                continue
            if message.method != Method.BINDING or message.cls not in (Class.SUCCESS, Class.ERROR):
                self._ignore(f"unexpected {message!r} from {format_address(address)}")
                continue
            if message.cls is Class.ERROR:
                code, reason = message.error or (0, "no ERROR-CODE")
                raise _Abort(f"{format_address(address)} answered error {code} ({reason})")
            if self.mapped is None:
                self._first_answer(message, address)
            return data, address

    def _ignore(self, why: str) -> None:
        self.ignored += 1
        self.last_ignored = why

    def _first_answer(self, message: Message, address: Address) -> None:
        self.mapped = message.get(Attr.MAPPED_ADDRESS) or message.get(Attr.XOR_MAPPED_ADDRESS)
        other = message.get(Attr.CHANGED_ADDRESS) or message.get(Attr.OTHER_ADDRESS)
        if other is None:
            raise _Abort(f"{format_address(address)} gives no CHANGED-ADDRESS: it cannot answer change requests")
        if other[0] == address[0]:
            raise _Abort(f"{format_address(address)} names its own IP as CHANGED-ADDRESS: "
                         "it has one address and cannot answer change requests")
        self.changed_sources = {(ip, port) for ip in (address[0], other[0]) for port in (address[1], other[1])}


def _local_ip_towards(server: Address) -> str:
    """The local IP the kernel would use to reach `server` (a UDP connect sends nothing)."""
    probe = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(server)
        return probe.getsockname()[0]
    finally:
        probe.close()


def classify_nat(server: Address, timeout: float = DEFAULT_TIMEOUT, per_try: float = PER_TRY,
                 source_ip: Optional[str] = None) -> NatInfo:
    """Classify the NAT between us and `server` (host, port) with pystun3, on a fresh socket.
    Blocks the calling greenlet for at most about `timeout` seconds; never raises."""
    import stun as pystun  # pystun3's module name; imported here so the node loads without it

    started = time.monotonic()
    try:
        target = stun.resolve(server)
        local_ip = source_ip or _local_ip_towards(target)
    except (StunError, OSError) as exc:
        return NatInfo(UNKNOWN, None, f"cannot reach {server[0]}:{server[1]}: {exc}")
    sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    guard = _GuardedSocket(sock)
    try:
        sock.bind((local_ip, 0))
        sock.settimeout(per_try)
        local_port = sock.getsockname()[1]
        with gevent.Timeout(timeout, _Abort(f"no verdict within {timeout:g} s")):
            verdict, _ = pystun.get_nat_type(guard, local_ip, local_port,
                                             stun_host=target[0], stun_port=target[1])
    except _Abort as exc:
        return NatInfo(UNKNOWN, guard.mapped, f"{format_address(target)}: {exc}")
    except Exception as exc:  # pystun3 fails in many ways on odd answers: never guess
        log.debug("pystun3 failed", exc_info=True)
        return NatInfo(UNKNOWN, guard.mapped, f"{format_address(target)}: pystun3 failed: {exc!r}")
    finally:
        sock.close()
    nat_type = _PYSTUN_VERDICTS.get(verdict, UNKNOWN)
    if nat_type == BLOCKED and guard.ignored:
        return NatInfo(UNKNOWN, None, f"{format_address(target)} sent {guard.ignored} unusable answers "
                                      f"(last: {guard.last_ignored})")
    elapsed = time.monotonic() - started
    where = format_address(target)
    detail = f"pystun3 said {verdict!r} after {guard.sends} requests to {where} in {elapsed:.1f} s"
    if nat_type == BLOCKED:
        detail = f"no answer from {format_address(target)} (UDP blocked, or server down); " + detail
    return NatInfo(nat_type, guard.mapped, detail)
