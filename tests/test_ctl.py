"""`chatp2pctl` against a real chatp2pd subprocess: every subcommand, exit codes, events."""

import json
import os
import pathlib
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

from chatp2p_core.api import ctl

from daemon import Daemon

CTL = [sys.executable, "-c", "import chatp2p, sys; sys.exit(chatp2p.main_ctl())"]
TMP = None
NODE = None


def setup_module():
    global TMP, NODE
    TMP = tempfile.mkdtemp(prefix="chatp2p-ctl-")
    NODE = Daemon(os.path.join(TMP, "node"))
    NODE.start()


def teardown_module():
    NODE.stop()
    shutil.rmtree(TMP, ignore_errors=True)


def run(*args, stdin=None, env=None):
    """Run chatp2pctl; returns the CompletedProcess (text mode)."""
    return subprocess.run(CTL + list(args), input=stdin, capture_output=True, text=True, timeout=60,
                          env=env or Daemon.environment(TMP))


def run_ok(*args, stdin=None):
    proc = run(*args, stdin=stdin)
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr == "", proc.stderr
    return proc.stdout


def on_node(*args):
    """Arguments that reach NODE through its data dir (port read from run.json)."""
    return ("--data-dir", NODE.data_dir) + args


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- status and id ------------------------------------------------------------------------------
def test_status_human():
    status = NODE.request("status")["data"]
    out = run_ok(*on_node("status"))
    labels = [line.split(":", 1)[0] for line in out.splitlines()]
    for label in ("name", "ID", "version", "uptime", "p2p", "ipc", "events", "contacts", "peers", "crypto"):
        assert label in labels, (label, out)
    assert status["identity"]["fingerprint"] in out
    assert f"running, UDP port {status['p2p']['port']}" in out
    assert f"127.0.0.1:{NODE.port}" in out
    assert status["events"]["endpoint"] in out
    starts = set()
    for line in out.splitlines():
        rest = line.split(":", 1)[1]
        starts.add(len(line) - len(rest.lstrip()))
    assert len(starts) == 1, out  # values start in one column


def test_status_json_with_explicit_port_and_options_after_the_command():
    out = run_ok("--port", str(NODE.port), "--data-dir", os.path.join(TMP, "nothing-here"), "status", "--json")
    assert out.count("\n") == 1
    reply = json.loads(out)
    assert reply["success"] is True and reply["data"]["ipc"]["port"] == NODE.port


def test_data_dir_from_environment():
    env = Daemon.environment(TMP)
    env["CHATP2P_DATA_DIR"] = NODE.data_dir
    proc = run("status", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["data"]["ipc"]["port"] == NODE.port


def test_id_prints_id_then_bundle():
    identity = NODE.request("status")["data"]["identity"]
    lines = run_ok(*on_node("id")).splitlines()
    assert lines == [identity["fingerprint"], identity["public_key"]]


# -- contacts -----------------------------------------------------------------------------------
def contact_names():
    return [c["name"] for c in NODE.request("contacts", "list")["data"]]


def test_contacts_add_list_rename_block_remove():
    bundle = NODE.request("crypto", "generate_keypair")["data"]["public_key"]
    key_file = os.path.join(TMP, "bob.pub")
    with open(key_file, "w") as handle:
        handle.write(bundle + "\n")
    assert run_ok(*on_node("contacts", "add", "Alice", NODE.other_id())) == "Contact added\n"
    assert run_ok(*on_node("contacts", "add", "Bob", "@" + key_file)) == "Contact added\n"
    assert {"Alice", "Bob"} <= set(contact_names())

    table = run_ok(*on_node("contacts", "list")).splitlines()
    assert table[0].split() == ["NAME", "ID", "STATE", "UNREAD", "LAST", "SEEN"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert NODE.other_id() in rows["Alice"]
    assert len({line.index(line.split()[1]) for line in table}) == 1, table  # the ID column is aligned

    assert json.loads(run_ok(*on_node("contacts", "rename", "Alice", "Carol")))["name"] == "Carol"
    assert "Carol" in contact_names() and "Alice" not in contact_names()
    assert json.loads(run_ok(*on_node("contacts", "block", "Carol")))["blocked"] is True
    assert "blocked" in [line for line in run_ok(*on_node("contacts", "list")).splitlines()
                         if line.startswith("Carol")][0]
    assert json.loads(run_ok(*on_node("contacts", "unblock", "Carol")))["blocked"] is False
    shown = json.loads(run_ok(*on_node("contacts", "show", "Bob")))
    assert shown["name"] == "Bob" and shown["public_key"] == bundle

    assert run_ok(*on_node("contacts", "remove", "Carol")) == "Contact removed\n"
    assert run_ok(*on_node("contacts", "remove", "Bob", "--json")).startswith('{"success":true')
    assert "Carol" not in contact_names() and "Bob" not in contact_names()


def test_failure_exits_1_with_the_error_on_stderr():
    proc = run(*on_node("contacts", "remove", "Nobody"))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == "chatp2pctl: Peer not found: Nobody\n"


def test_failure_with_json_prints_the_response_too():
    proc = run(*on_node("--json", "contacts", "show", "Nobody"))
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"] == "Peer not found: Nobody"


# -- crypto -------------------------------------------------------------------------------------
def test_crypto_round_trip_with_files_and_stdin():
    pair = json.loads(run_ok(*on_node("--json", "crypto", "generate-keypair")))["data"]
    public_file = os.path.join(TMP, "pair.pub")
    private_file = os.path.join(TMP, "pair.key")
    for path, text in ((public_file, pair["public_key"]), (private_file, pair["private_key"])):
        with open(path, "w") as handle:
            handle.write(text + "\n")
    message = "héllo wörld, @not-a-file"
    sealed = run_ok(*on_node("crypto", "encrypt", "--key", "@" + public_file, message)).strip()
    assert sealed and "\n" not in sealed and message not in sealed
    opened = run_ok(*on_node("crypto", "decrypt", "--private-key", "@" + private_file, "-"), stdin=sealed + "\n")
    assert opened == message + "\n"
    # The message itself from stdin, kept exactly (trailing newline included).
    sealed = run_ok(*on_node("crypto", "encrypt", "--aead", "aes256gcm", "--key", pair["public_key"], "-"),
                    stdin="two\nlines\n").strip()
    opened = run_ok(*on_node("--json", "crypto", "decrypt", "--private-key", pair["private_key"], sealed))
    assert json.loads(opened)["data"]["message"] == "two\nlines\n"
    # Printed plainly, a text that ends with a newline gets no second one.
    assert run_ok(*on_node("crypto", "decrypt", "--private-key", pair["private_key"], sealed)) == "two\nlines\n"


def test_crypto_decrypt_with_the_wrong_key_fails():
    sealed = NODE.request("crypto", "encrypt", {"message": "x", "public_key": NODE.request(
        "crypto", "generate_keypair")["data"]["public_key"]})["data"]["encrypted_data"]
    other = NODE.request("crypto", "generate_keypair")["data"]["private_key"]
    proc = run(*on_node("crypto", "decrypt", "--private-key", other, sealed))
    assert proc.returncode == 1 and proc.stderr.startswith("chatp2pctl: ") and proc.stdout == ""


def test_unreadable_file_is_a_usage_error():
    proc = run(*on_node("crypto", "encrypt", "--key", "@" + os.path.join(TMP, "missing.pub"), "hi"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr


# -- p2p and raw --------------------------------------------------------------------------------
def test_p2p_passes_action_and_data_through():
    proc = run(*on_node("p2p", "no_such_action", "peer=Bob", "count:=3"))
    assert proc.returncode == 1
    assert "p2p" in proc.stderr and proc.stderr.startswith("chatp2pctl: ")


def test_raw_sends_the_object_as_is():
    out = run_ok(*on_node("raw", '{"Command":"status","id":"r1"}'))
    reply = json.loads(out)
    assert reply["success"] is True and reply["id"] == "r1" and "\n" in out.strip()  # indented
    out = run_ok(*on_node("raw", "--json", "-"), stdin='{"command":"contacts","action":"list"}')
    assert json.loads(out)["success"] is True and out.count("\n") == 1
    failed = run(*on_node("raw", '{"command":"nope"}'))
    assert failed.returncode == 1 and json.loads(failed.stdout)["success"] is False


def test_raw_rejects_what_is_not_an_object():
    for text in ("[1, 2]", "{not json"):
        proc = run(*on_node("raw", text))
        assert proc.returncode == 2, proc
        assert "raw:" in proc.stderr


# -- usage and reachability ---------------------------------------------------------------------
def test_usage_errors_exit_2():
    assert run().returncode == 2
    assert run("contacts", "add", "OnlyName").returncode == 2
    assert run("--port", "99999", "status").returncode == 2
    assert run("p2p", "send_message", "no-equals-sign").returncode == 2


def test_unreachable_daemon_exits_3():
    port = free_port()
    proc = run("--port", str(port), "--data-dir", os.path.join(TMP, "nothing-here"), "status")
    assert proc.returncode == 3
    assert proc.stderr == (f"chatp2pctl: cannot reach the chatp2p daemon at 127.0.0.1:{port}: "
                           "connection refused — is chatp2pd running?\n")
    assert "Traceback" not in proc.stderr


def test_a_remote_api_is_reached_over_pinned_tls_only():
    node = Daemon(os.path.join(TMP, "token"), "--allow-remote-ipc")
    node.start()
    try:
        # The data dir's run.json gives the pin (and the token goes to that daemon only).
        assert json.loads(run_ok("--data-dir", node.data_dir, "--json", "status"))["success"] is True
        elsewhere = os.path.join(TMP, "nothing-here")
        token = open(os.path.join(node.data_dir, "ipc.token")).read().strip()
        pin = json.load(open(os.path.join(node.data_dir, "run.json")))["tls_fingerprint"]
        # Without the pin, no TLS: the daemon answers nothing in clear.
        plain = run("--port", str(node.port), "--token", token, "--data-dir", elsewhere, "status")
        assert plain.returncode == 3, plain
        wrong = run("--port", str(node.port), "--token", token, "--pin", "ab" * 32, "--data-dir", elsewhere, "status")
        assert wrong.returncode == 3 and "not the pinned" in wrong.stderr and "nothing was sent" in wrong.stderr
        pinned = ":".join(pin[i:i + 2] for i in range(0, 64, 2)).upper()   # as people paste it
        assert run("--port", str(node.port), "--token", token, "--pin", pinned, "--data-dir", elsewhere,
                   "status").returncode == 0
        bad_pin = run("--pin", "nope", "status")
        assert bad_pin.returncode == 2 and "64 hexadecimal digits" in bad_pin.stderr
        far = run("--host", "192.0.2.1", "--port", "9", "status")
        assert far.returncode == 2 and "--pin" in far.stderr
    finally:
        node.stop()


def test_the_token_goes_only_to_the_daemon_run_json_names():
    """A program squatting on the API port gets no token: run.json must name the port's owner."""
    import socket
    import subprocess as sp
    data_dir = pathlib.Path(TMP, "squat")
    data_dir.mkdir(exist_ok=True)
    (data_dir / "ipc.token").write_text("s3cret-token\n")
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    other = sp.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid, expect_token in ((other.pid, False), (os.getpid(), True), (None, False)):
            if pid is None:
                (data_dir / "run.json").unlink()
            else:
                (data_dir / "run.json").write_text(json.dumps({"pid": pid, "ipc_host": "127.0.0.1", "ipc_port": port,
                                                               "events": [], "p2p_port": 1}))
            client = sp.Popen([sys.executable, "-c", "import chatp2p, sys; sys.exit(chatp2p.main_ctl())",
                               "--data-dir", str(data_dir), "--port", str(port), "--timeout", "5", "status"],
                              stdout=sp.PIPE, stderr=sp.PIPE, env=Daemon.environment(TMP))
            conn, _ = squatter.accept()
            conn.settimeout(10)
            request = b""
            while not request.endswith(b"\n"):
                request += conn.recv(65536)
            conn.sendall(b'{"success":true,"data":{},"timestamp":"x"}\n')
            conn.close()
            client.communicate(timeout=20)
            assert ("s3cret-token" in request.decode()) == expect_token, (pid, request)
    finally:
        other.kill()
        squatter.close()


# -- events -------------------------------------------------------------------------------------
def _pump(stream, lines):
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def _next_line(lines, timeout=10):
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line within {timeout} s") from None


def test_events_prints_json_lines_until_ctrl_c():
    proc = subprocess.Popen(CTL + list(on_node("events", "contact_added", "contact_rem*")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=Daemon.environment(TMP))
    out, err = queue.Queue(), queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, out), daemon=True).start()
    threading.Thread(target=_pump, args=(proc.stderr, err), daemon=True).start()
    try:
        assert "listening for events on ipc://" in _next_line(err)
        assert NODE.request("contacts", "add", {"peer": "Eve", "public_key": NODE.other_id()})["success"]
        assert NODE.request("contacts", "rename", {"peer": "Eve", "new_name": "Eve2"})["success"]  # filtered out
        assert NODE.request("contacts", "remove", {"peer": "Eve2"})["success"]
        added = json.loads(_next_line(out))
        assert added["event"] == "contact_added" and added["data"]["name"] == "Eve" and added["timestamp"]
        removed = json.loads(_next_line(out))
        assert removed["event"] == "contact_removed" and removed["data"]["name"] == "Eve2"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert _next_line(out) is None and _next_line(err) is None  # nothing else, no traceback
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _inherit_sigint_ignored_and_blocked():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_events_stops_on_ctrl_c_even_when_its_parent_ignored_and_blocked_it():
    """A background job inherits SIGINT ignored (and a parent may block it): Python then never
    raises KeyboardInterrupt, and `events` would wait forever."""
    proc = subprocess.Popen(CTL + list(on_node("events")), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=Daemon.environment(TMP), preexec_fn=_inherit_sigint_ignored_and_blocked)
    try:
        assert "listening for events on ipc://" in proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- pure helpers -------------------------------------------------------------------------------
def test_parse_pairs():
    assert ctl.parse_pairs(["peer=Bob", "message=a=b", "chunk_size:=8192", "urls:=[\"stun:x\"]", "empty="]) == \
        {"peer": "Bob", "message": "a=b", "chunk_size": 8192, "urls": ["stun:x"], "empty": ""}
    for bad in (["novalue"], ["=x"], ["n:=not json"]):
        try:
            ctl.parse_pairs(bad)
        except ctl.UsageError:
            continue
        raise AssertionError(bad)


def test_read_value_literal_escape():
    assert ctl.read_value("plain") == "plain"
    assert ctl.read_value("@@handle") == "@handle"
    assert ctl.read_value("@") == "@"


def test_format_helpers():
    assert ctl.format_duration(5) == "5s"
    assert ctl.format_duration(3725) == "1h 02m 05s"
    assert ctl.format_duration(90061) == "1d 01h 01m 01s"
    assert ctl.format_table(["A", "B"], [["long", "x"], ["s", "y"]]) == "A     B\nlong  x\ns     y"
    assert ctl.format_address("::1", 8889) == "[::1]:8889"


def test_resolve_target_prefers_explicit_options():
    data_dir = NODE.data_dir
    assert ctl.resolve_target(pathlib.Path(data_dir), None, None, None)[:2] == ("127.0.0.1", NODE.port)
    assert ctl.resolve_target(pathlib.Path(data_dir), "::1", 1234, "t") == ("::1", 1234, "t", None)
    assert ctl.resolve_target(pathlib.Path(TMP, "nothing-here"), None, None, None) == ("127.0.0.1", 8889, None, None)


def test_api_client_call_and_request():
    with ctl.ApiClient.connect("127.0.0.1", NODE.port, timeout=10) as client:
        assert client.call("status")["ipc"]["port"] == NODE.port
        assert client.request("contacts", "show", {"peer": "Nobody"})["error"] == "Peer not found: Nobody"
        try:
            client.call("contacts", "show", {"peer": "Nobody"})
        except ctl.RequestFailed as exc:
            assert str(exc) == "Peer not found: Nobody" and exc.response["success"] is False
        else:
            raise AssertionError("no RequestFailed")
    try:
        ctl.ApiClient.connect("127.0.0.1", free_port(), timeout=5)
    except ctl.DaemonUnreachable as exc:
        assert "connection refused" in str(exc)
    else:
        raise AssertionError("no DaemonUnreachable")
