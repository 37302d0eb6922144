"""The group service inside members in one process (tests/groupnode.py): real sessions over
UDP on loopback, records made by hand where a test needs a hostile member."""

import dataclasses
import tempfile

import pytest
from gevent import sleep as gevent_sleep

from chatp2p_core.codec import grouprecord as gr
from chatp2p_core.crypto import groupcrypto, pqc

from clock import FakeClock
from groupnode import GroupNode, wait_until

BACKEND = None


def setup_module():
    global BACKEND
    BACKEND = pqc.select_backend()


@pytest.fixture
def trio():
    with tempfile.TemporaryDirectory() as tmp:
        nodes = [GroupNode(tmp, label, BACKEND) for label in ("A", "B", "C")]
        try:
            a, b, c = nodes
            a.befriend(b)
            a.befriend(c)
            yield nodes
        finally:
            for node in nodes:
                node.close()


def texts(node, gid):
    return [m["body"] for m in node.groups.history(gid, 1000, None)["messages"]]


def group_of(node, gid):
    return node.groups.groups[bytes.fromhex(gid)]


def test_create_send_and_the_same_order_everywhere(trio):
    a, b, c = trio
    info = a.groups.create("trio", [a.contact(b), a.contact(c)])
    gid = info["group"]
    for node in (b, c):
        wait_until(lambda node=node: bytes.fromhex(gid) in node.groups.groups, what=f"{node.label} joined")
    for i in range(5):
        for node in (a, b, c):
            node.groups.submit_message(gid, f"{node.label}{i}", None)
    for node in (a, b, c):
        wait_until(lambda node=node: len(texts(node, gid)) == 15, 30, f"{node.label} has 15")
    assert texts(a, gid) == texts(b, gid) == texts(c, gid)


def forge(node, gid, kind, body, sig_kind=gr.SigKind.HYBRID, **changes):
    """A record `node` writes by hand (signed with its key) on top of what it holds."""
    live = group_of(node, gid)
    draft = dataclasses.replace(node.groups._draft(live, kind, body, sig_kind), **changes)
    return groupcrypto.sign_record(draft, node.identity.sig_private, BACKEND)


def send_raw(sender, receiver, gid, records):
    link = sender.network.link_for_fingerprint(receiver.fingerprint)
    frame = gr.encode_frame(gr.RecordsFrame(bytes.fromhex(gid), tuple(r.encode() for r in records)))
    assert sender.groups.channel.send_frame(link, frame)


def test_hostile_records_are_dropped_and_counted(trio):
    a, b, c = trio
    gid = a.groups.create("trio", [a.contact(b), a.contact(c)])["group"]
    for node in (b, c):
        wait_until(lambda node=node: bytes.fromhex(gid) in node.groups.groups, what=f"{node.label} joined")
    a.groups.submit_message(gid, "hello", None)
    wait_until(lambda: texts(b, gid) == ["hello"], what="B has hello")
    members_before = set(group_of(a, gid).membership.members)

    # A member who is not an admin adds someone: kept, without effect
    outsider = GroupNode(tempfile.mkdtemp(), "X", BACKEND)
    try:
        add = forge(b, gid, gr.Kind.ADD, gr.encode_add(0, outsider.identity.bundle.encode()))
        send_raw(b, a, gid, [add])
        wait_until(lambda: add.hash() in group_of(a, gid).depth, what="A holds B's ADD")
        assert set(group_of(a, gid).membership.members) == members_before
        # A record signed by someone else than its author: forged
        fake = dataclasses.replace(forge(b, gid, gr.Kind.CHECKPOINT, b""), author=c.fingerprint)
        fake = groupcrypto.sign_record(dataclasses.replace(fake, signature=b""), b.identity.sig_private, BACKEND)
        before = a.network.counters["group_records_forged"]
        send_raw(b, a, gid, [fake])
        wait_until(lambda: a.network.counters["group_records_forged"] > before, what="forged counted")
        # A replayed record: stored once, shown once
        record = next(iter(group_of(b, gid).sealed.values()), None)
        replayed = a.network.counters["group_records_duplicate"]
        hello = [r for r in (gr.decode_record(d) for d in a.store.groups.records_for(
            group_of(a, gid).row, a.fingerprint, range(1, 20))) if r.kind == gr.Kind.MESSAGE]
        send_raw(b, a, gid, hello)
        wait_until(lambda: a.network.counters["group_records_duplicate"] > replayed, what="replay counted")
        assert texts(a, gid) == ["hello"] and record is None
    finally:
        outsider.close()


def joined(nodes, gid):
    for node in nodes:
        wait_until(lambda node=node: bytes.fromhex(gid) in node.groups.groups, what=f"{node.label} joined")


def members(node, gid):
    return set(group_of(node, gid).membership.members)


def test_a_removed_member_still_sending_is_dropped_and_counted(trio):
    a, b, c = trio
    gid = a.groups.create("trio", [a.contact(b), a.contact(c)])["group"]
    joined((b, c), gid)
    c.groups.submit_message(gid, "from C before", None)
    wait_until(lambda: "from C before" in texts(a, gid), what="A has C's message")
    a.groups.remove(gid, c.identity.id)
    wait_until(lambda: group_of(c, gid).state == "removed", what="C knows it was removed")
    late = forge(c, gid, gr.Kind.CHECKPOINT, b"")   # past the final_seq A recorded
    before = a.network.counters["group_records_nonmember"]
    send_raw(c, a, gid, [late])
    wait_until(lambda: a.network.counters["group_records_nonmember"] > before, what="counted")
    assert late.hash() not in group_of(a, gid).depth
    assert "from C before" in texts(a, gid)   # what it wrote while a member stays


def test_records_from_a_non_member_are_not_taken(trio):
    a, b, c = trio
    gid = a.groups.create("duo", [a.contact(b)])["group"]    # C is A's contact, not a member
    joined((b,), gid)
    live = group_of(a, gid)
    draft = gr.Record(gr.Kind.CHECKPOINT, live.group_id, c.fingerprint, 1, bytes(32), 9, 0, 0, gr.SigKind.HYBRID,
                      live.parents(), b"")
    record = groupcrypto.sign_record(draft, c.identity.sig_private, BACKEND)
    link = c.network.link_for_fingerprint(a.fingerprint)
    frame = gr.encode_frame(gr.RecordsFrame(live.group_id, (record.encode(),)))
    before = a.network.counters["group_frames_nonmember"]
    assert c.groups.channel.send_frame(link, frame)
    wait_until(lambda: a.network.counters["group_frames_nonmember"] > before, what="non-member frame counted")
    # relayed by a member, it waits for an ADD naming its author (which never comes) and is not shown
    send_raw(b, a, gid, [record])
    wait_until(lambda: record.hash() in group_of(a, gid).pending, what="pending")
    assert record.hash() not in live.depth and a.groups.info(gid)["pending"] == 1


def test_concurrent_add_and_remove_converge(trio, tmp_path):
    a, b, c = trio
    d = GroupNode(str(tmp_path), "D", BACKEND)
    try:
        b.befriend(d)
        a.befriend(d)
        gid = a.groups.create("race", [a.contact(b), a.contact(c)])["group"]
        joined((b, c), gid)
        a.groups.promote(gid, b.identity.id)
        wait_until(lambda: group_of(b, gid).membership.is_admin(b.fingerprint), what="B is admin")
        # No yield between the two: neither has seen the other's operation when writing its own
        a.groups.remove(gid, c.identity.id)
        b.groups.invite(gid, b.contact(d))
        joined((d,), gid)
        want = {a.fingerprint, b.fingerprint, d.fingerprint}
        for node in (a, b, d):
            wait_until(lambda node=node: members(node, gid) == want, 30, f"{node.label} converged")
        assert [group_of(n, gid).membership.applied for n in (a, b, d)].count(
            group_of(a, gid).membership.applied) == 3
    finally:
        d.close()


def test_the_last_admin_leaving_hands_the_group_on(trio):
    a, b, c = trio
    gid = a.groups.create("trio", [a.contact(b), a.contact(c)])["group"]
    joined((b, c), gid)
    # B and C are not contacts: A introduces them (HINT) before it goes
    wait_until(lambda: c.network.link_for_fingerprint(b.fingerprint) is not None
               and c.network.link_for_fingerprint(b.fingerprint).connected, 30, "B and C connected")
    a.groups.leave(gid)
    for node in (b, c):
        wait_until(lambda node=node: members(node, gid) == {b.fingerprint, c.fingerprint}, what=f"{node.label} saw A leave")
        assert ("group_member_left", {"group": gid, "member": a.identity.id, "member_name": "A"}) in node.events
    assert group_of(a, gid).state == "left"
    heir = group_of(b, gid).membership.admins()
    assert heir == group_of(c, gid).membership.admins() and len(heir) == 1   # auto-promotion, the same everywhere
    with pytest.raises(Exception):
        a.groups.submit_message(gid, "after leaving", None)
    b.groups.submit_message(gid, "still going", None)
    wait_until(lambda: "still going" in texts(c, gid), what="C has B's message")
    assert "still going" not in texts(a, gid)


def chain(node, gid, count):
    """`count` CHECKPOINTs `node` writes by hand, each on the previous one (not stored by it)."""
    live = group_of(node, gid)
    draft = node.groups._draft(live, gr.Kind.CHECKPOINT, b"", gr.SigKind.HYBRID)
    out = []
    for i in range(count):
        record = groupcrypto.sign_record(draft, node.identity.sig_private, BACKEND)
        out.append(record)
        draft = dataclasses.replace(draft, seq=draft.seq + 1, prev=record.hash(), parents=(record.hash(),),
                                    depth=draft.depth + 1)
    return out


def test_a_flooding_member_is_rate_limited_then_caught_up(tmp_path):
    clock = FakeClock()
    a = GroupNode(str(tmp_path), "A", BACKEND, clock=clock)
    b = GroupNode(str(tmp_path), "B", BACKEND)
    try:
        a.befriend(b)
        gid = a.groups.create("duo", [a.contact(b)])["group"]
        joined((b,), gid)
        flood = chain(b, gid, 60)
        group_of(a, gid).peers[b.fingerprint].grant = 0   # no answer to a HAVE of A's is owed: all unasked
        send_raw(b, a, gid, flood)
        wait_until(lambda: a.network.counters["group_rate_limited"] == 20, what="20 over the bucket")
        held = group_of(a, gid).held[b.fingerprint]
        assert len(held) == 40 and held.highest() == flood[39].seq    # the first 40, in order
        clock.advance(5.0)   # 4 a second: room for the other 20
        send_raw(b, a, gid, flood[40:])
        wait_until(lambda: len(group_of(a, gid).held[b.fingerprint]) == 60, what="the rest taken")
        assert a.network.counters["group_rate_limited"] == 20
    finally:
        a.close()
        b.close()


def test_a_key_saved_but_never_sent_is_not_used(trio):
    """A crash between saving a new sender key and storing its KEY record: the next message
    gets a fresh KEY, and everyone reads it."""
    a, b, c = trio
    gid = a.groups.create("trio", [a.contact(b), a.contact(c)])["group"]
    joined((b, c), gid)
    a.groups.submit_message(gid, "one", None)
    live = group_of(a, gid)
    epoch = live.row.key_epoch
    # what the crash leaves: the row names epoch + 1, with a key nobody was sent
    a.store.groups.put_key(live.row, a.fingerprint, epoch + 1, bytes(32))
    live.row = a.store.groups.update_group(live.row, key_epoch=epoch + 1, sender_key=bytes(32))
    a.groups.submit_message(gid, "two", None)
    for node in (b, c):
        wait_until(lambda node=node: texts(node, gid) == ["one", "two"], what=f"{node.label} reads both")
    assert texts(a, gid) == ["one", "two"] and group_of(a, gid).row.key_epoch == epoch + 2


def test_messages_become_pq_verified_with_the_checkpoint(tmp_path):
    """§13.5: Ed25519 messages are shown at once and become pq_verified when their author's
    CHECKPOINT (hybrid, 10 s after the first uncovered one) covers its chain."""
    clock = FakeClock()
    a = GroupNode(str(tmp_path), "A", BACKEND)
    b = GroupNode(str(tmp_path), "B", BACKEND, clock=clock)
    try:
        a.befriend(b)
        gid = a.groups.create("duo", [a.contact(b)])["group"]
        joined((b,), gid)
        for text in ("first", "second", "third"):
            b.groups.submit_message(gid, text, None)

        def verified():
            return {m["body"]: m["pq_verified"] for m in a.groups.history(gid, 10, None)["messages"]}
        wait_until(lambda: len(verified()) == 3, what="A has B's three messages")
        assert verified() == {"first": True, "second": False, "third": False}   # the first follows B's KEY
        clock.advance(9.0)
        gevent_sleep(0.5)
        assert verified()["third"] is False
        clock.advance(1.5)
        wait_until(lambda: all(verified().values()), what="the CHECKPOINT covers the chain")
    finally:
        a.close()
        b.close()


def test_a_member_back_after_the_retention_period_sees_a_gap(trio):
    a, b, c = trio
    gid = a.groups.create("trio", [a.contact(b), a.contact(c)])["group"]
    joined((b, c), gid)
    a.groups.submit_message(gid, "seen by all", None)
    wait_until(lambda: texts(b, gid) == ["seen by all"], what="B has the first")
    b.network.forget(a.fingerprint)            # B is away...
    for i in range(5):
        a.groups.submit_message(gid, f"missed {i}", None)
    wait_until(lambda: len(texts(c, gid)) == 6, what="C has them all")
    for node in (a, c):                         # ...longer than everyone keeps messages
        node.groups.retention = -60.0
        node.groups.prune()
    link = b.network.connect(b.contact(a), [a.address])
    wait_until(lambda: link.connected, what="B back")
    wait_until(lambda: any(m["kind"] == "gap" for m in b.groups.history(gid, 50, None)["messages"]),
               what="B's gap marker")
    shown = b.groups.history(gid, 50, None)["messages"]
    assert [m["body"] for m in shown if m["kind"] == "text"] == ["seen by all"]
    assert [m["body"] for m in shown if m["kind"] == "gap"] == ["5 messages are no longer available"]
    assert b.network.counters["group_gaps"] == 1
