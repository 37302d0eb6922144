"""Membership replay (PROTOCOL §13.3): every rule of the table, the conflicts it settles, and
that the result depends only on the set of operations, never on their arrival order."""

from __future__ import annotations

import itertools

import pytest

from chatp2p_core.codec import grouprecord as gr
from chatp2p_core.codec.grouprecord import Kind, Record, SigKind
from chatp2p_core.crypto import identity as ident
from chatp2p_core.crypto import pqc
from chatp2p_core.services.groups import membership as ms

BACKEND = pqc.PycryptodomeBackend()
A, B, C, D, X = (ident.Identity.generate(BACKEND) for _ in range(5))
FAKE_SIG = {SigKind.ED25519: b"\x01" * 64, SigKind.HYBRID: b"\x02" * 3373}
PARENT = b"\x0f" * 32


class Builder:
    """Records of one group with chosen depths (seq = depth unless given); signatures are
    fake: replay trusts its input (the service verifies before it stores)."""

    def __init__(self, creator: ident.Identity = A, name: str = "team") -> None:
        self.create = self._record(Kind.CREATE, creator, 1, gr.encode_create(name, creator.bundle.encode()), bytes(16))
        self.gid = self.create.hash()[:16]

    def _record(self, kind: Kind, author: ident.Identity, depth: int, body: bytes, gid: bytes,
                seq: int = 0) -> Record:
        fp = author.fingerprint
        seq = seq or depth  # the same call gives the same record
        sig_kind = SigKind.ED25519 if kind == Kind.MESSAGE else SigKind.HYBRID
        draft = Record(kind, gid, fp, seq, bytes(32) if seq == 1 else b"\x03" * 32, depth, 0,
                       1 if kind in (Kind.KEY, Kind.MESSAGE) else 0, sig_kind, () if kind == Kind.CREATE else (PARENT,),
                       body)
        gr.check_record(draft)
        return draft.with_signature(FAKE_SIG[sig_kind])

    def op(self, kind: Kind, author: ident.Identity, depth: int, body: bytes = b"", seq: int = 0) -> Record:
        return self._record(kind, author, depth, body, self.gid, seq)

    def add(self, author, target, depth, admin=False):
        return self.op(Kind.ADD, author, depth, gr.encode_add(int(admin), target.bundle.encode()))

    def remove(self, author, target, depth, final_seq=0):
        return self.op(Kind.REMOVE, author, depth, gr.encode_remove(target.fingerprint, final_seq))

    def leave(self, author, depth):
        return self.op(Kind.LEAVE, author, depth)

    def promote(self, author, target, depth):
        return self.op(Kind.PROMOTE, author, depth, gr.encode_promote(target.fingerprint))

    def rename(self, author, name, depth):
        return self.op(Kind.RENAME, author, depth, gr.encode_rename(name))

    def message(self, author, depth, seq=0):
        return self.op(Kind.MESSAGE, author, depth, b"\x00" * 20, seq)

    def replay(self, *ops: Record) -> ms.MembershipState:
        return ms.replay(self.gid, [self.create, *ops])


def roles(state: ms.MembershipState) -> dict[bytes, str]:
    return {fp: m.role for fp, m in state.members.items()}


def test_create_makes_the_creator_admin():
    g = Builder(name="Famille")
    state = g.replay()
    assert state.name == "Famille" and state.creator == A.fingerprint
    assert roles(state) == {A.fingerprint: "admin"} and state.admins() == [A.fingerprint]
    assert state.members[A.fingerprint].added_depth == 1
    assert state.applied == [g.create.hash()] and not state.rejected
    assert state.known_bundles == {A.fingerprint: A.bundle.encode()}


def test_create_must_hash_to_the_group_id():
    g = Builder()
    add = g.add(A, B, 2)
    state = ms.replay(bytes(16), [g.create, add])
    assert not state.members and not state.creator and state.rejected == {g.create.hash(), add.hash()}


def test_create_with_someone_elses_bundle_is_invalid():
    g = Builder()
    forged = g._record(Kind.CREATE, X, 1, gr.encode_create("mine", A.bundle.encode()), bytes(16))
    state = ms.replay(forged.hash()[:16], [forged])
    assert not state.members and forged.hash() in state.rejected


def test_add_by_an_admin():
    g = Builder()
    state = g.replay(g.add(A, B, 2), g.add(A, C, 3, admin=True))
    assert roles(state) == {A.fingerprint: "admin", B.fingerprint: "member", C.fingerprint: "admin"}
    assert state.members[B.fingerprint].added_depth == 2 and state.members[B.fingerprint].added_by == A.fingerprint
    assert set(state.known_bundles) == {A.fingerprint, B.fingerprint, C.fingerprint}


def test_forged_operations_by_a_non_admin_or_an_outsider_have_no_effect():
    g = Builder()
    by_member = g.add(B, C, 3)
    by_outsider = g.add(X, D, 3)
    rename = g.rename(B, "pwned", 4)
    remove = g.remove(B, A, 4)
    promote = g.promote(B, B, 5)
    state = g.replay(g.add(A, B, 2), by_member, by_outsider, rename, remove, promote)
    assert roles(state) == {A.fingerprint: "admin", B.fingerprint: "member"}
    assert state.name == "team"
    assert state.rejected == {r.hash() for r in (by_member, by_outsider, rename, remove, promote)}
    assert C.fingerprint in state.known_bundles  # named, even by an invalid ADD: bundles are self-certifying


def test_add_of_a_member_and_over_the_cap_are_invalid():
    g = Builder()
    again = g.add(A, B, 3)
    state = g.replay(g.add(A, B, 2), again)
    assert again.hash() in state.rejected
    others = [ident.Identity.generate(BACKEND) for _ in range(gr.MAX_MEMBERS)]
    adds = [g.add(A, other, 2 + i) for i, other in enumerate(others)]
    state = g.replay(*adds)
    assert len(state.members) == gr.MAX_MEMBERS
    assert state.rejected == {adds[-1].hash()}


def test_add_with_an_unusable_bundle_is_invalid():
    g = Builder()
    bad = g.op(Kind.ADD, A, 2, gr.encode_add(0, b"CP2B\x01junk"))
    state = g.replay(bad)
    assert bad.hash() in state.rejected and len(state.members) == 1


def test_remove():
    g = Builder()
    remove = g.remove(A, B, 3, final_seq=7)
    state = g.replay(g.add(A, B, 2), remove)
    assert roles(state) == {A.fingerprint: "admin"} and state.former == {B.fingerprint: 7}
    for bad in (g.remove(A, A, 4), g.remove(A, C, 4)):  # oneself, a non-member
        assert bad.hash() in g.replay(g.add(A, B, 2), bad).rejected


def test_leave_records_its_own_seq_as_final():
    g = Builder()
    leave = g.leave(B, 5)
    state = g.replay(g.add(A, B, 2), leave)
    assert roles(state) == {A.fingerprint: "admin"} and state.former == {B.fingerprint: leave.seq}
    outsider = g.leave(X, 5)
    assert outsider.hash() in g.replay(outsider).rejected


def test_promote_and_rename():
    g = Builder()
    state = g.replay(g.add(A, B, 2), g.promote(A, B, 3), g.rename(B, "renamed", 4))
    assert roles(state)[B.fingerprint] == "admin" and state.name == "renamed"
    twice = g.promote(A, B, 4)
    assert twice.hash() in g.replay(g.add(A, B, 2), g.promote(A, B, 3), twice).rejected
    assert g.promote(A, C, 3).hash() in g.replay(g.promote(A, C, 3)).rejected


def test_an_operation_by_a_removed_member_is_invalid():
    g = Builder()
    ops = [g.add(A, B, 2, admin=True), g.remove(A, B, 3)]
    late = g.add(B, C, 4)
    state = g.replay(*ops, late)
    assert late.hash() in state.rejected and not state.is_member(C.fingerprint)


def test_remove_racing_an_add_of_someone_else():
    g = Builder()
    setup = [g.add(A, B, 2, admin=True), g.add(A, X, 3)]
    remove, add = g.remove(A, X, 4), g.add(B, C, 4)  # concurrent: same depth
    state = g.replay(*setup, remove, add)
    assert set(state.members) == {A.fingerprint, B.fingerprint, C.fingerprint}  # both apply


def test_remove_racing_an_add_back():
    g = Builder()
    setup = [g.add(A, B, 2, admin=True), g.add(A, X, 3)]
    remove, add_back = g.remove(A, X, 4), g.add(B, X, 5)
    state = g.replay(*setup, add_back, remove)
    assert state.is_member(X.fingerprint) and state.members[X.fingerprint].added_by == B.fingerprint
    # the other order: the ADD comes first (X still a member: invalid), then the REMOVE
    remove, add_back = g.remove(A, X, 5), g.add(B, X, 4)
    state = g.replay(*setup, remove, add_back)
    assert not state.is_member(X.fingerprint) and add_back.hash() in state.rejected


def test_a_remove_before_the_add_stays_invalid():
    g = Builder()
    early_remove = g.remove(A, X, 2)
    state = g.replay(g.add(A, X, 3), early_remove)
    assert state.is_member(X.fingerprint) and early_remove.hash() in state.rejected


def test_two_admins_removing_each_other_leaves_exactly_one():
    g = Builder()
    setup = [g.add(A, B, 2, admin=True), g.add(A, C, 3)]
    a_removes_b, b_removes_a = g.remove(A, B, 4), g.remove(B, A, 4)
    first = min((a_removes_b, b_removes_a), key=lambda r: r.hash())
    for arrival in ([a_removes_b, b_removes_a], [b_removes_a, a_removes_b]):
        state = g.replay(*setup, *arrival)
        survivor = A.fingerprint if first is a_removes_b else B.fingerprint
        assert state.admins() == [survivor]
        assert set(state.members) == {survivor, C.fingerprint}
        assert state.applied[-1] == first.hash() and (a_removes_b.hash() if first is b_removes_a
                                                      else b_removes_a.hash()) in state.rejected


def test_the_last_admin_leaving_promotes_the_earliest_member():
    g = Builder()
    state = g.replay(g.add(A, C, 2), g.add(A, B, 3), g.leave(A, 4))
    assert roles(state) == {C.fingerprint: "admin", B.fingerprint: "member"}
    assert g.rename(C, "still managed", 5).hash() in g.replay(
        g.add(A, C, 2), g.add(A, B, 3), g.leave(A, 4), g.rename(C, "still managed", 5)).applied


def test_auto_promotion_ties_go_to_the_lowest_fingerprint():
    g = Builder()
    high, low = sorted((B, C), key=lambda i: i.fingerprint, reverse=True)  # the higher one replayed first
    add_low = g.add(A, low, 2)
    add_high = next(r for r in (g.op(Kind.ADD, A, 2, gr.encode_add(0, high.bundle.encode()), seq=s)
                                for s in range(10, 200)) if r.hash() < add_low.hash())
    state = g.replay(add_low, add_high, g.add(A, D, 3), g.leave(A, 4))
    assert state.admins() == [low.fingerprint]


def test_no_promotion_while_an_admin_remains_or_when_nobody_does():
    g = Builder()
    state = g.replay(g.add(A, B, 2, admin=True), g.add(A, C, 3), g.leave(A, 4))
    assert state.admins() == [B.fingerprint]
    leave = g.leave(A, 2)
    state = g.replay(leave)
    assert not state.members and state.former == {A.fingerprint: leave.seq} and not state.admins()


def test_a_non_admin_remove_cannot_make_the_group_unmanageable():
    """A REMOVE is only by an admin who stays, so it never removes the last admin."""
    g = Builder()
    state = g.replay(g.add(A, B, 2), g.remove(B, A, 3))
    assert state.admins() == [A.fingerprint]


def test_duplicates_other_kinds_and_other_groups_are_ignored():
    g = Builder()
    add = g.add(A, B, 2)
    other = Builder(creator=X)
    foreign = other.add(X, C, 2)
    message = g.message(A, 3)
    state = g.replay(add, add, message, foreign)
    assert set(state.members) == {A.fingerprint, B.fingerprint}
    assert state.applied == [g.create.hash(), add.hash()]
    assert foreign.hash() in state.rejected and message.hash() not in state.rejected


def test_replay_is_the_same_under_every_arrival_order():
    g = Builder()
    ops = [g.add(A, B, 2, admin=True), g.add(A, C, 3), g.remove(B, A, 4), g.remove(A, B, 4),
           g.add(B, D, 5), g.promote(A, C, 5), g.leave(C, 6)]
    expected = g.replay(*ops)
    summary = (roles(expected), expected.name, expected.former, expected.applied, expected.rejected)
    assert expected.rejected  # the set holds a conflict
    for permutation in itertools.permutations(ops):
        state = ms.replay(g.gid, [*permutation[:3], g.create, *permutation[3:]])
        assert (roles(state), state.name, state.former, state.applied, state.rejected) == summary


# ---------------------------------------------------------------- acceptance and entitlement


def test_accepts_members_after_their_add_and_former_members_up_to_final_seq():
    g = Builder()
    add_b = g.add(A, B, 3)
    member = g.replay(add_b)
    assert ms.accepts(member, g.message(A, 2))
    assert not ms.accepts(member, g.message(B, 3, seq=1))  # not deeper than B's ADD
    assert ms.accepts(member, g.message(B, 4, seq=1))
    assert not ms.accepts(member, g.message(X, 5))  # never a member
    removed = g.replay(add_b, g.remove(A, B, 8, final_seq=2))
    assert ms.accepts(removed, g.message(B, 4, seq=2))  # seq <= final_seq
    assert not ms.accepts(removed, g.message(B, 9, seq=3))  # written after its removal: dropped by everyone
    assert not ms.accepts(removed, g.message(B, 5, seq=3))  # whatever depth it claims
    assert ms.accepts(removed, add_b) and ms.accepts(removed, g.create)
    other = Builder(creator=X)
    assert not ms.accepts(removed, other.create) and not ms.accepts(removed, other.message(X, 5))


def test_a_readded_member_keeps_its_old_records():
    g = Builder()
    state = g.replay(g.add(A, B, 2), g.remove(A, B, 4, final_seq=1), g.add(A, B, 5))
    assert state.is_member(B.fingerprint)
    assert ms.accepts(state, g.message(B, 3, seq=1))
    assert not ms.accepts(state, g.message(B, 5, seq=2))  # neither deeper than the new ADD nor <= final_seq
    assert ms.accepts(state, g.message(B, 6, seq=3))


def test_entitled_only_to_what_was_written_while_a_member():
    g = Builder()
    early = g.message(A, 2)
    add_b = g.add(A, B, 3)
    later = g.message(A, 4)
    state = g.replay(add_b)
    assert ms.entitled(state, B.fingerprint, g.create) and ms.entitled(state, B.fingerprint, add_b)
    assert not ms.entitled(state, B.fingerprint, early)
    assert ms.entitled(state, B.fingerprint, later)
    assert not ms.entitled(state, X.fingerprint, g.create)  # nothing to a non-member
    removed = g.replay(add_b, g.remove(A, B, 5))
    assert not ms.entitled(removed, B.fingerprint, later) and not ms.entitled(removed, B.fingerprint, add_b)


def test_order_key():
    g = Builder()
    deep, shallow = g.message(A, 9), g.message(A, 3)
    assert sorted([deep, shallow, g.create], key=ms.order_key) == [g.create, shallow, deep]
    assert ms.order_key(deep) == (9, deep.hash())


@pytest.mark.parametrize("bad_body", [b"\x00" * 31, b""])
def test_malformed_bodies_inside_operations_are_invalid(bad_body):
    """Records built past the codec's checks (a caller's bug): replay rejects, never raises."""
    g = Builder()
    promote = Record(Kind.PROMOTE, g.gid, A.fingerprint, 5, b"\x03" * 32, 3, 0, 0, SigKind.HYBRID, (PARENT,),
                     bad_body, FAKE_SIG[SigKind.HYBRID])
    assert promote.hash() in g.replay(promote).rejected
