"""The everyday verbs of `chatp2pctl`: send, send-file, history, search.

Why apart from ctl.py: these are not one request each, as the table's subcommands are, but
short conversations with the daemon (send, then wait for the delivery event; page through the
history), written for people at a shell and for scripts. Exit codes follow ctl's: 0 done,
1 the daemon refused or the message/file failed, 2 usage, 3 the daemon is unreachable or a
`--wait` timed out.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import sys
import time
from typing import Any, Callable, Iterable, TextIO

from .ctl import (seconds_arg, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, ApiClient, RequestFailed, Target, UsageError,
                  _print, format_duration)

VERBS = ("send", "send-file", "history", "search")
HISTORY_PAGE = 1000            # the API's largest history page
KEEPALIVE_S = 10.0             # a request on the event connection now and then: the daemon closes
                               # API connections idle for idle_timeout (30 s by default)
BAR_WIDTH = 24
DEFAULT_SEND_WAIT_S = 60.0


# -- the command line -------------------------------------------------------------------------
def add_verbs(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Declare the verbs with `command(name, help)` (ctl's, which adds the global options)."""
    send = command("send", "send a chat message: prints `sent` or `queued` (the contact is offline); "
                           "--wait also waits for `delivered`")
    send.add_argument("peer", metavar="NAME", help="the contact")
    send.add_argument("text", metavar="TEXT", nargs="?", default="-",
                      help="the message (default, or `-`: standard input, one trailing newline dropped)")
    _wait_options(send, DEFAULT_SEND_WAIT_S)

    send_file = command("send-file", "offer a file to a contact: prints the transfer id; --wait shows "
                                     "progress on stderr and ends with the verified SHA-256")
    send_file.add_argument("peer", metavar="NAME", help="the contact")
    send_file.add_argument("path", metavar="PATH", help="the file (a relative path is made absolute here)")
    _wait_options(send_file, None)

    history = command("history", "a conversation, oldest first: text (default) or JSON lines (--json)")
    history.add_argument("peer", metavar="NAME", help="the contact")
    history.add_argument("--since", metavar="WHEN", type=parse_since,
                         help="only messages from then on: 2026-01-31, 2026-01-31T18:00, or 30m, 12h, 7d ago")
    history.add_argument("--limit", type=_positive, default=0, metavar="N",
                         help="only the newest N messages (default: all)")
    history.add_argument("--text", dest="json", action="store_false", default=argparse.SUPPRESS,
                         help="readable text (the default; --json: one JSON object per message)")

    search = command("search", "messages holding every word (word prefixes, case and accents folded), "
                               "newest first")
    search.add_argument("words", metavar="WORD", nargs="+", help="what to find")
    search.add_argument("--peer", metavar="NAME", help="in this contact's conversation only")
    search.add_argument("--limit", type=_positive, default=50, metavar="N", help="at most N results (default 50)")


def _wait_options(parser: argparse.ArgumentParser, default_timeout: float | None) -> None:
    parser.add_argument("--wait", action="store_true",
                        help="wait until the contact has it (exit 1 if it fails, 3 on timeout)")
    shown = f"{default_timeout:g} s" if default_timeout else "no limit"
    parser.add_argument("--wait-timeout", type=seconds_arg, default=default_timeout, metavar="SECONDS",
                        help=f"give up waiting after this long (default: {shown})")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """A moment as a Unix time: `30m`/`12h`/`7d`/`2w` ago, or an ISO 8601 date or date-time
    (local time unless it names its zone)."""
    text = text.strip()
    relative = _RELATIVE.match(text.lower())
    if relative:
        return (time.time() if now is None else now) - float(relative.group(1)) * _UNIT_S[relative.group(2)]
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date or a duration: {text!r} (try 2026-01-31, 2026-01-31T18:00 or 7d)") from None
    return moment.timestamp()  # a naive date-time is local time


# -- output -----------------------------------------------------------------------------------
def message_time(message: dict) -> float:
    """A message's creation time (the API gives ISO 8601 UTC)."""
    return datetime.datetime.fromisoformat(str(message["created"]).replace("Z", "+00:00")).timestamp()


def format_message(message: dict, with_peer: bool = False) -> str:
    """`2026-01-31 18:02  Bob: text` (local time); `me` for our own, with its state unless
    delivered; a multi-line body continues indented."""
    when = datetime.datetime.fromtimestamp(message_time(message)).strftime("%Y-%m-%d %H:%M")
    peer = str(message.get("peer") or "?")
    if message.get("direction") == "out":
        who = f"me → {peer}" if with_peer else "me"
        state = message.get("state")
        note = f" ({state})" if state in ("queued", "sent", "failed") else ""
    else:
        who, note = peer, ""
    lines = str(message.get("body", "")).split("\n")
    indent = " " * (len(when) + 2)
    return f"{when}  {who}{note}: {lines[0]}" + "".join(f"\n{indent}{line}" for line in lines[1:])


def _binary(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def progress_line(done: int, size: int | None, rate: float, eta: float | None) -> str:
    """`[########........]  45%  12.0 MiB of 26.7 MiB  3.1 MiB/s  ETA 5s`."""
    if size:
        fraction = min(1.0, done / size)
        filled = int(fraction * BAR_WIDTH)
        head = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}%  {_binary(done)} of {_binary(size)}"
    else:
        head = _binary(done)
    tail = f"  {_binary(rate)}/s" if rate else ""
    if eta is not None and done != size:
        tail += f"  ETA {format_duration(eta)}"
    return head + tail


class Progress:
    """The progress bar on stderr: redrawn in place on a terminal, else one line a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = 0.0

    def show(self, line: str, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        elif final or now - self.last >= 1.0:
            self.stream.write(line + "\n")
        else:
            return
        self.last = now
        self.stream.flush()


# -- waiting for events -----------------------------------------------------------------------
class EventWait:
    """Events of the daemon on an API connection of their own (`events subscribe`): opened
    BEFORE the request whose outcome it waits for, so that no event can slip by."""

    def __init__(self, target: Target, timeout: float, names: Iterable[str]) -> None:
        self.client = ApiClient.connect(target.host, target.port, target.token, timeout, target.pin)
        self.client.call("events", "subscribe", {"events": sorted(names)})

    def next(self, deadline: float | None) -> dict | None:
        """The next event, or None once `deadline` (monotonic) passed."""
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            line = self.client.receive(min(KEEPALIVE_S, left) if left is not None else KEEPALIVE_S)
            if line is None:
                self.client.send_only({"command": "status"})  # keeps the connection from idling out
            elif "event" in line:
                return line
            # else: the answer of a keep-alive request

    def close(self) -> None:
        self.client.close()


def _deadline(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


# -- the verbs --------------------------------------------------------------------------------
def run_verb(args: argparse.Namespace, target: Target) -> int:
    runner = {"send": run_send, "send-file": run_send_file, "history": run_history, "search": run_search}[args.cmd]
    return runner(args, target)


def _client(args: argparse.Namespace, target: Target) -> ApiClient:
    return ApiClient.connect(target.host, target.port, target.token, args.timeout, target.pin)


def _failed(reply: dict) -> int:
    _print(f"chatp2pctl: {reply.get('error') or 'request failed'}", sys.stderr)
    return EXIT_FAILED


def run_send(args: argparse.Namespace, target: Target) -> int:
    text = args.text
    if text == "-":
        text = sys.stdin.read()
        text = text[:-1] if text.endswith("\n") else text
    if not text:
        raise UsageError("send: the message is empty")
    waiter = EventWait(target, args.timeout, ("message_delivered", "message_failed")) if args.wait else None
    try:
        with _client(args, target) as client:
            reply = client.request("p2p", "send_message", {"peer": args.peer, "message": text})
        if not reply.get("success"):
            return _failed(reply)
        message_id = reply.get("message_id")
        _print("sent" if reply.get("data") == "Message sent" else "queued", sys.stdout)
        if waiter is None:
            return EXIT_OK
        deadline = _deadline(args.wait_timeout)
        while True:
            event = waiter.next(deadline)
            if event is None:
                _print(f"chatp2pctl: not delivered within {args.wait_timeout:g} s (it stays queued)", sys.stderr)
                return EXIT_UNREACHABLE
            data = event.get("data") or {}
            if data.get("message_id") != message_id:
                continue
            if event["event"] == "message_delivered":
                _print("delivered", sys.stdout)
                return EXIT_OK
            _print(f"chatp2pctl: the message failed: {data.get('reason')}", sys.stderr)
            return EXIT_FAILED
    finally:
        if waiter is not None:
            waiter.close()


FILE_EVENTS = ("file_transfer_progress", "file_transfer_completed", "file_transfer_failed",
               "file_transfer_paused", "file_transfer_resumed", "file_transfer_started")


def run_send_file(args: argparse.Namespace, target: Target) -> int:
    path = os.path.abspath(os.path.expanduser(args.path))   # the daemon has its own working dir
    waiter = EventWait(target, args.timeout, FILE_EVENTS) if args.wait else None
    try:
        with _client(args, target) as client:
            reply = client.request("p2p", "send_file", {"peer": args.peer, "file_path": path})
        if not reply.get("success"):
            return _failed(reply)
        transfer_id = reply.get("transfer_id")
        if waiter is None:
            state = "offered" if reply.get("data") == "File transfer started" else "queued"
            _print(f"{state} {transfer_id}", sys.stdout)
            return EXIT_OK
        return _follow_transfer(waiter, str(transfer_id), path, args.wait_timeout)
    finally:
        if waiter is not None:
            waiter.close()


def _follow_transfer(waiter: EventWait, transfer_id: str, path: str, timeout: float | None) -> int:
    progress = Progress(sys.stderr)
    _print(f"chatp2pctl: offered {os.path.basename(path)} ({transfer_id}); waiting for the contact", sys.stderr)
    deadline = _deadline(timeout)
    while True:
        event = waiter.next(deadline)
        if event is None:
            _print(f"chatp2pctl: not sent within {timeout:g} s (the transfer goes on; "
                   f"chatp2pctl p2p cancel_transfer transfer_id={transfer_id} stops it)", sys.stderr)
            return EXIT_UNREACHABLE
        data = event.get("data") or {}
        if data.get("transfer_id") != transfer_id:
            continue
        name = event["event"]
        if name == "file_transfer_progress":
            progress.show(progress_line(int(data.get("bytes") or 0), data.get("size"), data.get("rate") or 0,
                                        data.get("eta")))
        elif name == "file_transfer_paused":
            _print(f"chatp2pctl: paused by {'the contact' if data.get('by') == 'peer' else 'us'}", sys.stderr)
        elif name == "file_transfer_failed":
            _print(f"chatp2pctl: the transfer failed: {data.get('reason')}", sys.stderr)
            return EXIT_FAILED
        elif name == "file_transfer_completed":
            size = data.get("size") or 0
            progress.show(progress_line(size, size, 0, None), final=True)
            return _verify(path, data.get("sha256"))


def _verify(path: str, sha256: str | None) -> int:
    """The contact checked the file against the hash we sent; check ours is still the file here."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        _print(f"chatp2pctl: sent, but cannot read {path} again to verify it: {exc.strerror}", sys.stderr)
        return EXIT_FAILED
    if sha256 != digest.hexdigest():
        _print(f"chatp2pctl: sent, but {path} changed meanwhile (sent sha256 {sha256})", sys.stderr)
        return EXIT_FAILED
    _print(f"sha256 {sha256}  {path}", sys.stdout)
    return EXIT_OK


def run_history(args: argparse.Namespace, target: Target) -> int:
    """Page back from the newest message until --since or --limit is reached; print oldest first."""
    messages: list[dict] = []
    before = None
    with _client(args, target) as client:
        while True:
            page_size = min(HISTORY_PAGE, args.limit - len(messages)) if args.limit else HISTORY_PAGE
            data: dict[str, Any] = {"peer": args.peer, "limit": page_size}
            if before is not None:
                data["before"] = before
            try:
                page = client.call("p2p", "history", data)
            except RequestFailed as exc:
                return _failed(exc.response)
            done = len(page) < page_size
            if args.since is not None and page and message_time(page[0]) < args.since:
                page = [m for m in page if message_time(m) >= args.since]
                done = True
            messages[:0] = page
            if done or (args.limit and len(messages) >= args.limit) or not page:
                break
            before = page[0]["id"]
    _show_messages(messages, args.json, with_peer=False)
    return EXIT_OK


def run_search(args: argparse.Namespace, target: Target) -> int:
    data: dict[str, Any] = {"text": " ".join(args.words), "limit": args.limit}
    if args.peer:
        data["peer"] = args.peer
    with _client(args, target) as client:
        try:
            found = client.call("p2p", "search", data)
        except RequestFailed as exc:
            return _failed(exc.response)
    if not found and not args.json:
        _print("nothing found", sys.stderr)
    _show_messages(found, args.json, with_peer=True)
    return EXIT_OK


def _show_messages(messages: list[dict], as_json: bool, with_peer: bool) -> None:
    for message in messages:
        text = json.dumps(message, ensure_ascii=False) if as_json else format_message(message, with_peer)
        sys.stdout.write(text + "\n")
    sys.stdout.flush()
