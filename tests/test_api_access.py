"""Who may use the API: the same-user check fails closed, and the token comparison takes any
text. A real ApiServer on a free loopback port, a real TCP client; only the uid lookup (which
reads /proc/net/tcp) is replaced, to stand for a system where it cannot answer."""

import json
import os
from gevent import socket

import gevent

from chatp2p_core.api.server import UNKNOWN_USER_ERROR, ApiServer
from chatp2p_core.api.table import CommandTable


def make_server(**options):
    table = CommandTable()
    table.add("status", None, lambda context, data: "up", blocking=False)
    server = ApiServer(table, None, "127.0.0.1", 0, idle_timeout=10, max_request_bytes=65536,
                       max_connections=8, **options)
    server.start()
    return server


def ask(server, payload: bytes) -> list:
    """Send from a greenlet-friendly socket; return every answer line until the server closes
    or the answers to our requests have arrived."""
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def test_a_client_whose_user_cannot_be_determined_is_refused_with_a_reason():
    server = make_server(uid_of=lambda local, remote: None)
    try:
        answers = gevent.spawn(ask, server, b'{"command":"status"}\n').get(timeout=10)
        assert answers == [{"success": False, "error": UNKNOWN_USER_ERROR,
                            "timestamp": answers[0]["timestamp"]}]
        assert server.refused["unknown_user"] == 1
    finally:
        server.stop()


def test_a_client_of_this_user_is_served():
    server = make_server(uid_of=lambda local, remote: os.getuid())
    try:
        answers = gevent.spawn(ask, server, b'{"command":"status"}\n').get(timeout=10)
        assert [a["success"] for a in answers] == [True] and not server.refused
    finally:
        server.stop()


def test_a_non_ascii_token_is_a_wrong_token_not_a_crash():
    server = make_server(token="s3cret", check_uid=False)
    try:
        requests = (json.dumps({"command": "status", "token": "é\ud800"}) + "\n"
                    + json.dumps({"command": "status", "token": "s3cret"}) + "\n").encode()
        answers = gevent.spawn(ask, server, requests).get(timeout=10)
        assert [a["success"] for a in answers] == [False, True]
        assert "token" in answers[0]["error"]
    finally:
        server.stop()
