"""`chatp2pctl`: the command-line client of the daemon's control API, for people and scripts.

Plain blocking sockets, no gevent: this is a short-lived process that sends a few requests in
order. `ApiClient` is the reusable part (the UI's `--connect` mode and the tests use it too);
`main` maps subcommands to requests and prints the answers, readable by default or as raw
JSON with `--json`. Exit codes: 0 success, 1 the daemon answered `success: false`,
2 usage error, 3 the daemon cannot be reached (or stopped answering).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import sys
from typing import Any, Callable, Iterable, NamedTuple, Sequence, TextIO

from ..errors import Busy, Invalid, Refused
from ..config import DEFAULT_CONFIG_PATH, DEFAULT_DATA_DIR, ConfigError, load as load_config
from ..runtime import daemon_owns_port, read_endpoints, read_token
from ..util import is_loopback
from .tls import normalize_pin
from . import schema
from .actions import build_table
from .table import Action, Field

PROG = "chatp2pctl"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8889
DEFAULT_TIMEOUT = 30.0
MAX_RESPONSE_BYTES = 256 * 1024 * 1024   # a guard against a peer that never sends "\n"
RECV_SIZE = 256 * 1024

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


# -- client ---------------------------------------------------------------------------------
class ApiConnectionError(Busy):
    """The conversation with the daemon broke: it closed, timed out, or answered garbage."""


class DaemonUnreachable(ApiConnectionError):
    """No connection could be opened to the daemon's API port."""


class _NothingYet(Busy):
    """`receive` waited its time and no line came (not an error: the caller decides)."""


class RequestFailed(Refused):
    """The daemon answered `success: false` (raised by `ApiClient.call` only)."""

    def __init__(self, response: dict) -> None:
        super().__init__(str(response.get("error") or "request failed"))
        self.response = response


def format_address(host: str, port: int) -> str:
    """`host:port`, with brackets around an IPv6 address so the port stays readable."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


class ApiClient:
    """One connection to the control API; requests are sent and answered one at a time.

    Responses to requests without an `id` come back in order, so a strictly sequential client
    needs no ids. Not thread-safe: give each thread (or greenlet) its own client.
    """

    def __init__(self, sock: socket.socket, token: str | None = None,
                 address: tuple[str, int] | None = None) -> None:
        self.sock = sock
        self.token = token
        self.address = address or sock.getpeername()[:2]
        self._buffer = bytearray()

    @classmethod
    def connect(cls, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None,
                timeout: float | None = DEFAULT_TIMEOUT, pin: str | None = None) -> "ApiClient":
        """Open a connection; `timeout` also bounds every later wait for an answer. With `pin`
        (a remote API), TLS, and the daemon's certificate must be the pinned one before
        anything (the token above all) is sent."""
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise DaemonUnreachable(
                f"cannot reach the chatp2p daemon at {format_address(host, port)}: "
                f"{_reason(exc)} — is chatp2pd running?") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if pin is not None:
            sock = _pinned_tls(sock, host, port, pin)
        return cls(sock, token, (host, port))

    def request(self, command: str, action: str | None = None, data: Any = None) -> dict:
        """Send one request and return the whole response object (success or not)."""
        message: dict[str, Any] = {"command": command}
        if action is not None:
            message["action"] = action
        if data is not None:
            message["data"] = data
        return self.send(message)

    def call(self, command: str, action: str | None = None, data: Any = None) -> Any:
        """Like `request`, but return only `data` and raise RequestFailed on failure."""
        reply = self.request(command, action, data)
        if not reply.get("success"):
            raise RequestFailed(reply)
        return reply.get("data")

    def send(self, message: dict) -> dict:
        """Send any JSON object as it is (plus the token, if one is set and it has none)."""
        self.send_only(message)
        return self._parse(self._read_line())

    def send_only(self, message: dict) -> None:
        """Send a request without waiting for its answer (on an event stream, where answers
        and events share the connection)."""
        if self.token is not None and "token" not in message:
            message = {**message, "token": self.token}
        payload = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        try:
            self.sock.sendall(payload)
        except OSError as exc:
            raise ApiConnectionError(f"lost the connection to the daemon: {_reason(exc)}") from None

    def receive(self, timeout: float) -> dict | None:
        """The next JSON line (an answer or, after `events subscribe`, an event), or None when
        none came within `timeout` seconds."""
        saved = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            return self._parse(self._read_line(waiting=True))
        except _NothingYet:
            return None
        finally:
            self.sock.settimeout(saved)

    @staticmethod
    def _parse(line: bytes) -> dict:
        try:
            reply = json.loads(line)
        except ValueError:
            raise ApiConnectionError(f"the daemon sent something that is not JSON: {line[:80]!r}") from None
        if not isinstance(reply, dict):
            raise ApiConnectionError(f"the daemon sent a JSON value that is not an object: {line[:80]!r}")
        return reply

    def _read_line(self, waiting: bool = False) -> bytes:
        """One line; a timeout is the daemon failing to answer, or with `waiting` just no
        line yet (_NothingYet)."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[:newline + 1]
                return line
            if len(self._buffer) > MAX_RESPONSE_BYTES:
                raise ApiConnectionError("the daemon's answer is too large")
            try:
                chunk = self.sock.recv(RECV_SIZE)
            except socket.timeout:
                if waiting:
                    raise _NothingYet from None
                raise ApiConnectionError("the daemon did not answer in time (see --timeout)") from None
            except OSError as exc:
                raise ApiConnectionError(f"lost the connection to the daemon: {_reason(exc)}") from None
            if not chunk:
                raise ApiConnectionError("the daemon closed the connection without answering")
            self._buffer += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _pinned_tls(sock: socket.socket, host: str, port: int, pin: str) -> socket.socket:
    from . import tls

    try:
        wrapped = tls.client_context().wrap_socket(sock)
        der = wrapped.getpeercert(binary_form=True) or b""
    except (OSError, ValueError) as exc:
        sock.close()
        raise ApiConnectionError(f"no TLS API at {format_address(host, port)}: {_reason(exc) if isinstance(exc, OSError) else exc}") from None
    found = tls.fingerprint_of(der)
    if found != pin:
        wrapped.close()
        raise ApiConnectionError(f"the daemon at {format_address(host, port)} presents certificate {found}, "
                                 f"not the pinned {pin}: nothing was sent")
    return wrapped


# -- where the daemon is ----------------------------------------------------------------------
class Target(NamedTuple):
    """Where the daemon is and what to show it: the token, and the TLS pin of a remote API."""

    host: str
    port: int
    token: str | None
    pin: str | None


def resolve_target(data_dir: pathlib.Path, host: str | None, port: int | None,
                   token: str | None, pin: str | None = None,
                   fallback: tuple[str, int] = (DEFAULT_HOST, DEFAULT_PORT)) -> Target:
    """Host, port, token and pin: explicit options win, then DATA_DIR/run.json, then
    `fallback` (the conf file's and CHATP2P_IPC_* settings, else the defaults).

    run.json matters because a daemon started with `--ipc-port 0` picks its port at random.
    The data dir's token goes only to the daemon run.json names: through TLS with the pin
    run.json gives, or on this machine once its pid is seen holding the port (whoever else
    listens on 8889 gets no token). An explicit --token is the user's choice.
    """
    endpoints = read_endpoints(data_dir) or {}
    if host is None:
        host = str(endpoints.get("ipc_host") or fallback[0])
    if port is None:
        found = endpoints.get("ipc_port")
        port = found if isinstance(found, int) and 0 < found < 65536 else fallback[1]
    named = bool(endpoints) and (str(endpoints.get("ipc_host")), endpoints.get("ipc_port")) == (host, port)
    if pin is None and named and isinstance(endpoints.get("tls_fingerprint"), str):
        pin = endpoints["tls_fingerprint"]
    if token is None and named and (pin is not None or daemon_owns_port(endpoints.get("pid"), port)):
        token = read_token(data_dir)
    return Target(host, port, token, pin)


# -- values given on the command line -----------------------------------------------------------
class UsageError(Invalid):
    """A bad argument found after parsing (exit 2, like argparse's own errors)."""


def read_value(text: str, strip: bool = True) -> str:
    """`-` reads standard input, `@FILE` reads a file, `@@x` is the literal `@x`.

    Keys and ciphertexts are long: pasting them on the command line is awkward and leaves
    them in the shell history. `strip` drops the trailing newline files usually end with.
    """
    if text == "-":
        value = sys.stdin.read()
    elif text.startswith("@@"):
        return text[1:]
    elif text.startswith("@") and len(text) > 1:
        try:
            value = pathlib.Path(text[1:]).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {text[1:]}: {getattr(exc, 'strerror', None) or exc}") from None
    else:
        return text
    return value.strip() if strip else value


def parse_pairs(pairs: Iterable[str]) -> dict[str, Any]:
    """`key=value` (a string) or `key:=JSON` (any JSON value) into a data object."""
    data: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or key == ":":
            raise UsageError(f"expected key=value or key:=JSON, got {pair!r}")
        if key.endswith(":"):
            key = key[:-1]
            try:
                data[key] = json.loads(value)
            except ValueError as exc:
                raise UsageError(f"{key}:= needs a JSON value: {exc}") from None
        else:
            data[key] = value
    return data


# -- output -----------------------------------------------------------------------------------
def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m {secs:02d}s"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers)] + [list(r) for r in rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_status(data: dict) -> str:
    """The status answer as an aligned summary; missing parts are shown as `-`."""
    identity = data.get("identity") or {}
    p2p = data.get("p2p") or {}
    ipc = data.get("ipc") or {}
    events = data.get("events") or {}
    crypto = data.get("crypto") or {}
    if p2p.get("running"):
        p2p_text = f"running, UDP port {p2p.get('port')}"
    else:
        p2p_text = "stopped"
    ipc_text = format_address(str(ipc["host"]), int(ipc["port"])) if ipc.get("host") else "-"
    backend = str(crypto.get("backend") or "-")
    available = crypto.get("available")
    if isinstance(available, list) and available:
        backend += f" (available: {', '.join(map(str, available))})"
    uptime = data.get("uptime_s")
    nat_text = None
    if "nat_type" in p2p:  # present once NAT traversal is wired in
        nat_text = str(p2p.get("nat_type") or "unknown")
        public = p2p.get("public_address")
        if isinstance(public, (list, tuple)) and len(public) == 2 and isinstance(public[1], int):
            public = format_address(str(public[0]), int(public[1]))
        if public:
            nat_text += f", public address {public}"
        if p2p.get("detail"):
            nat_text += f" ({p2p['detail']})"
    rows = [
        ("name", identity.get("name")),
        ("ID", identity.get("fingerprint")),
        ("version", data.get("version")),
        ("uptime", format_duration(uptime) if isinstance(uptime, (int, float)) else None),
        ("p2p", p2p_text),
        ("nat", nat_text),
        ("ipc", ipc_text),
        ("events", events.get("endpoint") or ", ".join(events.get("endpoints") or [])),
        ("contacts", data.get("contacts")),
        ("peers", data.get("peers")),
        ("group peers", data.get("group_peers")),
        ("crypto", backend),
        ("data dir", data.get("data_dir")),
    ]
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(f"{(label + ':').ljust(width)}  {'-' if value in (None, '') else value}"
                     for label, value in rows)


def _flag(value: Any, text: str) -> str:
    return text if value else ""


def format_contacts(contacts: list) -> str:
    if not contacts:
        return "no contacts"
    rows = []
    for c in contacts:
        if not isinstance(c, dict):
            rows.append([json.dumps(c), "", "", "", ""])
            continue
        state = ",".join(s for s in (_flag(c.get("online"), "online"), _flag(c.get("verified"), "verified"),
                                     _flag(c.get("blocked"), "blocked")) if s) or "-"
        rows.append([str(c.get("name", "")), str(c.get("fingerprint") or "-"), state,
                     str(c.get("unread") or 0), str(c.get("last_seen") or "never")])
    return format_table(["NAME", "ID", "STATE", "UNREAD", "LAST SEEN"], rows)


def format_data(data: Any) -> str:
    """Strings plainly, nothing for null, anything else as indented JSON."""
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return json.dumps(data, indent=2, ensure_ascii=False)


# -- subcommands -------------------------------------------------------------------------------
def _single(key: str) -> Any:
    """A printer that shows one field of the answer (the one worth piping elsewhere)."""
    def show(data: Any) -> str:
        if isinstance(data, dict) and key in data:
            return format_data(data[key])
        return format_data(data)
    return show


def _show_id(data: Any) -> str:
    identity = (data or {}).get("identity") or {}
    return f"{identity.get('fingerprint', '')}\n{identity.get('public_key', '')}"


def _show_id_qr(data: Any) -> str:
    from ..qr import qr_text

    fingerprint = str(((data or {}).get("identity") or {}).get("fingerprint", ""))
    return qr_text(fingerprint) + fingerprint


def _show_contacts(data: Any) -> str:
    return format_contacts(data) if isinstance(data, list) else format_data(data)


def _show_status(data: Any) -> str:
    return format_status(data) if isinstance(data, dict) else format_data(data)


# How the command table's rows appear on the command line, where that differs from the rule
# (required fields are positional arguments in their declared order, optional ones --options;
# an action `a_b` is also `a-b`). Declared here once; the rows, their fields and help are the
# table's (lib/api/actions.py).
OWN_VERBS = ("events",)              # `chatp2pctl events` prints events itself (the table's
                                     # `events subscribe` is for clients that keep a connection)
PASS_THROUGH_COMMANDS = ("p2p",)       # ACTION KEY=VALUE...: any action, data as pairs
OPTION_NAMES = {
    ("crypto", "encrypt", "public_key"): "--key",                    # a required field given as an option
    ("contacts", "negotiate_keys", "timeout"): "--handshake-timeout",  # --timeout is the client's own
}
LONG_VALUES = {"public_key": True, "private_key": True, "encrypted_data": True, "message": False}
# field -> strip: read with `read_value` (`-` stdin, `@FILE`); a message keeps its last newline
PRINTERS: dict[tuple[str, Any], Callable[[Any], str]] = {
    ("status", None): _show_status,
    ("contacts", "list"): _show_contacts,
    ("crypto", "encrypt"): _single("encrypted_data"),
    ("crypto", "decrypt"): _single("message"),
}


def _printer(row: Action) -> Callable[[Any], str]:
    from . import group_cli  # it imports this module's formatters

    key = (row.command, row.action)
    return PRINTERS.get(key) or group_cli.PRINTERS.get(key) or format_data


def _dest(field: Field) -> str:
    return "field_" + field.name


def build_request(args: argparse.Namespace) -> tuple[dict, Any]:
    """The request object for a parsed command line, and the function that prints its data."""
    cmd = args.cmd
    if cmd == "id":
        return {"command": "status"}, _show_id_qr if args.qr else _show_id
    row: Action | None = getattr(args, "row", None)
    if row is not None:
        request: dict[str, Any] = {"command": row.command}
        if row.action is not None:
            request["action"] = row.action
        data = {}
        for field in row.fields:
            value = getattr(args, _dest(field), None)
            if value is not None:
                strip = LONG_VALUES.get(field.name)
                data[field.name] = value if strip is None else read_value(value, strip=strip)
        if data:
            request["data"] = data
        return request, _printer(row)
    if cmd in PASS_THROUGH_COMMANDS:
        request = {"command": "p2p", "action": args.action}
        data = parse_pairs(args.pairs)
        if data:
            request["data"] = data
        return request, format_data
    if cmd == "raw":
        text = read_value(args.json_text)
        try:
            request = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"raw: not valid JSON: {exc}") from None
        if not isinstance(request, dict):
            raise UsageError("raw: the request must be a JSON object ({...})")
        return request, lambda data: None  # raw prints the whole response instead
    raise AssertionError(cmd)


def _print(text: str, stream: TextIO) -> None:
    if text:
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()


def run_request(args: argparse.Namespace, target: Target) -> int:
    request, show = build_request(args)
    with ApiClient.connect(target.host, target.port, target.token, args.timeout, target.pin) as client:
        reply = client.send(request)
    if args.json:
        _print(json.dumps(reply, ensure_ascii=False, separators=(",", ":")), sys.stdout)
    elif args.cmd == "raw":
        _print(json.dumps(reply, indent=2, ensure_ascii=False), sys.stdout)
    elif reply.get("success"):
        _print(show(reply.get("data")), sys.stdout)
    if not reply.get("success"):
        _print(f"{PROG}: {reply.get('error') or 'request failed (no error message)'}", sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def pick_event_endpoint(endpoints: Sequence[str]) -> str | None:
    """The ipc:// endpoint when its socket file is here, else the first tcp:// one."""
    for endpoint in endpoints:
        if endpoint.startswith("ipc://") and os.path.exists(endpoint[len("ipc://"):]):
            return endpoint
    for endpoint in endpoints:
        if endpoint.startswith("tcp://"):
            return endpoint
    return endpoints[0] if endpoints else None


def authenticate_subscriber(sub: Any, endpoint: str, token: str | None) -> None:
    """A tcp:// events endpoint asks for the API token (ZeroMQ PLAIN, events.TCP_USER);
    the ipc:// one, in the owner's 0700 data dir, asks for nothing."""
    if endpoint.startswith("tcp://") and token:
        from ..events import TCP_USER
        sub.plain_username = TCP_USER
        sub.plain_password = token.encode()


def _event_matches(name: str, filters: Sequence[str]) -> bool:
    if not filters:
        return True
    return any(name.startswith(f[:-1]) if f.endswith("*") else name == f for f in filters)


def run_events(args: argparse.Namespace, target: Target) -> int:
    """Print every event as one JSON line until Ctrl-C (exit 0) or the daemon goes away (3)."""
    with ApiClient.connect(target.host, target.port, target.token, args.timeout, target.pin) as client:
        reply = client.request("status")
    if not reply.get("success"):
        _print(f"{PROG}: {reply.get('error')}", sys.stderr)
        return EXIT_FAILED
    events = (reply.get("data") or {}).get("events") or {}
    endpoint = pick_event_endpoint(events.get("endpoints") or [])
    if not endpoint:
        _print(f"{PROG}: the daemon publishes no event endpoint", sys.stderr)
        return EXIT_FAILED
    _stop_on_signals()
    try:
        return _print_events(endpoint, list(args.names), target.token)
    except KeyboardInterrupt:
        return EXIT_OK


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM end `events` whatever this process inherited: a parent may have left
    SIGINT ignored (a background job) or blocked in the signal mask, and Python then never
    raises KeyboardInterrupt."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupted)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _print_events(endpoint: str, filters: list[str], token: str | None) -> int:
    """Subscribe and print; a socket monitor tells when the subscription is live or lost."""
    import zmq  # the plain, blocking pyzmq: this process runs no gevent loop
    from zmq.utils.monitor import recv_monitor_message

    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    authenticate_subscriber(sub, endpoint, token)
    # ZeroMQ filters on a prefix of the first frame (the event name); exact names are checked
    # again below so that `contact_added` does not also match `contact_added_twice`.
    for name in filters or [""]:
        sub.setsockopt(zmq.SUBSCRIBE, (name[:-1] if name.endswith("*") else name).encode())
    monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    try:
        sub.connect(endpoint)
        while True:
            # A bounded wait: a Ctrl-C that lands just before poll() blocks is otherwise only
            # noticed at the next event (the signal interrupts no system call then).
            ready = dict(poller.poll(200))
            if monitor in ready:
                event = recv_monitor_message(monitor)["event"]
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    # Says when events start to flow: scripts wait for this line.
                    _print(f"{PROG}: listening for events on {endpoint}", sys.stderr)
                elif event == zmq.EVENT_DISCONNECTED:
                    _print(f"{PROG}: the daemon closed the event socket {endpoint}", sys.stderr)
                    return EXIT_UNREACHABLE
            if sub in ready:
                frames = sub.recv_multipart()
                name = frames[0].decode("utf-8", "replace")
                if len(frames) == 2 and _event_matches(name, filters):
                    _print(frames[1].decode("utf-8", "replace"), sys.stdout)
    finally:
        # destroy() closes every socket of the context and then ends it: Ctrl-C arriving at
        # any point cannot leave a socket open for term() to wait on forever.
        try:
            sub.disable_monitor()
        except zmq.ZMQError:
            pass
        context.destroy(linger=0)


# -- command line ------------------------------------------------------------------------------
def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Global options, accepted before or after the subcommand (`chatp2pctl status --json`).

    The subcommand parsers use SUPPRESS defaults so they only set what was really given.
    """
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument("--host", default=default(None),
                       help=f"API address (default: from DATA_DIR/run.json, else {DEFAULT_HOST})")
    group.add_argument("--port", type=_port, default=default(None),
                       help=f"API port (default: from DATA_DIR/run.json, else {DEFAULT_PORT})")
    group.add_argument("--data-dir", default=default(None),
                       help="the daemon's data dir (default: $CHATP2P_DATA_DIR, else the conf file's, "
                            f"else {DEFAULT_DATA_DIR})")
    group.add_argument("--config", default=default(None), metavar="FILE",
                       help="the daemon's conf file, for its data dir and API port (default: $CHATP2P_CONFIG, "
                            f"else {DEFAULT_CONFIG_PATH})")
    group.add_argument("--token", default=default(None),
                       help="API token (default: DATA_DIR/ipc.token, sent only to the daemon DATA_DIR/run.json names)")
    group.add_argument("--pin", default=default(None), metavar="FINGERPRINT",
                       help="a remote API's TLS certificate fingerprint (SHA-256; the daemon logs it as tls_pin=...)")
    group.add_argument("--timeout", type=seconds_arg, default=default(DEFAULT_TIMEOUT),
                       help=f"seconds to wait for the daemon (default: {DEFAULT_TIMEOUT:g})")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print the raw response as one JSON line")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {value}")
    return value


def seconds_arg(text: str) -> float:
    """argparse type: a positive number of seconds (--timeout, --wait-timeout)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("the timeout must be positive")
    return value


LONG_VALUE = "(`-` reads standard input, `@FILE` a file)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Command-line client of the chatp2p daemon's control API.",
        epilog="Exit status: 0 success, 1 the daemon reported an error, 2 usage error, "
               "3 the daemon cannot be reached.")
    import shtab
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    shtab.add_argument_to(parser, ["--print-completion"], help="print a bash or zsh completion script and exit")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _global_options(p, suppress=True)
        return p

    id_parser = command("id", "print my ID, then my public key bundle (give both to contacts)")
    id_parser.add_argument("--qr", action="store_true", help="draw my ID as a QR code instead (for a phone camera)")
    from . import identity_cli, verbs
    verbs.add_verbs(command)
    identity_cli.add_identity_command(command)

    rows: dict[str, list[Action]] = {}
    for row in build_table().actions():
        rows.setdefault(row.command, []).append(row)
    for name, command_rows in rows.items():
        if name in OWN_VERBS:
            continue
        if name in PASS_THROUGH_COMMANDS:
            _pass_through_command(sub, name, command_rows)
        elif len(command_rows) == 1 and command_rows[0].action is None:
            _action_arguments(command(name, command_rows[0].help), command_rows[0])
        else:
            parent = command(name, f"{name} actions: " + ", ".join(str(r.action) for r in command_rows))
            actions = parent.add_subparsers(dest="action", metavar="ACTION", required=True)
            for row in command_rows:
                assert row.action is not None
                aliases = [row.action.replace("_", "-")] if "_" in row.action else []
                p = actions.add_parser(row.action, aliases=aliases, help=row.help, description=row.help)
                _global_options(p, suppress=True)
                _action_arguments(p, row)

    raw = command("raw", "send a JSON request object as it is and print the whole response")
    raw.add_argument("json_text", metavar="JSON", help=f"the request, e.g. '{{\"command\":\"status\"}}' {LONG_VALUE}")

    events = command("events", "print the daemon's events as JSON lines until Ctrl-C")
    events.add_argument("names", nargs="*", metavar="NAME", help="only these events (NAME* for a prefix)")

    command("schema", "print the JSON Schema (draft 2020-12) of every action's data and answer and of "
                      "every event (no daemon needed)")
    return parser


def _field_help(field: Field) -> str:
    """What the table says of a field: its type, default and limits (and how to pass a long one)."""
    parts = [field.kind]
    if field.default is not None:
        parts.append(f"default {field.default}")
    if field.max_len is not None:
        parts.append(f"at most {field.max_len} {'characters' if field.kind == 'str' else 'items'}")
    if field.min_len is not None:
        parts.append("not empty" if field.min_len == 1 else
                     f"at least {field.min_len} {'characters' if field.kind == 'str' else 'items'}")
    if field.minimum is not None:
        parts.append(f"at least {field.minimum}")
    if field.maximum is not None:
        parts.append(f"at most {field.maximum}")
    text = ", ".join(parts)
    return f"{text} {LONG_VALUE}" if field.name in LONG_VALUES else text


def _action_arguments(parser: argparse.ArgumentParser, row: Action) -> None:
    """The row's fields as arguments: required ones positional, the others --options; a list
    takes one or more words (`group create Family Bob Carol`)."""
    parser.set_defaults(row=row)
    for field in row.fields:
        option = OPTION_NAMES.get((row.command, row.action, field.name))
        if option is None and not field.required:
            option = "--" + field.name.replace("_", "-")
        many = {"nargs": "+"} if field.kind == "list" else {}
        if option is None:
            parser.add_argument(_dest(field), metavar=field.name.upper(), help=_field_help(field), **many)
        else:
            parser.add_argument(option, dest=_dest(field), metavar=field.name.upper(),
                                required=field.required, help=_field_help(field), **many)


def _pass_through_command(sub: Any, name: str, rows: list[Action]) -> None:
    """`p2p ACTION KEY=VALUE...`: any action goes to the daemon as it is; the help lists the
    table's actions with their fields."""
    lines = []
    for row in rows:
        fields = " ".join(f"{f.name}=" if f.required else f"[{f.name}=]" for f in row.fields)
        lines.append(f"  {row.action} {fields}".rstrip() + f"\n      {row.help}")
    p = sub.add_parser(name, help=f"any {name} action, e.g.: {name} send_message peer=Bob message=hi",
                       description=f"any {name} action, with its data as KEY=VALUE pairs",
                       epilog="actions:\n" + "\n".join(lines),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(p, suppress=True)
    p.add_argument("action", help=", ".join(str(r.action) for r in rows))
    p.add_argument("pairs", nargs="*", metavar="KEY=VALUE", help="data fields; KEY:=JSON for a non-string value")


def main(argv: list[str]) -> int:
    """Run one `chatp2pctl` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(argparse.Namespace(config=args.config))
    except ConfigError as exc:
        _print(f"{PROG}: configuration error: {exc}", sys.stderr)
        return EXIT_USAGE
    data_dir = pathlib.Path(args.data_dir).expanduser() if args.data_dir else config.data_path
    try:
        pin = normalize_pin(args.pin) if args.pin else None
    except ValueError as exc:
        parser.error(str(exc))
    from . import verbs
    target = resolve_target(data_dir, args.host, args.port, args.token, pin,
                            fallback=(config.ipc_host, config.ipc_port or DEFAULT_PORT))
    try:
        if args.cmd == "schema":
            _print(json.dumps(schema.document(build_table().actions()), indent=2, ensure_ascii=False), sys.stdout)
            return EXIT_OK
        if args.cmd == "events":
            return run_events(args, target)
        if not is_loopback(target.host) and target.pin is None:
            raise UsageError(f"{format_address(target.host, target.port)} is not this machine: a remote API "
                             "serves TLS, give --pin FINGERPRINT (the daemon logs it at start as tls_pin=...)")
        if args.cmd == "identity":
            from .identity_cli import run_identity
            return run_identity(args, data_dir)
        if args.cmd in verbs.VERBS:
            return verbs.run_verb(args, target)
        return run_request(args, target)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        _print(f"{PROG}: error: {exc}", sys.stderr)
        return EXIT_USAGE
    except ApiConnectionError as exc:
        _print(f"{PROG}: {exc}", sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `chatp2pctl ... | head`: the reader left; do not let Python complain at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
