"""Group chats in the UI without a daemon: the pure group model (ui/groups.py) fed API answers
and events, the slash commands, and the widgets rendered off-screen with a fake backend that
answers the `group` command like docs/API.md. The real daemons are in test_ui_tmux.py."""

import datetime
import sys

import pytest

from chatp2p_ui import commands as slash
from chatp2p_ui.groups import Groups, group_key, is_group_key
from chatp2p_ui.model import Model
from chatp2p_ui.usage import UsageError

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_ui_views import BOB, CAROL, EVE, ME, FakeBackend, conversation_rows, screen, text_of, type_line  # noqa: E402

GID = "0123456789abcdef0123456789abcdef"
GID2 = "fedcba9876543210fedcba9876543210"
KEY = group_key(GID)
DAN = "ddddd-ddddd-ddddd-ddddd-ddddd-ddddd-ddddd-ddddd-ddddd-ddddd-ddddd-ddd"   # a group peer, no contact


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def group_view(name="Family", members=(ME, BOB, CAROL, DAN), admins=(ME,), unread=0, gid=GID):
    return {"group": gid, "name": name, "members": list(members), "admins": list(admins), "unread": unread,
            "state": "active"}


def msg(message_id, sender, body, created=1_700_000_000.0, **extra):
    return dict({"group": GID, "message_id": message_id, "from": sender, "body": body, "created": iso(created),
                 "kind": "text"}, **extra)


def model_with_group(**kw):
    model = Model()
    model.set_status({"identity": {"name": "alice", "fingerprint": ME}})
    model.set_contacts([
        {"name": "Bob", "fingerprint": BOB, "verified": True, "online": True},
        {"name": "Carol", "fingerprint": CAROL, "verified": False, "online": False, "unread": 1},
    ])
    model.groups.set_groups([group_view(**kw)])
    return model


# -- the model ------------------------------------------------------------------------------------
def test_groups_come_first_in_the_list_and_in_stepping_and_unread():
    model = model_with_group(unread=3)
    model.groups.set_groups([group_view(unread=3), group_view("Chess", gid=GID2)])
    assert model.chat_keys() == [group_key(GID2), KEY, BOB, CAROL]   # groups by name, then contacts
    assert model.step_chat(1) == group_key(GID2) and model.step_chat(-1) == CAROL
    assert model.next_unread() == KEY
    assert model.open(KEY) is True and model.open_group.name == "Family" and model.open_contact is None
    assert model.groups.get(KEY).unread == 0 and model.next_unread() == CAROL
    assert is_group_key(KEY) and not is_group_key(BOB) and not is_group_key(None)
    # a list without a group: it is gone (left elsewhere)
    model.groups.set_groups([group_view("Chess", gid=GID2)])
    assert model.groups.get(KEY) is None and model.chat_keys()[0] == group_key(GID2)


def test_members_admins_and_membership_events():
    model = model_with_group()
    group = model.groups.get(GID)
    assert set(group.members) == {ME, BOB, CAROL, DAN} and [m.member_id for m in group.admins()] == [ME]
    model.groups.set_info({"group": GID, "members": [{"id": ME, "role": "admin"}, {"id": BOB, "name": "Bob"},
                                                      {"id": DAN, "online": True}, {"id": CAROL}]})
    assert group.members[DAN].online is True and group.members[ME].admin
    alerts = model.apply_event({"event": "group_member_added", "data": {"group": GID, "member": EVE, "by": ME}})
    assert EVE in group.members and [a.kind for a in alerts] == ["group_refresh"]
    model.apply_event({"event": "group_member_left", "data": {"group": GID, "member": CAROL}})
    assert CAROL not in group.members and group.state == "active"
    model.apply_event({"event": "group_updated", "data": {"group": GID, "name": "Fam", "members": [ME, BOB, DAN],
                                                          "admins": [ME, BOB]}})
    assert group.name == "Fam" and group.members[BOB].admin and group.members[DAN].online is True   # info kept
    model.apply_event({"event": "group_member_removed", "data": {"group": GID, "member": ME, "by": BOB}})
    assert group.state == "removed"
    alerts = model.apply_event({"event": "group_invited", "data": {"group": GID2, "name": "New", "by": BOB}})
    assert [a.kind for a in alerts] == ["notice", "group_refresh"] and "New" in alerts[0].data["text"]
    model.apply_event({"event": "group_joined", "data": {"group": GID2, "name": "New", "members": [BOB, ME]}})
    assert model.groups.get(GID2).name == "New" and model.groups.get(GID2).state == "active"


def test_history_order_is_the_daemons_and_a_late_message_lands_where_it_belongs():
    model = model_with_group()
    model.open(KEY)
    # the daemon's (depth, hash) order; the clocks say otherwise (they never order)
    model.groups.set_history(KEY, {"group": GID, "messages": [msg("a", BOB, "first", 300), msg("b", ME, "second", 100,
                                                                                                  outgoing=True)]}, 0)
    assert [m.body for m in model.groups.get(KEY).sorted_messages()] == ["first", "second"]
    alerts = model.apply_event({"event": "group_message_received", "data": msg("c", CAROL, "late", 200)})
    assert [a.kind for a in alerts] == ["group_history", "group_mark_read"]   # the view asks where it goes
    assert [m.body for m in model.groups.get(KEY).sorted_messages()] == ["first", "second", "late"]
    model.groups.set_history(KEY, [msg("a", BOB, "first", 300), msg("c", CAROL, "late", 200),
                                   msg("b", ME, "second", 100, outgoing=True)], 0)
    assert [m.body for m in model.groups.get(KEY).sorted_messages()] == ["first", "late", "second"]
    items = model.conversation_items(KEY)
    assert [i.kind for i in items].count("message") == 3
    assert model.apply_event({"event": "group_message_received", "data": msg("c", CAROL, "late", 200)}) == []


def test_a_message_for_a_group_not_open_counts_unread_and_rings_once():
    model = model_with_group()
    model.open(BOB)
    alerts = model.apply_event({"event": "group_message_received", "data": msg("x", BOB, "hello all", name="Bob")})
    assert [a.kind for a in alerts] == ["bell"] and model.groups.get(GID).unread == 1
    assert alerts[0].data["notify"]["data"] == {"peer": "Bob in Family", "message": "hello all", "group": GID}
    assert model.apply_event({"event": "group_message_received", "data": msg("x", BOB, "hello all")}) == []
    assert model.groups.get(GID).unread == 1
    alerts = model.apply_event({"event": "group_message_received", "data": msg("y", BOB, "new group", group=GID2)})
    assert [a.kind for a in alerts] == ["group_refresh"]   # a group not listed yet: reload the list


def test_delivery_goes_pending_sent_some_all_and_never_back():
    model = model_with_group()
    groups = model.groups
    message = groups.add_outgoing(KEY, "hi all", "m1", 10.0)
    assert message.state == "pending" and message.outgoing and message.sender == ME
    groups.outgoing_result(KEY, "m1", {"success": True, "data": {"group": GID, "message_id": "m1", "state": "sent"}})
    assert message.state == "sent"
    model.apply_event({"event": "group_message_delivered", "data": {"group": GID, "message_id": "m1",
                                                                    "member": BOB, "all": False}})
    assert message.state == "some" and message.delivered_to == {BOB}
    model.apply_event({"event": "group_message_delivered", "data": {"group": GID, "message_id": "m1",
                                                                    "member": CAROL, "all": True}})
    assert message.state == "all"
    groups.set_history(KEY, [msg("m1", ME, "hi all", outgoing=True, state="sent")], 20.0)   # an older view
    assert groups.get(KEY).messages["m1"].state == "all"
    assert groups.get(KEY).messages["m1"].delivered_to == {BOB, CAROL}
    # a receipt overtaking the send answer; then a failed send
    groups.add_outgoing(KEY, "fast", "m2", 11.0)
    model.apply_event({"event": "group_message_delivered", "data": {"group": GID, "message_id": "m2",
                                                                    "member": BOB, "all": True}})
    groups.outgoing_result(KEY, "m2", {"success": True, "data": {}})
    assert groups.get(KEY).messages["m2"].state == "all"
    groups.add_outgoing(KEY, "nope", "m3", 12.0)
    groups.outgoing_result(KEY, "m3", {"success": False, "error": "Not a member of Family"})
    assert groups.get(KEY).messages["m3"].state == "failed"
    assert groups.get(KEY).messages["m3"].failure == "Not a member of Family"


def test_history_delivery_fields_give_the_marks():
    model = model_with_group()
    model.groups.set_history(KEY, [msg("1", ME, "a", outgoing=True, delivered_to=[BOB]),
                                   msg("2", ME, "b", outgoing=True, all_delivered=True),
                                   msg("3", ME, "c", outgoing=True),
                                   msg("4", BOB, "d")], 0)
    states = [m.state for m in model.groups.get(KEY).sorted_messages()]
    assert states == ["some", "all", "sent", "received"]


def test_a_group_file_offer_lands_in_the_group_with_its_sender():
    model = model_with_group()
    model.open(BOB)
    alerts = model.apply_event({"event": "file_offer", "data": {"transfer_id": "t1", "peer": DAN, "group": GID,
                                                                "direction": "in", "file_name": "a.jpg",
                                                                "size": 10}}, now=5.0)
    transfer = model.transfers["t1"]
    assert transfer.peer == KEY and transfer.who == DAN and [a.kind for a in alerts] == ["bell"]
    assert model.groups.get(GID).unread == 1 and model.pending_offers(KEY) == [transfer]
    model.apply_event({"event": "file_transfer_progress", "data": {"transfer_id": "t2", "peer": "Bob", "group": GID,
                                                                   "direction": "out", "file_name": "b",
                                                                   "bytes": 1, "size": 2}}, now=6.0)
    assert model.transfers["t2"].peer == KEY and model.transfers["t2"].who == "Bob"
    assert [i.kind for i in model.conversation_items(KEY)].count("transfer") == 2


@pytest.mark.parametrize("event", [
    {"event": "group_message_received", "data": {"group": 5, "message_id": [], "from": None}},
    {"event": "group_message_received", "data": {"group": GID}},
    {"event": "group_message_delivered", "data": {"group": GID, "message_id": None, "member": 3}},
    {"event": "group_member_added", "data": {"group": GID, "member": {"x": 1}}},
    {"event": "group_member_removed", "data": {"group": None}},
    {"event": "group_updated", "data": {"group": GID, "members": "not a list", "admins": 7}},
    {"event": "group_updated", "data": {"name": "no id"}},
    {"event": "group_joined", "data": None},
    {"event": "file_offer", "data": {"transfer_id": "t9", "group": ["x"], "peer": None}},
])
def test_malformed_group_events_change_nothing_they_should_not_and_never_raise(event):
    model = model_with_group()
    before = set(model.groups.get(GID).members)
    model.apply_event(event, now=1.0)
    group = model.groups.get(GID)
    assert group is not None and group.name == "Family"
    assert set(group.members) == before or event["event"] == "group_updated"
    assert list(model.groups.groups) == [GID] and "t9" not in model.transfers


def test_garbage_answers_are_ignored():
    groups = Groups(lambda: ME)
    groups.set_groups([None, 5, {"name": "no id"}, group_view()])
    assert list(groups.groups) == [GID]
    groups.set_history(KEY, "garbage", 0)
    groups.set_history(KEY, {"messages": [None, {"body": "no id"}, msg("1", BOB, "ok")]}, 0)
    assert [m.body for m in groups.get(KEY).sorted_messages()] == ["ok"]
    assert groups.set_info("nope") is None and groups.add_outgoing("group:nope", "x", "1", 0) is None


# -- commands -------------------------------------------------------------------------------------
def test_group_commands_parse_and_complete():
    parsed = slash.parse('/group create "The Family" Bob Carol')
    assert parsed.name == "group" and parsed.args == {"create": "create", "NAME": "The Family",
                                                      "MEMBER": ("Bob", "Carol")}
    for bad in ("/group create Family", "/group create", "/invite", "/kick", "/leave now"):
        with pytest.raises(UsageError):
            slash.parse(bad)
    assert slash.parse("/rename Fam").args == {"OLD": "Fam", "NEW": None}
    assert slash.parse("/rename Bob Robert").args == {"OLD": "Bob", "NEW": "Robert"}
    assert slash.complete("/group create Fam Bob C", ["Bob", "Carol"]).text == "/group create Fam Bob Carol "
    assert slash.complete("/kick B", ["Bob", "Carol"]).text == "/kick Bob "
    assert slash.lookup("members").usage == "/members" and "MEMBER…" in slash.lookup("group").usage


# -- the widgets, with a fake daemon ----------------------------------------------------------------
class GroupBackend(FakeBackend):
    """FakeBackend plus the `group` command, answering like the API."""

    def __init__(self, contacts=()):
        super().__init__(contacts)
        self.groups = {GID: group_view()}
        self.group_history = {GID: []}

    def _group(self, data):
        group = self.groups.get(data.get("group")) or next(
            (g for g in self.groups.values() if g["name"] == data.get("group")), None)
        if group is None:
            raise LookupError(f"Group not found: {data.get('group')}")
        return group

    def _group_list(self, data):
        return list(self.groups.values())

    def _group_info(self, data):
        return dict(self._group(data), members=[{"id": m, "online": m == DAN} for m in self._group(data)["members"]])

    def _group_history(self, data):
        return {"group": data["group"], "messages": self.group_history.get(data["group"], [])}

    def _group_mark_read(self, data):
        self._group(data)["unread"] = 0
        return {"group": data["group"], "marked": 0}

    def _group_send_message(self, data):
        self.group_history[data["group"]].append(msg(data["message_id"], ME, data["message"], outgoing=True,
                                                     state="sent"))
        return {"group": data["group"], "message_id": data["message_id"], "state": "sent"}

    def _group_create(self, data):
        members = [self.contacts[m]["fingerprint"] for m in data["members"]]
        self.groups[GID2] = group_view(data["name"], [ME] + members, gid=GID2)
        self.group_history[GID2] = []
        return self.groups[GID2]

    def _group_invite(self, data):
        group = self._group(data)
        group["members"].append(self.contacts[data["peer"]]["fingerprint"])
        return group

    def _group_remove(self, data):
        group = self._group(data)
        group["members"].remove(data["peer"])
        return group

    def _group_leave(self, data):
        self._group(data)["state"] = "left"
        return {"group": data["group"], "state": "left"}

    def _group_rename(self, data):
        self._group(data)["name"] = data["name"]
        return self._group(data)

    def _group_send_file(self, data):
        return {"group": data["group"], "file_id": "f" * 32, "offered": 2}


def group_app():
    contacts = [{"name": "Bob", "fingerprint": BOB, "verified": True, "blocked": False},
                {"name": "Carol", "fingerprint": CAROL, "verified": False, "blocked": False}]
    backend = GroupBackend(contacts)
    from chatp2p_ui import app as ui_app
    from chatp2p_ui.client import Client
    from chatp2p_ui.keys import KeyMap
    client = Client(backend, post=lambda fn: fn(), spawn=lambda fn: fn())
    app = ui_app.App(client, KeyMap(), later=lambda seconds, fn: None)
    app.start()
    return app, backend


def test_the_contact_list_shows_the_group_with_its_icon_unread_and_members_online():
    app, backend = group_app()
    backend.groups[GID]["unread"] = 4
    app.resync()
    app.model.set_peers([{"fingerprint": BOB, "state": "connected"}, {"fingerprint": CAROL, "state": "offline"}])
    app.refresh()
    rows = screen(app)
    line = next(r for r in rows if "Family" in r)
    assert line.startswith("# Family 4")
    detail = rows[rows.index(line) + 1]
    assert "1/3 online" in detail     # Bob (a contact online); Dan is a group peer: info not loaded yet


def test_opening_a_group_shows_members_online_and_sending_shows_the_marks():
    app, backend = group_app()
    backend.group_history[GID] = [msg("1", BOB, "hello from Bob"), msg("2", DAN, "hi, Dan here")]
    app.open_chat(KEY)
    text = text_of(app)
    assert "# Family" in text and "3/3 online" in text and "4 members" in text and "you are admin" in text
    assert "Bob: hello from Bob" in text and f"{DAN[:11]}: hi, Dan here" in text     # a group peer by ID
    assert ("group", "mark_read", {"group": GID}) in backend.calls
    assert "Family ›" in screen(app)[-2]
    type_line(app, "hi everyone")
    sent = [c for c in backend.calls if c[:2] == ("group", "send_message")]
    assert sent and sent[0][2]["group"] == GID and sent[0][2]["message"] == "hi everyone"
    message_id = sent[0][2]["message_id"]
    row = next(r for r in conversation_rows(app) if "hi everyone" in r)
    assert row.rstrip().endswith("…")                             # written, no member has it yet
    backend.on_event({"event": "group_message_delivered", "data": {"group": GID, "message_id": message_id,
                                                                   "member": BOB, "all": False}})
    row = next(r for r in conversation_rows(app) if "hi everyone" in r)
    assert row.rstrip().endswith("✓") and not row.rstrip().endswith("✓✓")
    backend.on_event({"event": "group_message_delivered", "data": {"group": GID, "message_id": message_id,
                                                                   "member": CAROL, "all": True}})
    assert next(r for r in conversation_rows(app) if "hi everyone" in r).rstrip().endswith("✓✓")


def test_a_late_message_is_placed_by_the_history_it_triggers():
    app, backend = group_app()
    backend.group_history[GID] = [msg("1", BOB, "one"), msg("3", BOB, "three")]
    app.open_chat(KEY)
    backend.group_history[GID] = [msg("1", BOB, "one"), msg("2", CAROL, "two, late"), msg("3", BOB, "three")]
    backend.on_event({"event": "group_message_received", "data": msg("2", CAROL, "two, late")})
    rows = [r for r in conversation_rows(app) if any(w in r for w in ("one", "two, late", "three"))]
    assert ["one" in rows[0], "two, late" in rows[1], "three" in rows[2]] == [True, True, True]


def test_members_dialog_shows_roles_and_verification_state():
    app, backend = group_app()
    app.open_chat(KEY)
    type_line(app, "/members")
    text = text_of(app, (120, 40))
    assert "4 members of Family" in text
    assert "me (admin)" in text and "Bob  ✔ verified" in text and "not verified: /verify Carol" in text
    assert "ddddd-ddddd  not a contact (group peer)" in text and DAN in text


def test_group_commands_call_the_api():
    app, backend = group_app()
    type_line(app, "/group create Chess Bob Carol")
    assert ("group", "create", {"name": "Chess", "members": ["Bob", "Carol"]}) in backend.calls
    assert app.model.open_chat == group_key(GID2) and "# Chess" in text_of(app)
    type_line(app, "/group create Chess Bob Zed")
    assert "No contact named 'Zed'" in screen(app)[-1]
    app.open_chat(KEY)
    backend.groups[GID]["members"].remove(CAROL)
    type_line(app, "/invite Carol")
    assert ("group", "invite", {"group": GID, "peer": "Carol"}) in backend.calls
    type_line(app, f"/kick {DAN[:11]}")
    assert ("group", "remove", {"group": GID, "peer": DAN}) in backend.calls
    type_line(app, "/kick Nobody")
    assert "'Nobody' is not a member of Family" in screen(app)[-1]
    type_line(app, "/rename Kin")
    assert ("group", "rename", {"group": GID, "name": "Kin"}) in backend.calls and "# Kin" in text_of(app)
    type_line(app, "/leave")
    assert "Leave Kin?" in text_of(app)
    app.layout.top_dialog.buttons[0].base_widget.keypress((10,), "enter")
    assert ("group", "leave", {"group": GID}) in backend.calls and "you left" in text_of(app)
    type_line(app, "still here?")
    assert not [c for c in backend.calls if c[:2] == ("group", "send_message")]
    assert "no longer a member" in screen(app)[-1]


def test_group_commands_outside_a_group_say_so():
    app, backend = group_app()
    app.open_chat(BOB)
    for line in ("/invite Carol", "/kick Bob", "/leave", "/members"):
        type_line(app, line)
        assert "Open a group first" in screen(app)[-1], line
    type_line(app, "/rename Fam")
    assert "/rename OLD NEW" in screen(app)[-1]


def test_sendfile_in_a_group_offers_it_to_the_group(tmp_path):
    app, backend = group_app()
    app.open_chat(KEY)
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"x" * 10)
    type_line(app, f"/sendfile {path}")
    assert ("group", "send_file", {"group": GID, "file_path": str(path)}) in backend.calls
    assert "Offered photo.jpg to Family" in screen(app)[-1]
    backend.on_event({"event": "file_offer", "data": {"transfer_id": "t1", "peer": "Bob", "group": GID,
                                                      "direction": "in", "file_name": "a.pdf", "size": 5}})
    text = text_of(app)
    assert "⇩ a.pdf" in text and "from Bob" in text and "Accept" in text


def test_the_list_summary_counts_members_until_info_names_them_and_gaps_read_as_text():
    model = Model()
    model.set_status({"identity": {"name": "alice", "fingerprint": ME}})
    model.groups.set_groups([{"group": GID, "name": "Family", "state": "active", "members_count": 5, "online": 2,
                              "admin": True, "unread": 1}])
    from chatp2p_ui.views.contacts import group_markup
    from chatp2p_ui.views.group_view import group_message_markup, group_title_markup
    group = model.groups.get(GID)
    icon, name, detail = group_markup(group, model)
    assert icon[0][1] == "# " and "2/4 online" in detail[0][1] and ("unread", " 1") in name
    assert "you are admin" in "".join(t for _, t in group_title_markup(group, model))
    model.groups.set_history(KEY, [msg("g", BOB, "12", kind="gap")], 0)
    body, mark = group_message_markup(group.sorted_messages()[0], "Bob")
    assert "12 messages no longer available" in body[0][1] and mark == []
