"""Who may read events: the tcp:// events endpoint asks for the API token (ZeroMQ PLAIN), and
events also stream on an API connection (same-user check, no ZeroMQ needed). A real daemon."""

import json
import pathlib
import shutil
import socket
import tempfile

import zmq

from daemon import Daemon, ok
from poll import wait_for

TMP = DAEMON = None


def setup_module():
    global TMP, DAEMON
    TMP = tempfile.mkdtemp(prefix="chatp2p-events-access-")
    DAEMON = Daemon(TMP, "--events-port", "0").start()


def teardown_module():
    if DAEMON is not None:
        DAEMON.stop()
    shutil.rmtree(TMP, ignore_errors=True)


def tcp_endpoint():
    endpoints = ok(DAEMON.request("status"))["data"]["events"]["endpoints"]
    return next(e for e in endpoints if e.startswith("tcp://"))


def subscriber(context, password=None):
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    if password is not None:
        sub.plain_username, sub.plain_password = b"chatp2p", password
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(tcp_endpoint())
    return sub


def test_the_tcp_endpoint_serves_only_holders_of_the_token():
    token = pathlib.Path(DAEMON.data_dir, "ipc.token").read_text().strip().encode()
    assert oct(pathlib.Path(DAEMON.data_dir, "ipc.token").stat().st_mode & 0o777) == "0o600"
    context = zmq.Context()
    try:
        good, bad, none = subscriber(context, token), subscriber(context, b"0" * 64), subscriber(context)
        number = [0]

        def an_event_arrived():
            number[0] += 1   # events until the authorised subscriber's session is up
            ok(DAEMON.request("contacts", "add", {"peer": f"probe{number[0]}", "public_key": DAEMON.other_id()}))
            ok(DAEMON.request("contacts", "remove", {"peer": f"probe{number[0]}"}))
            return good.poll(200)

        wait_for(an_event_arrived, 15, "an event on the tcp endpoint with the token")
        assert bad.poll(500) == 0 and none.poll(0) == 0     # both had the same events to read
    finally:
        context.destroy(linger=0)


def api_stream(request):
    sock = socket.create_connection((DAEMON.host, DAEMON.port), timeout=10)
    sock.sendall(json.dumps(request).encode() + b"\n")
    return sock, sock.makefile("rb")


def test_events_stream_on_an_api_connection():
    sock, lines = api_stream({"command": "events", "action": "subscribe", "data": {"events": ["contact_added"]}})
    try:
        answer = json.loads(lines.readline())
        assert answer["success"] is True and answer["data"] == {"events": ["contact_added"]}
        ok(DAEMON.request("contacts", "add", {"peer": "Streamed", "public_key": DAEMON.other_id()}))
        ok(DAEMON.request("contacts", "remove", {"peer": "Streamed"}))      # filtered out
        ok(DAEMON.request("contacts", "add", {"peer": "Streamed2", "public_key": DAEMON.other_id()}))
        first, second = json.loads(lines.readline()), json.loads(lines.readline())
        assert [first["event"], second["event"]] == ["contact_added", "contact_added"]
        assert first["data"]["name"] == "Streamed" and second["data"]["name"] == "Streamed2"
        assert set(first) == {"event", "data", "timestamp"}
        # The same connection still answers requests.
        sock.sendall(b'{"command":"status","id":7}\n')
        assert json.loads(lines.readline())["id"] == 7
    finally:
        sock.close()
        DAEMON.request("contacts", "remove", {"peer": "Streamed2"})


def test_unknown_event_names_are_refused():
    sock, lines = api_stream({"command": "events", "action": "subscribe", "data": {"events": ["nope"]}})
    try:
        answer = json.loads(lines.readline())
        assert answer["success"] is False and answer["error"].startswith("Unknown event 'nope'")
    finally:
        sock.close()
