"""The UI's widgets and controller, rendered off-screen (`widget.render((cols, rows)).text`).

A fake backend answers like the API (same shapes as lib/commands.py); the client runs requests
synchronously, so every keypress is followed by its answers before the next line.
"""

import datetime
import os
import pathlib
import tempfile

import urwid
import wcwidth

from chatp2p_ui import app as ui_app
from chatp2p_ui.client import Client
from chatp2p_ui.keys import KeyMap
from chatp2p_ui.model import Model
from chatp2p_ui.settings import load_ui_config
from chatp2p_ui.views.chrome import SizeGuard
from chatp2p_ui.views.conversation import ConversationView
from chatp2p_ui.views.prompt import Prompt

ME = "aaaaa-aaaaa-aaaaa-aaaaa-aaaaa-aaaaa-aaaaa-aaaaa-aaaaa-aaaaa-aaaaa-aaa"
BOB = "bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbb"
CAROL = "ccccc-ccccc-ccccc-ccccc-ccccc-ccccc-ccccc-ccccc-ccccc-ccccc-ccccc-ccc"
EVE = "eeeee-eeeee-eeeee-eeeee-eeeee-eeeee-eeeee-eeeee-eeeee-eeeee-eeeee-eee"


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


class FakeBackend:
    """Answers like the daemon's API; records every request."""

    description = "test"

    def __init__(self, contacts=()):
        self.calls = []
        self.contacts = {c["name"]: dict(c) for c in contacts}
        self.history = {}
        self.on_event = None

    def call(self, command, action=None, data=None):
        self.calls.append((command, action, data))
        handler = getattr(self, f"_{command}_{action}", None)
        if handler is None:
            return {"success": False, "error": f"Unknown action '{action}' for command '{command}' "
                                               "(valid actions: connect, history, mark_read, peers, send_message)"}
        try:
            return {"success": True, "data": handler(data or {})}
        except LookupError as exc:
            return {"success": False, "error": str(exc)}

    def _status_None(self, data):
        return {"identity": {"name": "alice", "fingerprint": ME, "short_id": ME[:11], "public_key": "PUBKEY"},
                "p2p": {"running": True, "port": 4000}, "peers": 0}

    def _contacts_list(self, data):
        return [dict(c, online=False, unread=c.get("unread", 0)) for c in self.contacts.values()]

    def _contacts_add(self, data):
        fingerprint = {"BOBKEY": BOB}.get(data["public_key"], data["public_key"][:71])
        self.contacts[data["peer"]] = {"name": data["peer"], "fingerprint": fingerprint, "verified": False,
                                       "blocked": False}
        return "Contact added"

    def _contacts_verify(self, data):
        self.contacts[data["peer"]]["verified"] = data["verified"]
        return self.contacts[data["peer"]]

    def _contacts_block(self, data):
        return {"name": data["peer"], "fingerprint": data["peer"], "blocked": True}

    def _contacts_negotiate_keys(self, data):
        contact = self.contacts[data["peer"]]
        return {"peer": contact["name"], "fingerprint": contact["fingerprint"],
                "safety_number": " ".join(f"{i:05d}" for i in range(12)), "verified": False,
                "key_exchange": "X-Wing", "signatures": "ML-DSA-65+Ed25519", "path": "direct"}

    def _p2p_peers(self, data):
        return [{"name": c["name"], "fingerprint": c["fingerprint"], "state": "connected", "path": "direct",
                 "address": "127.0.0.1:1", "rtt_ms": 2.0} for c in self.contacts.values()]

    def _p2p_history(self, data):
        if data["peer"] not in self.contacts:
            raise LookupError(f"Peer not found: {data['peer']}")
        return self.history.get(data["peer"], [])[-data.get("limit", 50):]

    def _p2p_mark_read(self, data):
        return {"peer": data["peer"], "marked": 0}

    def _p2p_send_message(self, data):
        return "Message sent"

    def _p2p_connect(self, data):
        return {"peer": data["peer"], "state": "connecting", "address": data["address"]}

    # file transfers, shaped like lib/transfer.py's views
    def _p2p_send_file(self, data):
        if data["peer"] == "Carol":
            raise LookupError("Carol is offline and the queue is full")
        return "File transfer started"

    def _view(self, transfer_id, state):
        return {"transfer_id": transfer_id, "direction": "in", "peer": "Bob", "file_name": "photo.jpg", "path": None,
                "state": state, "bytes": 0, "size": 4 * 1024 * 1024, "rate": 0, "eta": None, "error": None}

    def _p2p_accept_file(self, data):
        return self._view(data["transfer_id"], "active")

    def _p2p_reject_file(self, data):
        return self._view(data["transfer_id"], "rejected")

    def _p2p_pause_transfer(self, data):
        return self._view(data["transfer_id"], "paused")

    def _p2p_transfers(self, data):
        return []

    def subscribe(self, on_event, on_state):
        self.on_event = on_event
        on_state("live")

    def close(self):
        pass


def make_app(contacts=(), history=None, keymap=None):
    backend = FakeBackend(contacts)
    backend.history = history or {}
    client = Client(backend, post=lambda fn: fn(), spawn=lambda fn: fn())
    app = ui_app.App(client, keymap or KeyMap(), later=lambda seconds, fn: None)
    app.start()
    return app, backend


def screen(app, size=(120, 40)):
    return [row.decode("utf-8") for row in app.root.render(size, focus=True).text]


def text_of(app, size=(120, 40)):
    return "\n".join(screen(app, size))


def conversation_rows(app, size=(120, 40)):
    """The rows right of the contact column."""
    return [r.split("│", 1)[1] for r in screen(app, size)[1:-3] if "│" in r]


def type_line(app, text, size=(120, 40)):
    for ch in text:
        app.root.keypress(size, ch)
    app.root.keypress(size, "enter")


def bob_and_carol():
    return [{"name": "Bob", "fingerprint": BOB, "verified": False, "blocked": False},
            {"name": "Carol", "fingerprint": CAROL, "verified": True, "blocked": False, "unread": 2}]


def test_first_run_shows_my_id_and_how_to_add_someone():
    app, _ = make_app()
    text = text_of(app)
    assert "Welcome to ChatP2P, alice" in text and ME in text and "/add NAME THEIR-ID" in text
    assert "alice" in screen(app)[0] and ME[:11] in screen(app)[0] and "NAT ?" in screen(app)[0]
    assert "Enter send" in screen(app)[-1] and "Ctrl-Q quit" in screen(app)[-1]


def test_messages_states_day_separators_and_wide_characters_at_80_columns():
    now = datetime.datetime.now().replace(hour=12, minute=0, second=0, microsecond=0).timestamp()
    history = {"Bob": [
        {"id": 1, "message_id": "1", "direction": "in", "body": "an old one", "state": "received",
         "created": iso(now - 3 * 86400)},
        {"id": 2, "message_id": "2", "direction": "out", "body": "sent one", "state": "sent", "created": iso(now - 60)},
        {"id": 3, "message_id": "3", "direction": "out", "body": "got it", "state": "delivered", "created": iso(now - 50)},
        {"id": 4, "message_id": "4", "direction": "out", "body": "waiting", "state": "queued", "created": iso(now - 40)},
        {"id": 5, "message_id": "5", "direction": "out", "body": "lost", "state": "failed", "failure": "expired",
         "created": iso(now - 30)},
        {"id": 6, "message_id": "6", "direction": "in", "state": "received", "created": iso(now - 20),
         "body": "中文字符 and emoji 😀🎉 mixed with a long line that has to wrap " * 3},
    ]}
    app, _ = make_app(bob_and_carol(), history)
    app.open_chat(BOB)
    rows = screen(app, (80, 24))
    text = "\n".join(rows)
    assert all(wcwidth.wcswidth(row) == 80 for row in rows), [wcwidth.wcswidth(r) for r in rows]
    assert "Today" in text and "an old one" in text
    days = [r for r in rows if "───" in r and ("Today" in r or "day" in r)]
    assert len(days) == 2                              # one separator per local day
    sent, delivered = next(r for r in rows if "sent one" in r), next(r for r in rows if "got it" in r)
    assert sent.rstrip().endswith("✓") and not sent.rstrip().endswith("✓✓") and delivered.rstrip().endswith("✓✓")
    assert next(r for r in rows if "waiting" in r).rstrip().endswith("…")
    assert "✗" in next(r for r in rows if "lost" in r) and "expired" in text
    assert "me: got it" in text and "Bob: an old one" in text   # own and peer messages differ
    assert "中文字符" in text and "😀" in text


def test_terminal_too_small_is_a_notice_not_a_crash():
    app, _ = make_app(bob_and_carol())
    for size in ((40, 10), (59, 30), (100, 15)):
        text = "\n".join(r.decode() for r in app.root.render(size, focus=True).text)
        assert "Terminal too small" in text, size
    assert "Terminal too small" not in text_of(app, (80, 24))
    assert app.root.keypress((40, 10), "x") == "x"         # keys are not lost in a crash either
    guard = SizeGuard(urwid.SolidFill("x"), 10, 5)
    assert guard.render((9, 5)).rows() == 5 and guard.render((10, 5)).text[0] == b"x" * 10


def test_typing_sends_and_the_mark_follows_the_answers_and_events():
    app, backend = make_app(bob_and_carol())
    assert app.model.open_chat == CAROL                   # start-up opens the first unread conversation
    assert ("p2p", "mark_read", {"peer": "Carol"}) in backend.calls
    app.root.keypress((120, 40), "ctrl p")                  # previous contact: Bob
    assert app.model.open_chat == BOB
    type_line(app, "hello 😀 bob")
    sends = [c for c in backend.calls if c[1] == "send_message"]
    assert sends and sends[-1][2]["peer"] == "Bob" and sends[-1][2]["message"] == "hello 😀 bob"
    message_id = sends[-1][2]["message_id"]
    assert app.prompt.text == "" and "me: hello 😀 bob" in text_of(app)
    row = next(r for r in conversation_rows(app) if "hello" in r)
    assert row.rstrip().endswith("✓")
    backend.on_event({"event": "message_delivered", "data": {"peer": "Bob", "message_id": message_id}})
    assert next(r for r in conversation_rows(app) if "hello" in r).rstrip().endswith("✓✓")
    # Alt-Enter makes a new line; the input grows, up to its limit
    for ch in "one":
        app.root.keypress((120, 40), ch)
    app.root.keypress((120, 40), "meta enter")
    for ch in "two":
        app.root.keypress((120, 40), ch)
    assert app.prompt.text == "one\ntwo" and app.prompt.rows((118,)) == 2
    app.prompt.set_text("\n".join(str(i) for i in range(20)))
    assert app.prompt.rows((118,)) == app.prompt.max_rows and app.prompt.render((118,), True).rows() == 6
    app.root.keypress((120, 40), "esc")
    assert app.prompt.text == ""
    # '?' is typed in the input line, F1 opens the help
    app.root.keypress((120, 40), "?")
    assert app.prompt.text == "?" and not app.dialogs


def test_incoming_message_outside_the_open_chat_counts_unread_and_rings():
    app, backend = make_app(bob_and_carol())
    app.open_chat(BOB)
    backend.on_event({"event": "p2p_message_received",
                      "data": {"peer": "Carol", "message": "psst", "timestamp": iso(1e9), "message_id": "x"}})
    assert app.rings == 1 and app.model.contacts[CAROL].unread == 1   # read at start-up, then one more
    contacts_column = "\n".join(r[:29] for r in screen(app))
    assert "Carol ✔ 1" in contacts_column and "psst" in contacts_column
    backend.on_event({"event": "p2p_message_received",
                      "data": {"peer": "Bob", "message": "here", "timestamp": iso(1e9 + 1), "message_id": "y"}})
    assert app.rings == 1                                 # the open chat does not ring
    app.root.keypress((120, 40), "meta a")                  # next unread: Carol
    assert app.model.open_chat == CAROL and app.model.contacts[CAROL].unread == 0
    assert ("p2p", "mark_read", {"peer": "Carol"}) in backend.calls


def test_clicking_a_contact_opens_it():
    app, _ = make_app(bob_and_carol())
    rows = screen(app)
    row = next(i for i, r in enumerate(rows) if "Bob" in r[:29])
    app.root.mouse_event((120, 40), "mouse press", 1, 3, row, True)
    assert app.model.open_chat == BOB and app.focus_area == "input"


def test_tab_cycles_focus_and_completes_commands():
    app, _ = make_app(bob_and_carol())
    assert app.focus_area == "input"
    app.root.keypress((120, 40), "tab")
    assert app.focus_area == "contacts"
    app.root.keypress((120, 40), "tab")
    assert app.focus_area == "conversation"
    app.root.keypress((120, 40), "shift tab")
    app.root.keypress((120, 40), "shift tab")
    assert app.focus_area == "input"
    for ch in "/ver":
        app.root.keypress((120, 40), ch)
    app.root.keypress((120, 40), "tab")
    assert app.prompt.text == "/verify "
    app.root.keypress((120, 40), "c")
    app.root.keypress((120, 40), "tab")
    assert app.prompt.text == "/verify Carol " and app.focus_area == "input"


def test_commands_call_the_api_and_wrong_usage_is_a_hint():
    app, backend = make_app()
    type_line(app, "/add Bob")
    assert "Usage: /add NAME ID|KEY|@FILE" in screen(app)[-1]
    type_line(app, "/frobnicate")
    assert "Unknown command /frobnicate" in screen(app)[-1]
    type_line(app, "/verify Nobody")
    assert "No contact named 'Nobody'" in screen(app)[-1]
    type_line(app, "/add Bob BOBKEY")
    assert ("contacts", "add", {"peer": "Bob", "public_key": "BOBKEY"}) in backend.calls
    assert app.model.open_chat == BOB and "Added Bob" in screen(app)[-1]
    type_line(app, "/connect Bob 127.0.0.1:4000")
    assert ("p2p", "connect", {"peer": "Bob", "address": "127.0.0.1:4000"}) in backend.calls
    type_line(app, "/nick Alicia")
    assert "--name" in screen(app)[-1]
    with tempfile.TemporaryDirectory() as tmp:
        key_file = os.path.join(tmp, "me.key")
        type_line(app, f"/myid {key_file}")
        assert open(key_file).read() == "PUBKEY\n"
        pathlib_file = os.path.join(tmp, "carol.key")
        with open(pathlib_file, "w") as handle:
            handle.write(CAROL + "\n")
        type_line(app, f"/add Carol @{pathlib_file}")
        assert ("contacts", "add", {"peer": "Carol", "public_key": CAROL}) in backend.calls
        type_line(app, f"/add Dan @{tmp}/missing")
        assert "Cannot read" in screen(app)[-1]
        # a file the daemon refuses: its error is a one-line notice, the row says why
        type_line(app, "/sendfile " + key_file)
        sent = [c for c in backend.calls if c[1] == "send_file"][-1][2]
        assert sent["peer"] == "Carol" and sent["file_path"] == key_file and len(sent["transfer_id"]) == 32
        assert "Not sent: Carol is offline" in screen(app)[-1]
        assert "me.key" in text_of(app) and "✗ Carol is offline" in text_of(app)
        type_line(app, "/unknowncmd")
        app.open_chat(BOB)
        type_line(app, "/sendfile " + key_file)
        assert "Offered me.key to Bob" in screen(app)[-1] and "waiting for them" in text_of(app)
    type_line(app, "/myid")
    assert app.dialogs and ME in text_of(app)
    app.root.keypress((120, 40), "esc")
    assert not app.dialogs
    type_line(app, "/accept")
    assert "No file offer" in screen(app)[-1]


def test_verify_shows_the_safety_number_then_marks_verified():
    app, backend = make_app(bob_and_carol())
    type_line(app, "/verify Bob")
    text = text_of(app)
    assert "Safety number with Bob" in text and "00000 00001 00002" in text
    app.root.keypress((120, 40), "enter")                   # the focused button: "They match"
    assert ("contacts", "verify", {"peer": "Bob", "verified": True}) in backend.calls
    assert app.model.contacts[BOB].verified and not app.dialogs


def test_key_mismatch_must_be_acknowledged():
    app, backend = make_app(bob_and_carol())
    backend.on_event({"event": "key_mismatch", "data": {"peer": "Bob", "expected": BOB, "got": EVE,
                                                        "address": "192.0.2.9:1"}})
    assert "Key mismatch" in text_of(app) and EVE in text_of(app)
    app.root.keypress((120, 40), "esc")
    app.root.keypress((120, 40), "ctrl n")
    assert app.dialogs                                    # Esc does not dismiss it
    app.root.keypress((120, 40), "enter")                   # "I understand"
    assert not app.dialogs


def test_contact_request_offers_to_add_with_a_name_or_block():
    app, backend = make_app(bob_and_carol())
    backend.on_event({"event": "contact_request", "data": {"fingerprint": EVE, "bundle": "EVEBUNDLE",
                                                           "address": "192.0.2.5:7"}})
    assert "Contact request" in text_of(app) and EVE in text_of(app)
    app.root.keypress((120, 40), "enter")                   # Add…
    assert "A name for" in text_of(app)
    type_line(app, "Eve")
    assert ("contacts", "add", {"peer": "Eve", "public_key": "EVEBUNDLE"}) in backend.calls
    assert not app.dialogs
    backend.on_event({"event": "contact_request", "data": {"fingerprint": "f" * 71, "bundle": "B"}})
    app.root.keypress((120, 40), "right")
    app.root.keypress((120, 40), "enter")                   # Block
    assert ("contacts", "block", {"peer": "f" * 71}) in backend.calls


def test_help_screen_comes_from_the_key_table():
    app, _ = make_app(bob_and_carol())
    app.root.keypress((120, 40), "f1")
    text = text_of(app, (120, 72))
    assert "Open the next conversation with unread messages" in text and "Alt-A" in text
    assert "/sendfile PATH" in text and "✓✓ delivered" in text
    app.root.keypress((120, 60), "f1")
    assert not app.dialogs
    app.set_focus("contacts")
    app.root.keypress((120, 40), "?")
    assert app.dialogs


def test_transfer_offer_progress_and_outcome_in_the_conversation():
    app, backend = make_app(bob_and_carol())
    app.open_chat(BOB)
    backend.on_event({"event": "file_offer", "data": {"transfer_id": "t1234567890", "peer": "Bob",
                                                      "file_name": "photo.jpg", "size": 4 * 1024 * 1024,
                                                      "chunk_size": 16384}})
    text = text_of(app)
    assert "photo.jpg" in text and "4.0 MiB" in text and "Accept" in text and "Reject" in text
    type_line(app, "/accept")
    assert ("p2p", "accept_file", {"transfer_id": "t1234567890"}) in backend.calls
    assert "Accepted photo.jpg" in screen(app)[-1]
    ticks = iter([100.0, 101.0])
    app.clock = lambda: next(ticks, 102.0)
    backend.on_event({"event": "file_transfer_started", "data": {"transfer_id": "t1234567890", "peer": "Bob",
                                                                 "direction": "in", "file_name": "photo.jpg"}})
    backend.on_event({"event": "file_transfer_progress",
                      "data": {"transfer_id": "t1234567890", "peer": "Bob", "direction": "in", "bytes": 0,
                               "size": 4 * 1024 * 1024, "rate": 0, "eta": None}})
    backend.on_event({"event": "file_transfer_progress",
                      "data": {"transfer_id": "t1234567890", "peer": "Bob", "direction": "in",
                               "bytes": 1024 * 1024, "size": 4 * 1024 * 1024, "rate": 1024 * 1024, "eta": 3.0}})
    text = text_of(app)
    assert "25 %" in text and "1.0 MiB/s" in text and "ETA 0:03" in text
    type_line(app, "/pause")
    assert ("p2p", "pause_transfer", {"transfer_id": "t1234567890"}) in backend.calls and "paused" in text_of(app)
    backend.on_event({"event": "file_transfer_resumed", "data": {"transfer_id": "t1234567890", "peer": "Bob"}})
    backend.on_event({"event": "file_received", "data": {"transfer_id": "t1234567890", "peer": "Bob",
                                                         "path": "/home/alice/Downloads/photo.jpg"}})
    assert "saved to /home/alice/Downloads/photo.jpg" in text_of(app)
    type_line(app, "/transfers")
    assert "photo.jpg" in text_of(app) and "done" in text_of(app)
    app.root.keypress((120, 40), "esc")
    # an offer refused with the Reject button
    backend.on_event({"event": "file_offer", "data": {"transfer_id": "t2", "peer": "Bob", "file_name": "big.iso",
                                                      "size": 10}})
    app.set_focus("conversation")
    app.root.keypress((120, 40), "right")
    app.root.keypress((120, 40), "enter")
    assert ("p2p", "reject_file", {"transfer_id": "t2"}) in backend.calls and "✗ rejected" in text_of(app)


def test_quit_key_and_conversation_scrolling():
    history = {"Bob": [{"id": i, "message_id": str(i), "direction": "in", "body": f"message {i}",
                        "state": "received", "created": iso(1e9 + i)} for i in range(1, 200)]}
    app, _ = make_app(bob_and_carol(), history)
    app.open_chat(BOB)
    assert "message 199" in "\n".join(conversation_rows(app))
    app.root.keypress((120, 40), "page up")
    app.root.keypress((120, 40), "page up")
    text = "\n".join(conversation_rows(app))
    assert "message 199" not in text and "message 120 " in text    # two pages of ~35 rows back
    app.root.mouse_event((120, 40), "mouse press", 5, 60, 10, True)   # the wheel scrolls too
    for _ in range(30):
        app.root.keypress((120, 40), "page down")
    assert "message 199" in "\n".join(conversation_rows(app)) and app.conversation.listbox.follow
    try:
        app.root.keypress((120, 40), "ctrl q")
    except urwid.ExitMainLoop:
        pass
    else:
        raise AssertionError("Ctrl-Q did not quit")


def test_conversation_view_alone_renders_the_model():
    model = Model()
    model.set_contacts([{"name": "Bob", "fingerprint": BOB}])
    model.open(BOB)
    view = ConversationView(lambda *a: None)
    view.update(model)
    assert "No messages with Bob yet" in "\n".join(r.decode() for r in view.render((60, 10)).text)
    prompt = Prompt(max_rows=3)
    prompt.set_text("a\nb\nc\nd\ne")
    canvas = prompt.render((20,), True)
    assert canvas.rows() == 3 and canvas.cursor == (1, 2)   # the end stays visible


def keymap_from_conf(keys_section):
    """A keymap through the real path: a conf file's [keys] section read by load_ui_config."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp, "chatp2p.conf")
        path.write_text("[keys]\n" + keys_section)
        keymap, _theme, _settings, errors = load_ui_config(path, environ={})
    assert errors == []
    return keymap


def test_remapped_cancel_and_help_keys_replace_esc_and_f1():
    keymap = keymap_from_conf("cancel = ctrl g\nhelp = F2\n")
    app, _ = make_app(bob_and_carol(), keymap=keymap)
    size = (120, 60)
    assert "F2 help" in screen(app)[-1]
    app.root.keypress(size, "f1")                          # the old help key does nothing now
    assert not app.dialogs
    app.root.keypress(size, "f2")
    assert app.dialogs
    text = text_of(app, size)
    assert "Help — Ctrl-G or F2 closes" in text and "Esc or F1" not in text
    help_rows = [row for row in text.splitlines() if "Show or close this help" in row or "Close a dialog" in row]
    assert len(help_rows) == 2 and "F2" in help_rows[0] + help_rows[1] and "Ctrl-G" in help_rows[0] + help_rows[1]
    assert not any("F1" in row or "Esc" in row for row in help_rows)
    app.root.keypress(size, "esc")                         # the old cancel key no longer closes it
    assert app.dialogs
    app.root.keypress(size, "ctrl g")
    assert not app.dialogs
    type_line(app, "/myid")                                # any dismissable dialog, same keys
    assert app.dialogs
    app.root.keypress(size, "esc")
    assert app.dialogs
    app.root.keypress(size, "ctrl g")
    assert not app.dialogs
    for ch in "draft":                                     # cancel also clears the input line
        app.root.keypress(size, ch)
    app.root.keypress(size, "esc")
    assert app.prompt.text == "draft"
    app.root.keypress(size, "ctrl g")
    assert app.prompt.text == ""
    app.set_focus("contacts")                              # '?' was a help key only by default
    app.root.keypress(size, "?")
    assert not app.dialogs


def test_remapped_open_and_scroll_keys():
    history = {"Bob": [{"id": i, "message_id": str(i), "direction": "in", "body": f"message {i}",
                        "state": "received", "created": iso(1e9 + i)} for i in range(1, 200)]}
    keymap = keymap_from_conf("open = ctrl o\nscroll_up = ctrl u\n")
    app, _ = make_app(bob_and_carol(), history, keymap=keymap)
    app.open_chat(CAROL)
    app.set_focus("contacts")
    app.layout.contacts.focus_on(BOB)
    assert app.layout.contacts.focused_fingerprint() == BOB
    app.root.keypress((120, 40), "enter")                  # no longer opens
    app.root.keypress((120, 40), " ")
    assert app.model.open_chat == CAROL
    app.root.keypress((120, 40), "ctrl o")
    assert app.model.open_chat == BOB and app.focus_area == "input"
    app.set_focus("conversation")
    app.root.keypress((120, 40), "page up")                # urwid's own page key does not scroll either
    assert "message 199" in "\n".join(conversation_rows(app))
    app.root.keypress((120, 40), "ctrl u")
    assert "message 199" not in "\n".join(conversation_rows(app))


def test_every_key_action_and_command_has_its_handler():
    from chatp2p_ui import commands, key_actions, keys
    assert set(key_actions.KEY_ACTIONS) == set(keys.all_actions())
    assert all(callable(command.handler) for command in commands.COMMANDS)
    assert not [name for name in dir(ui_app.App) if name.startswith("cmd_")]
