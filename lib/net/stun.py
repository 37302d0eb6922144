"""STUN Binding client (RFC 8489) on the node's UDP socket: our public address and the NAT's
mapping behaviour. The messages themselves are encoded and decoded by `codec/stun.py`.

`StunClient` runs over the node's shared socket: it never reads a socket itself. The node
gives it a `send(data, address)` function and feeds it the STUN datagrams the transport
receives (`handle`). It asks servers for our public (server-reflexive) address and, asking
several at once, tells whether the NAT keeps one mapping for every destination
(endpoint-independent, hole punching works) or not.

STUN servers are only ever contacted when configured (`stun:host:port` URLs): this module
has no built-in server list.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from typing import Optional, Union

from ..errors import Busy, Refused

import gevent
from gevent import socket as gsocket

from ..codec.addresses import is_ipv6, scope_or_none
from ..codec.stun import Attr, Class, Message, Method, StunError, decode, encode, format_address, parse_server_url
from ..util import Address
from .stun_transaction import Retransmission, SendFunction, Transaction

# Client retransmission: RFC 8489 section 6.2.1 doubles an RTO (500 ms by default, the
# `Retransmission` defaults) for 7 requests and waits 16 RTO after the last: 39.5 s. A node at
# start-up cannot wait that long for one dead server, so its clients start lower, cap the RTO,
# and the whole transaction has a deadline.
INITIAL_RTO = 0.1
MAX_RTO = 0.5
DEFAULT_TIMEOUT = 3.0
DEFAULT_RETRIES = 7  # retransmissions after the first send (the deadline usually ends it first)

# Mapping behaviours `discover` can tell apart (RFC 4787 / RFC 5780 terms).
MAPPING_INDEPENDENT = "endpoint-independent"
MAPPING_DEPENDENT = "endpoint-dependent"  # address- or address-and-port-dependent: not told apart
MAPPING_PORT_DEPENDENT = "address-and-port-dependent"
MAPPING_UNKNOWN = "unknown"


class StunTimeout(Busy, StunError):
    """No usable answer from a STUN server before the deadline."""


class StunResponseError(Refused, StunError):
    """A server answered with an error response (ERROR-CODE)."""

    def __init__(self, message: str, code: int, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def resolve_all(server: Address, families: tuple[int, ...] = (socket.AF_INET,)) -> list[Address]:
    """(IP address, port) of a server for each of `families` it has an address in, in the
    order of `families` (a name with A and AAAA records gives two). Blocks only this
    greenlet. StunError when it has none."""
    host, port = server
    wanted = " or ".join("IPv6" if f == socket.AF_INET6 else "IPv4" for f in families)
    scope = scope_or_none(host)
    if scope is not None:
        family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
        if family not in families:
            raise StunError(f"{host} is not an {wanted} address")
        return [(host, port)]
    found: list[Address] = []
    for family in families:
        try:
            infos = gsocket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            if len(families) == 1:
                raise StunError(f"cannot resolve {host}: {exc}") from None
            continue  # no address in this family
        if infos:
            found.append((infos[0][4][0], port))
    if not found:
        raise StunError(f"cannot resolve {host}: no {wanted} address")
    return found


def _try_resolve(server: Address, families: tuple[int, ...]) -> Union[list[Address], str]:
    """`resolve_all`, with a failure turned into its message (for parallel lookups)."""
    try:
        return resolve_all(server, families)
    except StunError as exc:
        return str(exc)


def resolve(server: Address, families: tuple[int, ...] = (socket.AF_INET,)) -> Address:
    """The first address of `resolve_all`: IPv4 unless only IPv6 is asked for or found
    (TURN relays and pystun3 stay IPv4: they keep the default)."""
    return resolve_all(server, families)[0]


# ---------------------------------------------------------------- Binding client


@dataclasses.dataclass(frozen=True)
class Discovery:
    """What `StunClient.discover` learnt. `mapped` is our public IPv4 address as seen by the
    first configured server that answered over IPv4; `answers` and `errors` are keyed by
    server URL. The same over IPv6 (servers with an IPv6 address, asked when the socket is
    dual-stack) in `mapped6`, `answers6` and `errors6`. `mapping` is the IPv4 NAT's behaviour
    (from the IPv6 answers when there are no IPv4 ones: IPv6 rarely has a NAT)."""

    mapped: Optional[Address]
    mapping: str
    answers: dict[str, Address]
    errors: dict[str, str]
    mapped6: Optional[Address] = None
    answers6: dict[str, Address] = dataclasses.field(default_factory=dict)
    errors6: dict[str, str] = dataclasses.field(default_factory=dict)


def infer_mapping(answers: list[tuple[Address, Address]]) -> str:
    """The NAT mapping behaviour from (server address, mapped address) pairs, all from ONE
    local socket. Equal mappings towards servers on different IPs: endpoint-independent.
    Different mappings towards one IP on two ports: address-and-port-dependent. Different
    mappings towards two IPs: endpoint-dependent (which kind is not told apart). Fewer than
    two answers, or two ports of one IP agreeing (an address-dependent NAT also agrees there):
    unknown."""
    verdict = MAPPING_UNKNOWN
    for i, (server_a, mapped_a) in enumerate(answers):
        for server_b, mapped_b in answers[i + 1:]:
            same_ip = server_a[0] == server_b[0]
            if mapped_a != mapped_b:
                if same_ip:
                    return MAPPING_PORT_DEPENDENT
                verdict = MAPPING_DEPENDENT
            elif not same_ip and verdict == MAPPING_UNKNOWN:
                verdict = MAPPING_INDEPENDENT
    return verdict


class StunClient:
    """Binding requests over the node's shared UDP socket.

    The transport owns the socket: `send` is its send function, and it must pass every STUN
    datagram it receives to `handle`, which claims (returns True for) the answers to this
    client's own transactions only. `binding` and `discover` block the calling greenlet."""

    def __init__(self, send: SendFunction, *, initial_rto: float = INITIAL_RTO,
                 max_rto: float = MAX_RTO) -> None:
        self._send = send
        self.initial_rto = initial_rto
        self.max_rto = max_rto
        self._transactions: dict[bytes, Transaction] = {}

    def handle(self, datagram: bytes, address: Address) -> bool:
        """Take a received STUN datagram; True if it answered one of our transactions."""
        try:
            message = decode(datagram)
        except StunError as exc:
            self._note_ignored(address, str(exc))
            return False
        transaction = self._transactions.get(message.transaction_id)
        if transaction is None or tuple(address[:2]) != transaction.destination:
            return False
        if message.method != Method.BINDING or message.cls not in (Class.SUCCESS, Class.ERROR):
            self._note_ignored(address, f"unexpected {message!r}")
            return False
        transaction.answer(message)
        return True

    def _note_ignored(self, address: Address, problem: str) -> None:
        for transaction in self._transactions.values():
            if tuple(address[:2]) == transaction.destination:
                transaction.ignored += 1
                transaction.last_problem = problem

    def binding(self, server: Address, timeout: float = DEFAULT_TIMEOUT,
                retries: int = DEFAULT_RETRIES) -> Address:
        """Our (host, port) as `server` sees it. Retransmits with a doubling RTO
        (`initial_rto` .. `max_rto`) at most `retries` times, and gives up after `timeout`
        seconds in all: StunTimeout, or StunResponseError / StunError for a bad answer."""
        return self._binding(server, timeout, retries)[1]

    def _binding(self, server: Address, timeout: float, retries: int) -> tuple[Address, Address]:
        """(resolved server address, mapped address)."""
        started = time.monotonic()  # the deadline counts name resolution too
        target = resolve(server, (socket.AF_INET, socket.AF_INET6))  # a literal of either family
        name = format_address(target)
        request = Message(Method.BINDING, Class.REQUEST)
        timing = Retransmission(self.initial_rto, requests=retries + 1, max_rto=self.max_rto)
        transaction = Transaction(encode(request, add_fingerprint=True), target, timing)
        self._transactions[request.transaction_id] = transaction
        try:
            response = transaction.run(self._send, timeout - (time.monotonic() - started))
        finally:
            del self._transactions[request.transaction_id]
        if response is None:
            sent = transaction.sent
            detail = f"{sent} request{'s' if sent != 1 else ''} sent"
            if transaction.ignored:
                detail += (f"; {transaction.ignored} unusable repl{'ies' if transaction.ignored != 1 else 'y'}"
                           f" ignored, last: {transaction.last_problem}")
            raise StunTimeout(f"no STUN answer from {name} within {timeout:g} s ({detail})")
        if response.cls == Class.ERROR:
            code, reason = response.error or (0, "no ERROR-CODE")
            raise StunResponseError(f"STUN server {name} answered error {code} ({reason})", code, reason)
        mapped = response.get(Attr.XOR_MAPPED_ADDRESS) or response.get(Attr.MAPPED_ADDRESS)
        if mapped is None:
            raise StunError(f"STUN server {name} answered without a mapped address")
        return target, mapped

    def _try_binding(self, server: Address, timeout: float) -> Union[tuple[Address, Address], str]:
        """`_binding`, with a failure turned into its message (for parallel queries)."""
        try:
            return self._binding(server, timeout, DEFAULT_RETRIES)
        except StunError as exc:
            return str(exc)

    def discover(self, servers: list[str], timeout: float = DEFAULT_TIMEOUT,
                 families: tuple[int, ...] = (socket.AF_INET,)) -> Discovery:
        """Ask every `stun:host:port` server at once, over each of `families` it has an
        address in; our public address per family and the NAT's mapping behaviour. A malformed
        URL raises StunError before anything is sent; an unreachable server is only an entry
        in `errors`."""
        started = time.monotonic()
        targets = [(url, parse_server_url(url)) for url in servers]
        lookups = [(url, gevent.spawn(_try_resolve, target, families)) for url, target in targets]
        gevent.joinall([job for _, job in lookups], timeout=timeout)
        errors: dict[str, str] = {}
        jobs = []
        remaining = max(0.0, timeout - (time.monotonic() - started))
        for url, lookup in lookups:
            outcome = lookup.value if lookup.successful() else f"cannot resolve {url} within {timeout:g} s"
            if isinstance(outcome, str):
                lookup.kill(block=False)
                errors[url] = outcome
                continue
            jobs += [(url, address, gevent.spawn(self._try_binding, address, remaining)) for address in outcome]
        gevent.joinall([job for _, _, job in jobs])
        found: dict[bool, tuple[dict, dict, list]] = {False: ({}, errors, []), True: ({}, {}, [])}
        for url, address, job in jobs:
            answers, failures, pairs = found[is_ipv6(address[0])]
            outcome = job.value if job.successful() else f"binding greenlet died: {job.exception!r}"
            if isinstance(outcome, str):
                failures[url] = outcome
            else:
                answers[url] = outcome[1]
                pairs.append(outcome)
        (answers4, _, pairs4), (answers6, errors6, pairs6) = found[False], found[True]
        return Discovery(next(iter(answers4.values()), None), infer_mapping(pairs4 or pairs6), answers4, errors,
                         next(iter(answers6.values()), None), answers6, errors6)
