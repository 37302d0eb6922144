"""Anti-entropy planning (PROTOCOL §13.6, §13.7, §13.9): HAVE contents, what a peer lacks,
gaps, hints, and the per-author rate limit on a fake clock."""

from __future__ import annotations

import random

from chatp2p_core.codec import grouprecord as gr
from chatp2p_core.services.groups import sync

GID = bytes(range(16))
A, B, C, D = (bytes([i]) * 32 for i in (1, 2, 3, 4))


def test_seqset_ranges_and_highest():
    seqs = sync.SeqSet([5, 1, 2, 3, 9, 7, 8, 3])
    assert 2 in seqs and 4 not in seqs and len(seqs) == 7
    assert seqs.ranges() == ((1, 3), (5, 5), (7, 9))
    assert seqs.highest() == 9 and list(seqs) == [1, 2, 3, 5, 7, 8, 9]
    seqs.add(4)
    seqs.add(6)
    assert seqs.ranges() == ((1, 9),)
    assert sync.SeqSet().ranges() == () and sync.SeqSet().highest() == 0


def test_long_range_lists_keep_the_highest_and_never_overclaim():
    seqs = sync.SeqSet(range(1, 100, 2))  # 50 single-seq runs
    ranges = seqs.ranges()
    assert len(ranges) == 16 and ranges[-1] == (99, 99) and ranges[0] == (69, 69)
    assert all(first in seqs and last in seqs and first == last for first, last in ranges)
    assert seqs.ranges(limit=3) == ((95, 95), (97, 97), (99, 99))


def test_have_frame_encodes_and_round_trips():
    held = {B: sync.SeqSet([1, 2, 3, 10]), A: sync.SeqSet([1]), C: sync.SeqSet()}
    have = sync.have_frame(GID, held, {B: 5}, [D, C, D])
    assert [a.author for a in have.authors] == [A, B]  # ascending, authors with nothing left out
    assert have.authors[1] == gr.AuthorRanges(B, 5, ((1, 3), (10, 10)))
    assert have.authors[0].floor == 0
    assert have.connected == (C[:8], D[:8])
    assert gr.decode_frame(gr.encode_frame(have)) == have


def _have(*entries: gr.AuthorRanges) -> gr.Have:
    return gr.Have(GID, entries, ())


def test_wanted_by_peer():
    held = {A: sync.SeqSet(range(1, 11)), B: sync.SeqSet([1, 2]), C: sync.SeqSet([4])}
    peer = _have(gr.AuthorRanges(A, 0, ((1, 3), (6, 8))), gr.AuthorRanges(B, 0, ((1, 2),)),
                 gr.AuthorRanges(D, 0, ((1, 5),)))
    assert sync.wanted_by_peer(held, peer) == {A: [4, 5, 9, 10], C: [4]}
    assert sync.wanted_by_peer(held, _have()) == {A: list(range(1, 11)), B: [1, 2], C: [4]}


def test_nothing_below_the_peers_floor_is_sent_back():
    held = {A: sync.SeqSet(range(1, 11))}
    peer = _have(gr.AuthorRanges(A, 6, ((2, 2), (6, 7))))  # it pruned up to 5, keeps operation 2
    assert sync.wanted_by_peer(held, peer) == {A: [8, 9, 10]}


def test_wanted_matches_a_brute_force_reference():
    rng = random.Random(13)
    for _ in range(300):
        ours = sync.SeqSet(rng.sample(range(1, 60), rng.randint(0, 40)))
        theirs = sync.SeqSet(rng.sample(range(1, 60), rng.randint(0, 40)))
        floor = rng.choice([0, 0, rng.randint(1, 30)])
        peer = _have(gr.AuthorRanges(A, floor, theirs.ranges(limit=100)))
        expected = [s for s in ours if s not in theirs and s >= floor]
        assert sync.wanted_by_peer({A: ours}, peer).get(A, []) == expected


def test_gaps():
    held = {A: sync.SeqSet([1, 2, 3]), B: sync.SeqSet([1, 2, 3]), C: sync.SeqSet([1, 50])}
    peer = _have(gr.AuthorRanges(A, 10, ((10, 12),)), gr.AuthorRanges(B, 4, ((4, 5),)),
                 gr.AuthorRanges(C, 20, ((20, 60),)), gr.AuthorRanges(D, 7, ((7, 7),)))
    # A: 4..9 are gone (6); B: nothing between 3 and 4; C: we hold 50 above the floor; D: 1..6 gone
    assert sync.gaps(held, peer) == {A: 6, D: 6}
    assert sync.gaps(held, _have(gr.AuthorRanges(A, 0, ()))) == {}


def test_token_bucket_per_author_on_a_fake_clock():
    bucket = sync.TokenBucket()
    now = 1000.0
    assert all(bucket.take(A, now) for _ in range(40))
    assert not bucket.take(A, now)
    assert bucket.take(B, now)  # each author has its own allowance
    assert not bucket.take(A, now + 0.2)  # 0.8 of a token
    assert bucket.take(A, now + 0.25)
    assert not bucket.take(A, now + 0.25)
    assert sum(bucket.take(A, now + 10.25) for _ in range(100)) == 40  # refilled to the cap, no more
    slow = sync.TokenBucket(capacity=2, rate=1.0)
    assert slow.take(C, 0.0) and slow.take(C, 0.0) and not slow.take(C, 0.5) and slow.take(C, 1.0)
    assert not slow.take(C, 0.0)  # a clock going back adds nothing


def test_token_bucket_forgets_idle_authors():
    bucket = sync.TokenBucket(capacity=2, rate=1.0)
    for i in range(bucket.MAX_IDLE):
        bucket.take(i.to_bytes(32, "big"), 0.0)
    assert len(bucket) == bucket.MAX_IDLE
    bucket.take(A, 10.0)  # all the others are full again by now
    assert len(bucket) == 1


def test_hint_pairs():
    ours = {A, B, C, D}
    assert sync.hint_pairs(ours, B, [A[:8]]) == [C, D]  # not the peer itself, not those it has
    assert sync.hint_pairs(ours, B, [A[:8], C[:8], D[:8]]) == []
    assert sync.hint_pairs(set(), B, []) == []
