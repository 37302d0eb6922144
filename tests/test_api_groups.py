"""The `group` command of the API: every bad input answered with a clear error before the
P2P network is asked (so also while it is stopped), "stopped" answered like `p2p`'s, each
action handing the service exactly what it should, the answer and event shapes conforming to
the schema, and `chatp2pctl group ...` building the requests. The service itself (groupsvc)
is tested with real daemons in tests/test_groups.py; here a stand-in records the calls."""

import shutil
import tempfile

import jsonschema
import pytest

from chatp2p_core import config as cfg
from chatp2p_core.api import ctl, schema
from chatp2p_core.api.commands import build_table
from chatp2p_core.crypto.identity import format_id
from chatp2p_core.errors import NotFound, Refused
from chatp2p_core.node import Node
from chatp2p_core.services.groups import views
from chatp2p_core.services.groups.events import GroupEvents
from chatp2p_core.store import Group, GroupMessage

STOPPED = "The P2P network is stopped: start it with p2p start"
TABLE = build_table()
DOCUMENT = schema.document(TABLE.actions())
GID = bytes(range(16))
TMP = NODE = None
BOB = CAROL = None   # (fingerprint ID, public key) of two contacts


def setup_module():
    global TMP, NODE, BOB, CAROL
    TMP = tempfile.mkdtemp(prefix="chatp2p-api-groups-")
    config = cfg.load(None, {"HOME": TMP}, flag_overrides={
        "data_dir": TMP + "/data", "p2p_host": "127.0.0.1", "p2p_port": "0", "ipc_port": "0"})
    NODE = Node(config)
    NODE.start()
    keys = [ask("crypto", "generate_keypair")["data"] for _ in range(2)]
    BOB, CAROL = [(k["fingerprint"], k["public_key"]) for k in keys]
    ask("contacts", "add", {"peer": "Bob", "public_key": BOB[1]})
    ask("contacts", "add", {"peer": "Carol", "public_key": CAROL[0]})   # by ID only


def teardown_module():
    NODE.stop()
    shutil.rmtree(TMP, ignore_errors=True)


def ask(command, action=None, data=None):
    request = {"command": command}
    if action is not None:
        request["action"] = action
    if data is not None:
        request["data"] = data
    return TABLE.dispatch(NODE, request)


def validator(name):
    return jsonschema.Draft202012Validator({"$defs": DOCUMENT["$defs"], "$ref": f"#/$defs/{name}"})


# ---- bad input ---------------------------------------------------------------------------

BAD = [
    # (action, data, error)
    ("create", {"members": ["Bob"]}, "Missing field 'name'"),
    ("create", {"name": "", "members": ["Bob"]}, "Field 'name' is empty"),
    ("create", {"name": "   ", "members": ["Bob"]}, "Field 'name' is blank"),
    ("create", {"name": "x" * 65, "members": ["Bob"]}, "Field 'name' is too long (at most 64 characters)"),
    ("create", {"name": "é" * 33, "members": ["Bob"]}, "Field 'name' is too long (at most 64 bytes in UTF-8)"),
    ("create", {"name": ["Family"], "members": ["Bob"]}, "Field 'name' must be a string"),
    ("create", {"name": "\ud800", "members": ["Bob"]}, "Field 'name' is not valid Unicode text (lone surrogate)"),
    ("create", {"name": "Family"}, "Missing field 'members'"),
    ("create", {"name": "Family", "members": []}, "Field 'members' is empty"),
    ("create", {"name": "Family", "members": ["Bob"] * 64}, "Field 'members' has too many items (at most 63)"),
    ("create", {"name": "Family", "members": ["b" * 129]}, "Field 'members[0]' is too long (at most 128 characters)"),
    ("create", {"name": "Family", "members": [{"name": "Bob"}]}, "Field 'members[0]' must be a string"),
    ("create", {"name": "Family", "members": {"Bob": 1}}, "Field 'members' must be a list"),
    ("create", {"name": "Family", "members": ["Bob", "Nobody"]}, "Peer not found: Nobody"),
    ("create", {"name": "Family", "members": ["Bob", "bob"]}, "Field 'members' names Bob twice"),
    ("info", {}, "Missing field 'group'"),
    ("info", {"group": "g" * 65}, "Field 'group' is too long (at most 64 characters)"),
    ("info", {"group": 12.5}, None),   # a number is read as text (the Windows client): not a type error
    ("invite", {"group": "Family"}, "Missing field 'peer'"),
    ("invite", {"group": "Family", "peer": "Nobody"}, "Peer not found: Nobody"),
    ("remove", {"group": "Family", "peer": "p" * 129}, "Field 'peer' is too long (at most 128 characters)"),
    ("promote", {"group": "Family", "peer": None}, "Missing field 'peer'"),
    ("rename", {"group": "Family", "name": ""}, "Field 'name' is empty"),
    ("rename", {"group": "Family", "name": "€" * 22}, "Field 'name' is too long (at most 64 bytes in UTF-8)"),
    ("send_message", {"group": "Family"}, "Missing field 'message'"),
    ("send_message", {"group": "Family", "message": ""}, "Field 'message' is empty"),
    ("send_message", {"group": "Family", "message": "x" * (64 * 1024 + 1)},
     "Field 'message' is too long (at most 65536 characters)"),
    ("send_message", {"group": "Family", "message": "€" * 21846},
     "Field 'message' is too long (at most 65536 bytes in UTF-8)"),
    ("send_message", {"group": "Family", "message": "hi", "message_id": ""}, "Field 'message_id' is empty"),
    ("send_message", {"group": "Family", "message": "hi", "message_id": "😀" * 64},
     "Field 'message_id' is too long (at most 255 bytes in UTF-8)"),
    ("send_message", {"group": "Family", "message": "hi", "message_id": "m" * 129},
     "Field 'message_id' is too long (at most 128 characters)"),
    ("history", {"group": "Family", "limit": 0}, "Field 'limit' must be at least 1"),
    ("history", {"group": "Family", "limit": 1001}, "Field 'limit' must be at most 1000"),
    ("history", {"group": "Family", "limit": "ten"}, "Field 'limit' must be an integer"),
    ("history", {"group": "Family", "before": "xyz"},
     "Field 'before' must be a message hash (64 hex digits, from history)"),
    ("history", {"group": "Family", "before": "a" * 63},
     "Field 'before' must be a message hash (64 hex digits, from history)"),
    ("history", {"group": "Family", "before": "g" * 64},
     "Field 'before' must be a message hash (64 hex digits, from history)"),
    ("send_file", {"group": "Family"}, "Missing field 'file_path'"),
    ("send_file", {"group": "Family", "file_path": "/" * 4097}, "Field 'file_path' is too long (at most 4096 characters)"),
    ("list", "not an object", "Field 'data' must be an object"),
    ("mark_read", {"group": True}, "Field 'group' must be a string"),
]


def test_bad_input_gets_its_own_error_even_while_p2p_is_stopped():
    NODE.stop_p2p()
    try:
        for action, data, error in BAD:
            reply = ask("group", action, data)
            assert reply["success"] is False, (action, data, reply)
            assert reply["error"] == (error or STOPPED), (action, data, reply)
            assert "data" not in reply
        reply = ask("group", "dance", {})
        assert reply["success"] is False and reply["error"].startswith("Unknown action 'dance' for command 'group'")
        assert "send_message" in reply["error"]
    finally:
        NODE.start_p2p()


def test_valid_requests_answer_stopped_like_p2p_while_it_is_stopped():
    NODE.stop_p2p()
    try:
        for action, data in (("create", {"name": "Family", "members": ["Bob", CAROL[0]]}), ("list", None),
                             ("info", {"group": "Family"}), ("invite", {"group": "Family", "peer": "Bob"}),
                             ("remove", {"group": "Family", "peer": "Bob"}),
                             ("promote", {"group": "Family", "peer": BOB[0]}), ("leave", {"group": "Family"}),
                             ("rename", {"group": "Family", "name": "Famille"}),
                             ("send_message", {"group": "Family", "message": "hi"}),
                             ("history", {"group": "Family", "before": "ab" * 32}),
                             ("mark_read", {"group": "Family"}),
                             ("send_file", {"group": "Family", "file_path": "/etc/hostname"})):
            reply = ask("group", action, data)
            assert reply == {"success": False, "error": STOPPED, "timestamp": reply["timestamp"]}, (action, reply)
    finally:
        NODE.start_p2p()


# ---- what the service is handed, and what comes back -----------------------------------


class StandIn:
    """Records the calls the API makes and answers in the declared shapes (what groupsvc's
    GroupService returns), or raises the error it is told to."""

    def __init__(self):
        self.calls = []
        self.error = None
        own = NODE.identity.fingerprint
        self.group = Group(1, GID, "Family", 1.0, "active", 0, 0, None, frozenset(), 0, 0)
        contact = NODE.store.contacts.get("Bob")
        self.view = views.group_view(self.group, [views.member_view(own, "admin", own, None, False),
                                                  views.member_view(contact.fingerprint, "member", own, contact,
                                                                    True)], 2)

    def _call(self, name, *args):
        self.calls.append((name, args))
        if self.error is not None:
            raise self.error
        if name == "list":
            return [self.view]
        if name == "info":
            return dict(self.view, records=3, pending=0, key_epoch=1, former=[format_id(b"\x01" * 32)])
        if name == "submit_message":
            return {"group": GID.hex(), "message_id": args[2] or "0" * 32, "state": "queued"}
        if name == "history":
            message = GroupMessage(1, 1, b"\x02" * 32, NODE.identity.fingerprint, "m1", 2, "file", "", {
                "file_id": "ab" * 16, "name": "a.txt", "size": 3}, 1.0, None, True, True, False)
            return {"group": GID.hex(), "name": "Family",
                    "messages": [views.message_view(message, lambda fp: None, [b"\x03" * 32], False)]}
        if name == "mark_read":
            return {"group": GID.hex(), "marked": 2}
        if name == "send_file":
            return {"group": GID.hex(), "message_id": "f1", "file_id": "ab" * 16, "name": "photo.jpg", "size": 3, "offered": [format_id(b"\x03" * 32)]}
        return self.view

    def __getattr__(self, name):
        return lambda *args: self._call(name, *args)


@pytest.fixture
def service():
    p2p = NODE.p2p
    saved = p2p.__dict__.get("groups")
    stand_in = p2p.groups = StandIn()
    try:
        yield stand_in
    finally:
        if saved is None:
            del p2p.groups
        else:
            p2p.groups = saved


def test_each_action_hands_the_service_what_it_should_and_answers_in_the_declared_shape(service):
    bob = NODE.store.contacts.get("Bob")
    carol = NODE.store.contacts.get("Carol")
    cases = [
        ("create", {"name": " Family ", "members": ["Bob", CAROL[0]]}, ("create", (" Family ", [bob, carol]))),
        ("create", {"name": "Family", "members": "Bob"}, ("create", ("Family", [bob]))),   # a bare string
        ("list", None, ("list", ())),
        ("info", {"group": "Family"}, ("info", ("Family",))),
        ("invite", {"group": GID.hex(), "peer": BOB[0]}, ("invite", (GID.hex(), bob))),
        ("remove", {"group": "Family", "peer": "Someone"}, ("remove", ("Family", "Someone"))),
        ("promote", {"group": "Family", "peer": BOB[0]}, ("promote", ("Family", BOB[0]))),
        ("leave", {"group": "Family"}, ("leave", ("Family",))),
        ("rename", {"group": "Family", "name": "Famille"}, ("rename", ("Family", "Famille"))),
        ("send_message", {"group": "Family", "message": "hi"}, ("submit_message", ("Family", "hi", None))),
        ("send_message", {"group": "Family", "message": "€" * 21845, "message_id": "m-1"},
         ("submit_message", ("Family", "€" * 21845, "m-1"))),
        ("history", {"group": "Family"}, ("history", ("Family", 50, None))),
        ("history", {"group": "Family", "limit": "5", "before": "AB" * 32}, ("history", ("Family", 5, "ab" * 32))),
        ("mark_read", {"group": "Family"}, ("mark_read", ("Family",))),
        ("send_file", {"group": "Family", "file_path": "/tmp/a.txt"}, ("send_file", ("Family", "/tmp/a.txt"))),
    ]
    for action, data, call in cases:
        service.calls.clear()
        reply = ask("group", action, data)
        assert reply["success"] is True, (action, reply)
        assert service.calls == [call], (action, service.calls)
        validator(f"group.{action}.answer").validate(reply)
    reply = ask("group", "send_message", {"group": "Family", "message": "hi", "message_id": "mine"})
    assert reply["message_id"] == "mine" and reply["data"]["state"] == "queued"


def test_the_service_errors_are_answered_with_their_text(service):
    for error in (NotFound("Group not found: Nope"), Refused("Only an admin can add members")):
        service.error = error
        reply = ask("group", "invite", {"group": "Nope", "peer": "Bob"})
        assert reply == {"success": False, "error": str(error), "timestamp": reply["timestamp"]}
    service.error = RuntimeError("a bug")
    reply = ask("group", "list")
    assert reply["success"] is False and reply["error"] == "Internal error (see the daemon log)"


# ---- events and views --------------------------------------------------------------------


def test_every_group_event_conforms_to_the_catalog():
    published = []
    names = {b"\xbb" * 32: "Bob"}
    events = GroupEvents(lambda name, data: published.append((name, data)), names.get)
    me, bob, dave = b"\xaa" * 32, b"\xbb" * 32, b"\xdd" * 32
    text = GroupMessage(1, 1, b"\x01" * 32, bob, "m1", 3, "text", "hello", None, 1.5, 2.0, False, False, True)
    file = GroupMessage(2, 1, b"\x02" * 32, dave, "m2", 4, "file", "", {"file_id": "cd" * 16, "name": "x.bin",
                                                                       "size": 9}, 1.5, 2.0, False, False, False)
    gap = GroupMessage(3, 1, b"\x03" * 32, dave, "gap-1", 2, "gap", "12", None, 1.5, 2.0, False, False, False)
    events.invited(GID, "Family", bob)
    events.joined(GID, "Family", [dave, me, bob])
    events.member_added(GID, dave, bob)
    events.member_removed(GID, me, bob)
    events.member_left(GID, dave)
    for message in (text, file, gap):
        events.message_received(GID, message)
    events.message_delivered(GID, "m0", bob, True)
    events.updated(GID, "Famille", [me, bob], [bob])
    for name, data in published:
        validator(f"event.{name}").validate({"event": name, "data": data, "timestamp": "2026-01-01T00:00:00.000Z"})
    assert {f"event.{name}" for name, _ in published} == {n for n in DOCUMENT["$defs"] if n.startswith("event.group_")}
    by_name = dict(published)
    assert by_name["group_invited"] == {"group": GID.hex(), "name": "Family", "by": format_id(bob), "by_name": "Bob"}
    assert by_name["group_joined"]["members"] == [format_id(me), format_id(bob), format_id(dave)]
    assert by_name["group_member_added"] == {"group": GID.hex(), "member": format_id(dave), "member_name": None,
                                             "by": format_id(bob), "by_name": "Bob"}
    received = [data for name, data in published if name == "group_message_received"]
    assert received[0]["from_name"] == "Bob" and "file" not in received[0]
    assert received[1]["file"] == {"file_id": "cd" * 16, "name": "x.bin", "size": 9}
    assert received[2]["kind"] == "gap" and received[2]["body"] == "12"
    assert by_name["group_updated"]["admins"] == [format_id(bob)]


def test_views_conform_and_count_only_our_own_deliveries():
    own, bob = b"\xaa" * 32, b"\xbb" * 32
    contact = NODE.store.contacts.get("Bob")
    members = [views.member_view(own, "member", own, None, True), views.member_view(bob, "admin", own, contact, True)]
    assert members[0]["me"] and not members[0]["online"]   # this node is not "online" to itself
    assert members[1] == {"id": format_id(bob), "name": "Bob", "role": "admin", "me": False, "contact": True,
                          "verified": False, "online": True}
    group = Group(1, GID, "Family", 1.0, "left", 3, 1, None, frozenset(), 0, 0)
    view = views.group_view(group, members, 4)
    assert (view["admin"], view["online"], view["unread"], view["state"]) == (False, 1, 4, "left")
    validator("GroupView").validate(view)
    validator("GroupInfo").validate(dict(view, records=1, pending=0, key_epoch=1, former=[]))
    theirs = GroupMessage(1, 1, b"\x01" * 32, bob, "m1", 3, "text", "hi", None, 1.5, None, False, False, False)
    mine = GroupMessage(2, 1, b"\x02" * 32, own, "m2", 4, "text", "yo", None, 1.5, None, True, True, True)
    other_view = views.message_view(theirs, {bob: "Bob"}.get, delivered=[own], delivered_all=True)
    assert (other_view["delivered"], other_view["delivered_all"], other_view["from_name"]) == ([], False, "Bob")
    own_view = views.message_view(mine, {bob: "Bob"}.get, delivered=[own, bob], delivered_all=True)
    assert (own_view["delivered"], own_view["delivered_all"], own_view["pq_verified"]) == (
        [format_id(own), format_id(bob)], True, True)
    for message_view in (other_view, own_view):
        validator("GroupMessageView").validate(message_view)
    assert views.contact_name(NODE.store.contacts)(contact.fingerprint) == "Bob"
    assert views.contact_name(NODE.store.contacts)(b"\x09" * 32) is None


# ---- chatp2pctl --------------------------------------------------------------------------


def test_chatp2pctl_group_builds_the_requests():
    parser = ctl.build_parser()
    for argv, expected in (
            (["group", "create", "Family", "Bob", "Carol"],
             {"command": "group", "action": "create", "data": {"name": "Family", "members": ["Bob", "Carol"]}}),
            (["group", "send-message", "Family", "hi", "--message-id", "x1"],
             {"command": "group", "action": "send_message",
              "data": {"group": "Family", "message": "hi", "message_id": "x1"}}),
            (["group", "history", "Family", "--limit", "5"],
             {"command": "group", "action": "history", "data": {"group": "Family", "limit": "5"}}),
            (["group", "list"], {"command": "group", "action": "list"}),
            (["group", "remove", "Family", "Bob"],
             {"command": "group", "action": "remove", "data": {"group": "Family", "peer": "Bob"}})):
        request, _ = ctl.build_request(parser.parse_args(argv))
        assert request == expected, argv
    with pytest.raises(SystemExit):
        parser.parse_args(["group", "create", "Family"])   # at least one member


def test_chatp2pctl_group_prints_for_people():
    from chatp2p_core.api import group_cli

    parser = ctl.build_parser()
    _, show = ctl.build_request(parser.parse_args(["group", "list"]))
    assert show([]) == "no groups" and show("odd") == "odd"
    table = show([{"group": GID.hex(), "name": "Family", "members": [{}, {}], "online": 1, "unread": 2,
                   "state": "active", "admin": True}])
    assert table.splitlines()[1].split() == [GID.hex(), "Family", "2", "1", "2", "active,", "admin"]
    _, show = ctl.build_request(parser.parse_args(["group", "history", "Family"]))
    lines = show({"messages": [
        {"created": "2026-01-31T18:02:00.000Z", "from": "x", "from_name": "Bob", "body": "hi\nthere",
         "kind": "text", "pq_verified": True},
        {"created": "2026-01-31T18:03:00.000Z", "outgoing": True, "delivered": ["b"], "body": "some", "kind": "text",
         "pq_verified": True},
        {"created": "2026-01-31T18:03:00.000Z", "outgoing": True, "delivered": ["b", "c"], "delivered_all": True,
         "body": "all", "kind": "text", "pq_verified": True},
        {"created": "2026-01-31T18:04:00.000Z", "kind": "gap", "body": "12"},
        {"created": "2026-01-31T18:05:00.000Z", "from": "y", "kind": "file", "body": "",
         "file": {"name": "a.txt", "size": 3}, "pq_verified": False}]}).splitlines()
    assert lines[0].endswith("  Bob: hi") and lines[1].strip() == "there"
    assert lines[2].endswith("  me ✓: some") and lines[3].endswith("  me ✓✓: all")
    assert lines[4].endswith("— 12 messages are no longer available —")
    assert lines[5].endswith("  y (not yet pq-verified): [file a.txt (3 bytes)]")
    _, show = ctl.build_request(parser.parse_args(["group", "info", "Family"]))
    text = show({"group": GID.hex(), "name": "Family", "state": "active", "records": 3, "members": [
        {"id": "me-id", "name": None, "role": "admin", "me": True},
        {"id": "bob-id", "name": "Bob", "role": "member", "online": True, "contact": True}]})
    assert "* me-id" in text and "Bob     member  online,contact  bob-id" in text and "records 3" in text
    assert show is not ctl.format_data and group_cli.PRINTERS[("group", "info")] is show
