"""`chatp2pctl` everyday verbs against a real daemon pair: send, send-file, history, search,
delete, id --qr, and the conf file read by ctl."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

import segno

from daemon import Daemon, ok
from poll import wait_for
from test_transfer import close_pair, make_file, start_pair

CTL = [sys.executable, "-c", "import chatp2p, sys; sys.exit(chatp2p.main_ctl())"]
TMP = None
A = B = EV_A = EV_B = None


def setup_module():
    global TMP, A, B, EV_A, EV_B
    TMP = tempfile.mkdtemp(prefix="chatp2p-verbs-")
    A, B, EV_A, EV_B = start_pair(TMP, "v")


def teardown_module():
    close_pair((EV_A, EV_B), (A, B))
    shutil.rmtree(TMP, ignore_errors=True)


def ctl(daemon, *args, stdin=None, cwd=None, env=None, timeout=60):
    """chatp2pctl on `daemon` (through its data dir); the CompletedProcess, text mode."""
    return subprocess.run(CTL + ["--data-dir", daemon.data_dir, *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env or Daemon.environment(TMP))


def history(daemon, peer):
    return ok(daemon.request("p2p", "history", {"peer": peer, "limit": 1000}))["data"]


# -- send -------------------------------------------------------------------------------------
def test_send_prints_sent_and_the_contact_receives_it():
    proc = ctl(A, "send", "Bob", "hello from a script")
    assert proc.returncode == 0 and proc.stdout == "sent\n", proc
    EV_B.wait_data("p2p_message_received", 10, peer="Alice", message="hello from a script")


def test_send_reads_stdin_and_waits_for_delivery():
    proc = ctl(A, "send", "Bob", "--wait", stdin="line one\nline two\n")
    assert proc.returncode == 0 and proc.stdout == "sent\ndelivered\n", proc
    EV_B.wait_data("p2p_message_received", 10, peer="Alice", message="line one\nline two")


def test_send_to_an_offline_contact_is_queued_and_wait_times_out_with_3():
    ok(A.request("contacts", "add", {"peer": "Away", "public_key": _new_id(A)}))
    proc = ctl(A, "send", "Away", "are you there?")
    assert proc.returncode == 0 and proc.stdout == "queued\n", proc
    proc = ctl(A, "send", "Away", "still?", "--wait", "--wait-timeout", "1")
    assert proc.returncode == 3 and proc.stdout == "queued\n", proc
    assert "not delivered within 1 s" in proc.stderr


def test_send_refusals_exit_1_or_2_with_one_line():
    proc = ctl(A, "send", "Nobody", "hi")
    assert proc.returncode == 1 and proc.stderr.strip() == "chatp2pctl: Peer not found: Nobody", proc
    proc = ctl(A, "send", "Bob", stdin="")
    assert proc.returncode == 2 and "the message is empty" in proc.stderr, proc


# -- send-file --------------------------------------------------------------------------------
def _answer_offer(events, daemon, name, action):
    """In a thread: accept (or reject) the offer of the file `name` once it arrives."""
    def run():
        offer = events.wait_data("file_offer", 30, file_name=name)[0]
        daemon.request("p2p", action, {"transfer_id": offer["transfer_id"]})
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_send_file_with_a_relative_path_waits_shows_progress_and_prints_the_hash():
    folder = pathlib.Path(TMP, "outbox")
    folder.mkdir()
    expected = make_file(folder / "photo.bin", 3 << 20, seed=7)
    thread = _answer_offer(EV_B, B, "photo.bin", "accept_file")
    proc = ctl(A, "send-file", "Bob", "photo.bin", "--wait", cwd=folder)
    thread.join(5)
    assert proc.returncode == 0, proc
    assert proc.stdout == f"sha256 {expected}  {folder / 'photo.bin'}\n"
    assert "100%" in proc.stderr and "3.0 MiB of 3.0 MiB" in proc.stderr, proc.stderr
    received = EV_B.wait_data("file_received", 10, file_name="photo.bin")[0]
    assert received["sha256"] == expected


def test_send_file_without_wait_prints_the_transfer_id():
    path = pathlib.Path(TMP, "note.txt")
    path.write_text("a note\n")
    proc = ctl(A, "send-file", "Bob", str(path))
    assert proc.returncode == 0 and proc.stdout.startswith("offered "), proc
    tid = proc.stdout.split()[1]
    EV_B.wait_data("file_offer", 10, transfer_id=tid)
    ok(B.request("p2p", "reject_file", {"transfer_id": tid}))


def test_send_file_rejected_exits_1():
    path = pathlib.Path(TMP, "unwanted.bin")
    make_file(path, 1000, seed=2)
    thread = _answer_offer(EV_B, B, "unwanted.bin", "reject_file")
    proc = ctl(A, "send-file", "Bob", str(path), "--wait")
    thread.join(5)
    assert proc.returncode == 1 and "rejected by Bob" in proc.stderr, proc


def test_send_file_wait_timeout_exits_3():
    path = pathlib.Path(TMP, "ignored.bin")
    make_file(path, 1000, seed=3)
    proc = ctl(A, "send-file", "Bob", str(path), "--wait", "--wait-timeout", "1")
    assert proc.returncode == 3 and "not sent within 1 s" in proc.stderr, proc


def test_send_file_missing_file_exits_1():
    proc = ctl(A, "send-file", "Bob", "no-such-file.bin", cwd=TMP)
    assert proc.returncode == 1 and os.path.join(TMP, "no-such-file.bin") in proc.stderr, proc


# -- history ----------------------------------------------------------------------------------
def test_history_text_json_since_and_limit():
    ok(A.request("contacts", "add", {"peer": "Carol", "public_key": _new_id(A)}))
    for text in ("first", "second\nwith a second line", "third"):
        ok(A.request("p2p", "send_message", {"peer": "Carol", "message": text}))
    proc = ctl(A, "history", "Carol")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 4, proc
    assert lines[0].endswith("me (queued): first") and lines[1].endswith("me (queued): second")
    assert lines[2].strip() == "with a second line" and lines[2].startswith(" ")
    proc = ctl(A, "history", "Carol", "--json", "--limit", "2")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["body"] for r in rows] == ["second\nwith a second line", "third"]
    assert ctl(A, "history", "Carol", "--since", "1h").stdout.count("me (queued)") == 3
    proc = ctl(A, "history", "Carol", "--since", "2999-01-01")
    assert proc.returncode == 0 and proc.stdout == ""
    proc = ctl(A, "history", "Carol", "--since", "last tuesday")
    assert proc.returncode == 2 and "not a date or a duration" in proc.stderr


def test_history_pages_through_more_than_one_page():
    ok(A.request("contacts", "add", {"peer": "Dave", "public_key": _new_id(A)}))
    for n in range(1005):
        A.request("p2p", "send_message", {"peer": "Dave", "message": f"n{n}"})
    rows = [json.loads(line) for line in ctl(A, "history", "Dave", "--json").stdout.splitlines()]
    assert [r["body"] for r in rows] == [f"n{n}" for n in range(1005)]


def _new_id(daemon):
    return ok(daemon.request("crypto", "generate_keypair"))["data"]["fingerprint"]


# -- search and delete, also after a restart ------------------------------------------------------
def test_search_folds_accents_and_survives_a_restart_and_delete_removes_for_good():
    ok(B.request("p2p", "send_message", {"peer": "Alice", "message": "On se voit au Café de Flore ?"}))
    ok(B.request("p2p", "send_message", {"peer": "Alice", "message": "cafe crème à emporter"}))
    wait_for(lambda: len(ctl(A, "search", "flore", "--json").stdout.splitlines()) == 1, 10, "the message at A")
    proc = ctl(A, "search", "CAFÉ")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 2, proc
    assert lines[0].endswith("Bob: cafe crème à emporter") and lines[1].endswith("Bob: On se voit au Café de Flore ?")
    assert ctl(A, "search", "creme", "emp", "--peer", "Bob").stdout.count("Bob:") == 1
    assert ctl(A, "search", '"', "*", "NEAR(").returncode == 0  # no query syntax from the user
    _restart(A, EV_A)
    found = [json.loads(line) for line in ctl(A, "search", "cafe", "--json").stdout.splitlines()]
    assert {f["body"] for f in found} == {"On se voit au Café de Flore ?", "cafe crème à emporter"}
    flore = [f for f in found if "Flore" in f["body"]][0]
    reply = ok(A.request("p2p", "delete_message", {"peer": "Bob", "message_id": flore["message_id"]}))
    assert reply["data"] == {"peer": "Bob", "deleted": 1, "kept": 0}
    assert ctl(A, "search", "flore", "--json").stdout == ""
    assert not [m for m in history(A, "Bob") if "Flore" in m["body"]]
    _restart(A, EV_A)
    assert ctl(A, "search", "flore", "--json").stdout == ""
    assert not [m for m in history(A, "Bob") if "Flore" in m["body"]]
    assert ctl(A, "search", "emporter", "--json").stdout.count("\n") == 1


def test_deleting_a_whole_conversation_keeps_messages_in_flight_and_new_ones_still_arrive():
    ok(A.request("contacts", "add", {"peer": "Erin", "public_key": _new_id(A)}))
    ok(A.request("p2p", "send_message", {"peer": "Erin", "message": "queued, never sent"}))
    reply = ok(A.request("p2p", "delete_message", {"peer": "Erin", "all": True}))
    assert reply["data"] == {"peer": "Erin", "deleted": 0, "kept": 1}
    before = len(history(B, "Alice"))
    reply = ok(B.request("p2p", "delete_message", {"peer": "Alice", "all": "true"}))
    assert reply["data"]["deleted"] == before and history(B, "Alice") == []
    # the delivered ones are gone at B; A's next message still arrives (no seq reused)
    proc = ctl(B, "send", "Alice", "after the clean-up", "--wait")
    assert proc.returncode == 0 and proc.stdout == "sent\ndelivered\n", proc
    EV_A.wait_data("p2p_message_received", 10, message="after the clean-up")


def test_delete_message_refusals():
    for data, error in (({"peer": "Bob"}, "Give either message_id"),
                        ({"peer": "Bob", "message_id": "x", "all": True}, "Give either message_id"),
                        ({"peer": "Bob", "message_id": "no-such-id"}, "Message not found: no-such-id"),
                        ({"peer": "Nobody", "all": True}, "Peer not found: Nobody")):
        reply = A.request("p2p", "delete_message", data)
        assert reply["success"] is False and error in reply["error"], (data, reply)


def _restart(daemon, events):
    events.close()
    port = daemon.request("status")["data"]["p2p"]["port"]
    daemon.stop()
    daemon.extra_args = daemon.extra_args + ("--p2p-port", str(port))
    daemon.start()
    globals()["EV_A" if daemon is A else "EV_B"] = type(events)(daemon)


# -- id --qr ----------------------------------------------------------------------------------
CELL_BITS = {"█": (True, True), "▀": (True, False), "▄": (False, True), " ": (False, False)}


def test_id_qr_draws_the_id_as_a_readable_qr_code():
    fingerprint = A.request("status")["data"]["identity"]["fingerprint"]
    proc = ctl(A, "id", "--qr")
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert lines[-1] == fingerprint
    # Decode the half blocks back into modules (drawn = light) and compare with the QR of the ID.
    rows = []
    for line in lines[:-1]:
        cells = [CELL_BITS[ch] for ch in line]
        rows.append([not top for top, _ in cells])
        rows.append([not bottom for _, bottom in cells])
    expected = [list(map(bool, row)) for row in segno.make(fingerprint, error="m", micro=False).matrix_iter(border=2)]
    assert rows[:len(expected)] == expected


# -- the conf file --------------------------------------------------------------------------------
def test_ctl_reads_the_conf_file_and_chatp2p_variables():
    env = Daemon.environment(TMP)
    conf = pathlib.Path(TMP, "ctl.conf")
    conf.write_text(f"[node]\ndata_dir = {A.data_dir}\n")
    fingerprint = A.request("status")["data"]["identity"]["fingerprint"]
    for extra in ({"CHATP2P_CONFIG": str(conf)}, {"CHATP2P_DATA_DIR": A.data_dir}):
        proc = subprocess.run(CTL + ["id"], capture_output=True, text=True, timeout=60, env={**env, **extra})
        assert proc.returncode == 0 and proc.stdout.splitlines()[0] == fingerprint, (extra, proc)
    proc = subprocess.run(CTL + ["--config", str(conf), "id"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == fingerprint, proc
    # no run.json there: the conf's API port is where ctl looks
    other = pathlib.Path(TMP, "other.conf")
    other.write_text(f"[node]\ndata_dir = {TMP}/empty\n[ipc]\nport = {A.port}\n")
    proc = subprocess.run(CTL + ["id"], capture_output=True, text=True, timeout=60,
                          env={**env, "CHATP2P_CONFIG": str(other)})
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == fingerprint, proc
    other.write_text("[ipc]\nport = many\n")
    proc = subprocess.run(CTL + ["id"], capture_output=True, text=True, timeout=60,
                          env={**env, "CHATP2P_CONFIG": str(other)})
    assert proc.returncode == 2 and "configuration error" in proc.stderr and "[ipc] port" in proc.stderr


# -- the Windows client's requests, on a real socket ----------------------------------------------
def test_windows_client_requests_on_a_real_socket():
    """Bare objects back to back (no newline), PascalCase action names, a bare string for a list,
    and an error answer without `data`, as the seed shows it."""
    import socket as socket_mod

    with socket_mod.create_connection((A.host, A.port), timeout=30) as sock:
        sock.sendall(b'{"Command":"P2P","Action":"SendMessage","Data":{"Peer":"Bob","Message":"from WPF"}}'
                     b'{"Command":"contacts","Action":"NegotiateKeys","Data":{"Peer":"Nobody"}}'
                     b'{"Command":"p2p","Action":"Fly"}')
        reader = sock.makefile("rb")
        answers = [json.loads(reader.readline()) for _ in range(3)]
    assert answers[0]["success"] is True and answers[0]["data"] == "Message sent"
    assert answers[1] == {"success": False, "error": "Peer not found: Nobody", "timestamp": answers[1]["timestamp"]}
    assert answers[2]["success"] is False and "data" not in answers[2] and "send_message" in answers[2]["error"]
    EV_B.wait_data("p2p_message_received", 10, peer="Alice", message="from WPF")


def test_send_wait_when_the_daemon_goes_away_exits_3():
    node = Daemon(pathlib.Path(TMP, "vanishing"))
    node.start()
    try:
        ok(node.request("contacts", "add", {"peer": "Far", "public_key": _new_id(node)}))
        proc = subprocess.Popen(CTL + ["--data-dir", node.data_dir, "send", "Far", "hello?", "--wait",
                                       "--wait-timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=Daemon.environment(TMP))
        assert proc.stdout.readline() == "queued\n"     # subscribed and sent: now it waits
        node.kill()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 3 and ("closed the connection" in err or "lost the connection" in err), (out, err)
    finally:
        node.kill()
