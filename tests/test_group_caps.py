"""The caps of PROTOCOL §13.9 (groups, members, pending invites, stored records), each refused
with a clear error before anything is written, in-process members (tests/groupnode.py)."""

import pytest

from chatp2p_core.codec.grouprecord import MAX_MEMBERS
from chatp2p_core.crypto import identity as ident, pqc
from chatp2p_core.services.groups.service import (MAX_GROUPS, MAX_PENDING_INVITES, GroupError,
                                                  GroupRefused)

from groupnode import GroupNode, wait_until

BACKEND = None


def setup_module():
    global BACKEND
    BACKEND = pqc.select_backend()


@pytest.fixture
def node_a(tmp_path):
    a = GroupNode(str(tmp_path), "A", BACKEND)
    yield a
    a.close()


@pytest.fixture
def node_b(tmp_path):
    b = GroupNode(str(tmp_path), "B", BACKEND)
    yield b
    b.close()


def strangers(node, count):
    """`count` contacts of `node` with bundles, who never come online (identities are cheap)."""
    out = []
    for i in range(count):
        other = ident.Identity.generate(BACKEND)
        out.append(node.store.contacts.add(f"p{i}", other.fingerprint, other.bundle.to_base64()))
    return out


def live_of(node, gid):
    return node.groups.groups[bytes.fromhex(gid)]


def record_counts(node):
    return {live.hex: node.store.groups.record_count(live.row) for live in node.groups.groups.values()}


def test_the_65th_group_is_refused_and_an_invitation_over_the_cap_is_dropped(node_a, node_b):
    a, b = node_a, node_b
    for i in range(MAX_GROUPS):
        b.groups.create(f"g{i}", [])
    with pytest.raises(GroupRefused, match=r"^Too many groups \(at most 64\)$"):
        b.groups.create("one more", [])
    assert len(b.groups.groups) == len(b.store.groups.list_groups()) == MAX_GROUPS

    a.befriend(b)
    before = b.network.counters["groups_refused"]
    gid = a.groups.create("invite", [a.contact(b)])["group"]
    wait_until(lambda: b.network.counters["groups_refused"] > before, what="B refuses the invitation")
    assert bytes.fromhex(gid) not in b.groups.groups
    assert len(b.groups.groups) == len(b.store.groups.list_groups()) == MAX_GROUPS


def test_a_65th_member_is_refused_before_any_add_is_written(node_a):
    a = node_a
    people = strangers(a, MAX_MEMBERS)
    with pytest.raises(GroupError, match=r"^Too many members \(at most 63 besides you\)$"):
        a.groups.create("too big", people)
    assert not a.groups.groups and not a.store.groups.list_groups()

    gid = a.groups.create("full", people[:-1])["group"]
    live = live_of(a, gid)
    assert len(live.membership.members) == MAX_MEMBERS
    held = a.store.groups.record_count(live.row)
    with pytest.raises(GroupRefused, match=r"^The group is full \(at most 64 members\)$"):
        a.groups.invite(gid, people[-1])
    assert a.store.groups.record_count(live.row) == held
    assert len(live_of(a, gid).membership.members) == MAX_MEMBERS


def test_pending_invites_are_capped_until_invited_members_show_up(node_a, node_b):
    a, b = node_a, node_b
    assert MAX_PENDING_INVITES == 128
    b.add(a, "A")
    a.add(b, "B")                    # a contact, not connected yet: B's invitation is pending
    people = strangers(a, MAX_MEMBERS - 1)
    one = a.groups.create("one", people)["group"]                       # 63 pending
    two = a.groups.create("two", people[:-1] + [a.contact(b)])["group"]  # 126
    three = a.groups.create("three", people[:2])["group"]               # 128: the same people count per group
    assert a.groups.pending_invites() == MAX_PENDING_INVITES

    counts, groups = record_counts(a), len(a.groups.groups)
    refused = r"^Too many pending invites \(128\): wait until invited members come online or remove some$"
    with pytest.raises(GroupRefused, match=refused):
        a.groups.invite(three, people[2])
    with pytest.raises(GroupRefused, match=refused):
        a.groups.create("four", [people[0]])
    assert record_counts(a) == counts and len(a.groups.groups) == groups    # nothing written
    assert a.groups.create("alone", [])["members"]                           # no invite: not refused

    # B comes online: its HAVE for "two" shows it got the invitation
    link = a.network.connect(a.contact(b), [b.address])
    wait_until(lambda: link.connected, what="A and B connected")
    wait_until(lambda: a.groups.pending_invites() == MAX_PENDING_INVITES - 1, what="B no longer pending")
    a.groups.invite(three, people[2])
    assert a.groups.pending_invites() == MAX_PENDING_INVITES
    # Removing an invited member who never came frees its slot
    a.groups.remove(one, people[0].name)
    assert a.groups.pending_invites() == MAX_PENDING_INVITES - 1

    # At start the count is rebuilt from the store: members we added who have no record there
    wait_until(lambda: bytes.fromhex(two) in b.groups.groups
               and live_of(b, two).membership.is_member(b.fingerprint), what="B joined")
    b.groups.submit_message(two, "here", None)
    wait_until(lambda: live_of(a, two).highest(b.fingerprint) > 0, what="A holds B's records")
    rebuilt = sum(len(a.groups._build(live.row).invited) for live in a.groups.groups.values())
    assert rebuilt == a.groups.pending_invites() == MAX_PENDING_INVITES - 1


def test_prune_keeps_at_most_max_records_but_operations_and_the_latest_key(node_a):
    a = node_a
    gid = a.groups.create("solo", [])["group"]
    for i in range(10):
        a.groups.submit_message(gid, f"m{i}", None)
    live = live_of(a, gid)
    kinds = {seq: a.store.groups.records_for(live.row, a.fingerprint, [seq]) for seq in (1, 2)}
    assert a.groups.info(gid)["records"] == 12 and all(kinds.values())   # CREATE, KEY, 10 MESSAGEs
    a.groups.max_records = 6
    a.groups.prune()
    assert a.store.groups.held_seqs(live.row) == {a.fingerprint: [1, 2, 9, 10, 11, 12]}
    assert a.groups.info(gid)["records"] == 6
    assert a.store.groups.floors(live.row) == {a.fingerprint: 9}
    assert [m["body"] for m in a.groups.history(gid, 50, None)["messages"]] == [f"m{i}" for i in range(10)]
    a.groups.submit_message(gid, "after", None)       # the index was rebuilt: seq and parents go on
    assert live_of(a, gid).highest(a.fingerprint) == 13
