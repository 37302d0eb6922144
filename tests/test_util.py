"""The generic helpers of chatp2p_core.util that several layers share."""

from __future__ import annotations

import os
import stat

import pytest

from chatp2p_core import util
from chatp2p_core.codec.filecodec import UnsafeName, check_file_name
from chatp2p_core.store import StoreError, validate_name
from chatp2p_core.util import BIDI_CONTROLS, TokenBucket, parse_bool, write_private_file


# ---------------------------------------------------------------- parse_bool


@pytest.mark.parametrize("text", ["1", "true", "TRUE", " Yes ", "on", "On\n"])
def test_parse_bool_true(text):
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["0", "false", "False", " no", "OFF"])
def test_parse_bool_false(text):
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["", "2", "yep", "t", "nope", "truee", "o n"])
def test_parse_bool_other_text_is_none(text):
    assert parse_bool(text) is None


# ---------------------------------------------------------------- bidi controls


@pytest.mark.parametrize("mark", ["\u200e", "\u200f", "\u061c", "\u202e", "\u2066"])
def test_contact_names_and_file_names_refuse_the_same_bidi_marks(mark):
    assert mark in BIDI_CONTROLS
    with pytest.raises(StoreError, match="control characters"):
        validate_name(f"ali{mark}ce")
    with pytest.raises(UnsafeName, match="bidirectional"):
        check_file_name(f"report{mark}.pdf")


def test_joiners_stay_allowed_in_both():
    assert validate_name("a\u200db") == "a\u200db"
    assert check_file_name("a\u200db.txt") == "a\u200db.txt"


# ---------------------------------------------------------------- token bucket


def test_token_bucket_starts_full_and_refills_at_its_rate():
    bucket = TokenBucket(rate=2.0, burst=3.0, now=10.0)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(10.4)  # 0.8 tokens
    assert bucket.take(10.5)  # 1.0
    assert not bucket.idle_full(11.0)
    assert bucket.idle_full(12.0)
    bucket.refill(100.0)
    assert bucket.tokens == 3.0  # capped at burst


def test_token_bucket_ignores_a_clock_going_back():
    bucket = TokenBucket(rate=1.0, burst=5.0, now=10.0, tokens=0.0)
    bucket.refill(9.0)
    assert bucket.tokens == 0.0 and bucket.updated == 10.0


def test_token_bucket_pacing_use():
    bucket = TokenBucket(rate=1000.0, burst=0.0, now=0.0, tokens=0.0)
    bucket.burst = 1500.0  # callers follow a measured rate
    bucket.refill(1.0)
    assert bucket.tokens == 1000.0
    bucket.refill(3.0)
    assert bucket.tokens == 1500.0
    bucket.tokens -= 2000  # a spend may overdraw: the next send waits longer
    assert bucket.wait_for(1000) == pytest.approx(1.5)
    bucket.tokens = 1200.0
    assert bucket.wait_for(1000) == 0.0


# ---------------------------------------------------------------- private files


def test_write_private_file_is_0600_and_replaces(tmp_path):
    path = tmp_path / "secret"
    assert write_private_file(path, b"one")
    assert write_private_file(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary file left


def test_write_private_file_without_replace_never_replaces(tmp_path):
    path = tmp_path / "identity.key"
    assert write_private_file(path, b"first", replace=False)
    assert not write_private_file(path, b"second", replace=False)
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["identity.key"]


def test_write_private_file_syncs_the_data_and_the_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(util.os, "fsync", fsync)
    write_private_file(tmp_path / "run.json", b"{}")
    assert synced == [False, True]


def test_write_private_file_cleans_up_after_a_failure(tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(util.os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        write_private_file(tmp_path / "secret", b"x")
    assert list(tmp_path.iterdir()) == []
