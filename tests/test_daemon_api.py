"""The control API against a real chatp2pd subprocess: framing, limits, bad input, security."""

import json
import os
import pathlib
import pwd
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

from hypothesis import HealthCheck, given, settings, strategies as st

from daemon import Daemon
from poll import wait_for

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TMP = None
NODE = None


def setup_module():
    global TMP, NODE
    TMP = tempfile.mkdtemp(prefix="chatp2p-api-")
    NODE = Daemon(os.path.join(TMP, "a"), "--max-request-bytes", str(2 << 20))
    NODE.start()


def teardown_module():
    NODE.stop()
    shutil.rmtree(TMP, ignore_errors=True)


def connect(port=None, timeout=10):
    sock = socket.create_connection(("127.0.0.1", port or NODE.port), timeout=timeout)
    return sock, sock.makefile("rb")


def read_reply(reader):
    line = reader.readline()
    assert line.endswith(b"\n"), line
    return json.loads(line)


def exchange(payload, count, port=None):
    sock, reader = connect(port)
    try:
        sock.sendall(payload)
        return [read_reply(reader) for _ in range(count)]
    finally:
        sock.close()


def tls_exchange(payload, port, pin):
    """One request over the daemon's TLS API, after checking its certificate's pin."""
    from chatp2p_core.api import tls
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = tls.client_context().wrap_socket(raw)
    try:
        assert tls.fingerprint_of(sock.getpeercert(binary_form=True)) == pin
        sock.sendall(payload)
        return read_reply(sock.makefile("rb"))
    finally:
        sock.close()


def is_closed(sock, wait=5.0):
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_status_fields():
    status = NODE.request("status")
    assert status["success"] is True and "error" not in status
    assert TIMESTAMP.match(status["timestamp"])
    data = status["data"]
    for key in ("version", "uptime_s", "identity", "p2p", "ipc", "events", "contacts", "peers", "crypto"):
        assert key in data, key
    assert data["ipc"] == {"host": "127.0.0.1", "port": NODE.port, "tls_fingerprint": None}
    assert data["p2p"]["running"] is True and data["p2p"]["port"] > 0
    assert data["events"]["endpoint"].startswith("ipc://")
    assert data["crypto"]["backend"] in ("pycryptodome", "liboqs")
    assert set(data["identity"]) >= {"name", "fingerprint", "public_key"}
    ready = [line for line in NODE.stderr_text().splitlines() if " ready " in line]
    assert ready and f"127.0.0.1:{NODE.port}" in ready[0] and f"p2p_port={data['p2p']['port']}" in ready[0]


def test_status_accepts_any_action():
    payload = b'{"command":"status"}\n{"command":"status","action":null}\n{"command":"status","action":"x"}\n'
    assert all(r["success"] for r in exchange(payload, 3))


def test_windows_client_framing():
    """Bare objects back to back, PascalCase keys, every value a string, a BOM first."""
    payload = ("\ufeff" + '{"Command":"contacts","Action":"add","Data":{"Peer":"Win","PublicKey":"%s"}}'
               '{"Command":"contacts","Action":"list","Data":null}'
               '{"Command":"status","Action":"null","Data":"null"}') % NODE.other_id()
    replies = exchange(payload.encode("utf-8"), 3)
    assert [r["success"] for r in replies] == [True, True, True], replies
    assert replies[0]["data"] == "Contact added"
    assert "Win" in [c["name"] for c in replies[1]["data"]]
    assert NODE.request("contacts", "remove", {"peer": "Win"})["success"]


def test_pipelining_without_id_keeps_order():
    requests = []
    for i in range(200):
        requests.append({"command": "contacts", "action": "remove", "data": {"peer": f"nobody{i}"}})
        requests.append({"command": "status"})
    replies = exchange(b"".join(json.dumps(r).encode() for r in requests), len(requests))
    for i in range(200):
        assert replies[2 * i]["error"] == f"Peer not found: nobody{i}"
        assert replies[2 * i + 1]["success"] is True


def test_pipelined_messages_answered_after_their_commit_keep_order():
    """send_message is answered once its group commit is done (a deferred answer, no greenlet
    per request): its answers, errors from the commit included, keep their places."""
    assert NODE.request("contacts", "add", {"peer": "Later", "public_key": NODE.other_id()})["success"]
    try:
        requests = []
        for i in range(100):
            requests.append({"command": "p2p", "action": "send_message",
                             "data": {"peer": "Later", "message": f"m{i}", "message_id": f"order-{i % 60}"}})
            requests.append({"command": "contacts", "action": "show", "data": {"peer": "Later"}})
        requests.append({"command": "p2p", "action": "send_message", "id": "with-id",
                         "data": {"peer": "Later", "message": "x", "message_id": "order-0"}})
        replies = exchange(b"".join(json.dumps(r).encode() for r in requests), len(requests))
        for i in range(100):
            send, show = replies[2 * i], replies[2 * i + 1]
            if i < 60:
                assert send["success"] and send["data"] == "Message queued" and send["message_id"] == f"order-{i}"
            else:
                assert send["error"] == f"message_id 'order-{i % 60}' was already used for Later"
            assert show["success"] and show["data"]["name"] == "Later"
        assert replies[-1]["id"] == "with-id" and "already used" in replies[-1]["error"]
        history = NODE.request("p2p", "history", {"peer": "Later", "limit": 200})["data"]
        assert sorted(m["body"] for m in history) == sorted(f"m{i}" for i in range(60))
    finally:
        assert NODE.request("contacts", "remove", {"peer": "Later"})["success"]


def test_pipelining_with_id():
    requests = [{"command": "contacts", "action": "remove", "data": {"peer": f"n{i}"}, "id": i} for i in range(300)]
    replies = exchange(b"\n".join(json.dumps(r).encode() for r in requests) + b"\n", len(requests))
    assert sorted(r["id"] for r in replies) == list(range(300))
    assert all(r["error"] == f"Peer not found: n{r['id']}" for r in replies)


def test_invalid_json_then_resync_at_newline():
    payload = b'{"command": "status",,}\nnot json at all\n{"command":"status","id":"after"}\n'
    replies = exchange(payload, 3)
    assert replies[0]["success"] is False and replies[0]["error"].startswith("Invalid JSON: ")
    assert replies[1]["success"] is False and replies[1]["error"].startswith("Invalid JSON: ")
    assert replies[2]["success"] is True and replies[2]["id"] == "after"


def test_lone_surrogates_get_answers_and_the_connection_goes_on():
    """JSON allows "\\ud800" (no UTF-8 form): a field holding one is refused by name; an
    answer quoting one (an unknown command) still goes out, as the same JSON escape."""
    payload = (b'{"command":"contacts","action":"remove","data":{"peer":"a\\ud800"}}\n'
               b'{"command":"\\udfff"}\n{"command":"status","id":1}\n')
    replies = exchange(payload, 3)
    assert replies[0]["error"] == "Field 'peer' is not valid Unicode text (lone surrogate)"
    assert replies[1]["error"].startswith("Unknown command '\udfff'")
    assert replies[2]["success"] is True and replies[2]["id"] == 1


def test_unknown_command_action_and_bad_fields():
    assert "valid commands: contacts, crypto" in NODE.request("fly")["error"]
    error = NODE.request("contacts", "fly")["error"]
    assert "valid actions:" in error and "add" in error and "remove" in error
    assert NODE.request("contacts", "add", {"peer": "x"})["error"] == "Missing field 'public_key'"
    assert NODE.request("contacts", "add", {"peer": ["x"], "public_key": "y"})["error"] == \
        "Field 'peer' must be a string"
    assert NODE.request("contacts", "add", {"peer": "x", "public_key": "garbage!!"})["success"] is False


def test_oversized_request_is_refused_and_closed():
    sock, reader = connect()
    try:
        sock.sendall(b'{"command":"status","data":{"x":"' + b"a" * (3 << 20))
        reply = read_reply(reader)
        assert reply["success"] is False and "too large" in reply["error"]
        assert is_closed(sock)
    finally:
        sock.close()
    assert NODE.request("status")["success"]


def test_byte_at_a_time_megabyte_request():
    blob = 'é\\"{}' * 100000  # escapes and braces inside a string: the scanner must track them
    payload = json.dumps({"command": "contacts", "action": "add", "data": {"peer": "big", "public_key": blob},
                          "id": "slow"}).encode()
    assert 1 << 20 < len(payload) < 2 << 20
    cpu_before = NODE.cpu_seconds()
    sock, reader = connect(timeout=60)
    try:
        for byte in payload:
            sock.send(bytes([byte]))
        reply = read_reply(reader)
    finally:
        sock.close()
    assert reply["id"] == "slow" and reply["success"] is False and "too long" in reply["error"]
    # Linear scanning costs about a second for this; re-parsing the buffer per read would be hours.
    assert NODE.cpu_seconds() - cpu_before < 20


def test_http_request_is_closed_without_executing():
    body = json.dumps({"command": "contacts", "action": "add", "data": {"peer": "web", "public_key": NODE.other_id()}})
    sock, _ = connect()
    try:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8889\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode()))
        assert is_closed(sock)
    finally:
        sock.close()
    names = [c["name"] for c in NODE.request("contacts", "list")["data"]]
    assert "web" not in names


def test_five_hundred_concurrent_connections():
    sockets = [socket.create_connection(("127.0.0.1", NODE.port), timeout=30) for _ in range(500)]
    try:
        for i, sock in enumerate(sockets):
            sock.sendall(json.dumps({"command": "status", "id": i}).encode() + b"\n")
        for i, sock in enumerate(sockets):
            reply = read_reply(sock.makefile("rb"))
            assert reply["success"] and reply["id"] == i
    finally:
        for sock in sockets:
            sock.close()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=400))
def test_random_bytes_never_hurt(data):
    sock, _ = connect()
    try:
        sock.sendall(b'{"command":"status"}' + data + b"\n")
    finally:
        sock.close()
    assert exchange(b'{"command":"status"}', 1)[0]["success"]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                           max_leaves=20)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.fixed_dictionaries({}, optional={"command": st.sampled_from(["status", "contacts", "crypto", "x"]) | json_values,
                                           "action": st.sampled_from(["list", "add", "remove", "rename", "encrypt",
                                                                      "decrypt", "block"]) | json_values,
                                           "data": json_values, "id": json_values}))
def test_random_json_requests_get_answers(request):
    reply = exchange(json.dumps(request).encode() + b"\n", 1)[0]
    assert isinstance(reply["success"], bool) and TIMESTAMP.match(reply["timestamp"])
    if not reply["success"]:
        assert isinstance(reply["error"], str) and "Traceback" not in reply["error"]


def test_server_alive_after_abuse():
    assert NODE.request("status")["success"]
    assert NODE.proc.poll() is None


def test_idle_connections_are_closed():
    node = Daemon(os.path.join(TMP, "idle"), "--idle-timeout", "1")
    node.start()
    try:
        sock, _ = connect(node.port)
        started = time.monotonic()
        assert is_closed(sock, wait=10)
        assert 0.8 < time.monotonic() - started < 5
        sock.close()
    finally:
        node.stop()


def test_idle_timeout_spares_busy_clients_and_drops_clients_that_do_not_read():
    node = Daemon(os.path.join(TMP, "idle-busy"), "--idle-timeout", "1")
    node.start()
    black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # swallows the handshake
    black_hole.bind(("127.0.0.1", 0))
    try:
        # Talking now and then, for longer than the timeout: never idle.
        sock, reader = connect(node.port)
        for _ in range(6):
            time.sleep(0.4)
            sock.sendall(b'{"command":"status"}\n')
            assert read_reply(reader)["success"]
        # Waiting 3 s for the answer of a slow request: not idle either.
        assert node.request("contacts", "add", {"peer": "Far", "public_key": NODE.other_id()})["success"]
        assert node.request("p2p", "connect",
                            {"peer": "Far", "address": "127.0.0.1:%d" % black_hole.getsockname()[1]})["success"]
        started = time.monotonic()
        sock.sendall(b'{"command":"contacts","action":"negotiate_keys","data":{"peer":"Far","timeout":3}}\n')
        reply = read_reply(reader)
        assert reply["success"] is False and "Could not reach Far" in reply["error"]
        assert time.monotonic() - started > 2.5
        sock.close()
        # Asking for megabytes of answers and reading none: dropped once nothing moves.
        greedy = socket.create_connection(("127.0.0.1", node.port))
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.settimeout(0.5)
        requests = b'{"command":"status"}\n' * 4000  # 20 MB of answers
        sent = 0
        try:
            while sent < len(requests):
                sent += greedy.send(requests[sent:])
        except socket.timeout:
            pass  # the server stopped reading: it is stuck writing to us
        assert node.request("status")["success"]  # others are served meanwhile
        # Nothing moves for the idle timeout (1 s): the server drops the connection (TCP_INFO's
        # first byte is the state; 1 = ESTABLISHED), and only then do we start reading.
        wait_for(lambda: greedy.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 1, 10,
                 "the server to drop a client that does not read")
        assert node.request("status")["success"]
        greedy.settimeout(5)
        received = 0
        try:
            while chunk := greedy.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < 4000 * 5000  # closed before all the answers were written
        greedy.close()
    finally:
        black_hole.close()
        node.stop()


def test_files_are_private():
    data = pathlib.Path(NODE.data_dir)
    assert data.stat().st_mode & 0o777 == 0o700
    for name in ("identity.key", "chatp2p.db", "run.json"):
        assert (data / name).stat().st_mode & 0o777 == 0o600, name


def test_restart_keeps_identity_and_contacts_and_stops_cleanly():
    node = Daemon(os.path.join(TMP, "restart"))
    node.start()
    identity = node.request("status")["data"]["identity"]
    assert node.request("contacts", "add", {"peer": "Keep", "public_key": NODE.other_id()})["success"]
    started = time.monotonic()
    assert node.stop() == 0
    assert time.monotonic() - started < 2.5
    database = sqlite3.connect(os.path.join(node.data_dir, "chatp2p.db"))
    assert database.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    database.close()
    node.start()
    try:
        assert node.request("status")["data"]["identity"] == identity
        assert [c["name"] for c in node.request("contacts", "list")["data"]] == ["Keep"]
    finally:
        assert node.stop() == 0


def test_sigint_stops_cleanly():
    node = Daemon(os.path.join(TMP, "sigint"))
    node.start()
    node.proc.send_signal(2)
    assert node.proc.wait(timeout=2.5) == 0


def test_second_instance_on_same_data_dir_is_refused():
    second = subprocess.run(Daemon.command(NODE.data_dir, "--ipc-port", "0"), capture_output=True, text=True,
                            timeout=30, env=Daemon.environment(TMP))
    assert second.returncode == 1
    assert "in use by another chatp2p process" in second.stderr and str(NODE.proc.pid) in second.stderr


def test_non_loopback_api_needs_flag_and_then_a_token():
    refused = subprocess.run(Daemon.command(os.path.join(TMP, "remote"), "--ipc-host", "0.0.0.0"),
                             capture_output=True, text=True, timeout=30, env=Daemon.environment(TMP))
    assert refused.returncode == 2 and "--allow-remote-ipc" in refused.stderr
    node = Daemon(os.path.join(TMP, "remote"), "--ipc-host", "0.0.0.0", "--allow-remote-ipc")
    node.start()
    try:
        token_file = pathlib.Path(node.data_dir, "ipc.token")
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        # The token must not cross a network in clear: the API speaks only TLS now.
        for name in ("ipc.crt", "ipc.key"):
            assert pathlib.Path(node.data_dir, name).stat().st_mode & 0o777 == 0o600
        pin = json.loads(pathlib.Path(node.data_dir, "run.json").read_text())["tls_fingerprint"]
        assert len(pin) == 64 and pin in node.stderr_text()         # logged at start: tls_pin=...
        plain, reader = connect(node.port)
        plain.sendall(json.dumps({"command": "status", "token": token}).encode() + b"\n")
        try:
            answer = reader.readline()
        except ConnectionResetError:
            answer = b""
        assert answer == b""                                          # no answer in clear
        plain.close()
        no_token = tls_exchange(b'{"command":"status"}\n', node.port, pin)
        assert no_token["success"] is False and "token" in no_token["error"]
        wrong = tls_exchange(b'{"command":"status","token":"00"}\n', node.port, pin)
        assert wrong["success"] is False
        good = tls_exchange(json.dumps({"command": "status", "token": token}).encode() + b"\n", node.port, pin)
        assert good["success"] is True and good["data"]["ipc"]["tls_fingerprint"] == pin
    finally:
        node.stop()


def _other_user():
    name = "chatp2ptest"
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
        return pwd.getpwnam(name).pw_uid


def test_other_local_user_is_refused():
    if os.geteuid() != 0:
        import pytest
        pytest.skip("needs root to create a second local user")
    uid = _other_user()
    client = ("import socket,sys\n"
              "s=socket.create_connection(('127.0.0.1',%d),timeout=10)\n"
              "try:\n"
              "    s.sendall(b'{\"command\":\"status\"}\\n')\n"
              "    d=s.recv(65536)\n"
              "except ConnectionResetError:\n"
              "    d=b''\n"
              "sys.stdout.write(repr(d))\n") % NODE.port
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    proc = subprocess.run([python, "-c", client], user=uid, capture_output=True, text=True, timeout=30,
                          cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout in ("b''",), proc.stdout
    # The same client as our own user gets an answer.
    mine = subprocess.run([python, "-c", client], capture_output=True, text=True, timeout=30)
    assert "success" in mine.stdout
