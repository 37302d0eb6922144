#!/usr/bin/env python3
"""Write the test vectors of docs/PROTOCOL.md §11.5 (tests/vectors/*.json) from fixed inputs.

Run from the repository root with the package installed (``.venv/bin/python
tests/vectors/generate.py``). The JSON files are committed; tests/test_vectors.py recomputes
every value with the code and compares, so a change of any of these formats fails there.
Regenerate only when a format change is intended (and bump the protocol version with it).

Everything here is deterministic: key seeds are fixed byte strings, and the one place that
needs randomness (the X-Wing encapsulation inside HPKE, for ``crypto encrypt``) gets fixed
bytes through ``fixed_hpke_randomness`` below, because the code offers no parameter for it.
Hex strings are lowercase; all integers are big-endian on the wire.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import pathlib
import sys
from typing import Iterator

from Crypto.PublicKey import Hybrid

from chatp2p_core.codec import wire
from chatp2p_core.crypto import identity, pqc, sealed

HERE = pathlib.Path(__file__).resolve().parent

# Fixed private keys of the vector identity
KEM_SEED = bytes(range(0x00, 0x20))  # X-Wing decapsulation key (32-byte seed)
SIG_SEED = bytes(range(0x20, 0x60))  # ML-DSA-65 seed xi (32) || Ed25519 seed (32)
CREATED = 1_700_000_000.0  # only in the private key file, not in anything pinned here

# draft-connolly-cfrg-xwing-kem-06..-10, Appendix C (spec/test-vectors.json of the draft's
# repository, identical in those revisions)
XWING_DRAFT_VECTORS = HERE / "xwing.json"


def _hex(data: bytes) -> str:
    return bytes(data).hex()


def vector_identity() -> identity.Identity:
    return identity.Identity.from_private(pqc.PycryptodomeBackend(), KEM_SEED, SIG_SEED, CREATED)


# ---------------------------------------------------------------- 1. fingerprint


def fingerprint_vectors() -> dict:
    ident = vector_identity()
    bundle = ident.bundle
    key_material = bundle._key_material()
    return {
        "description": "Fingerprint of a fixed identity: seeds -> public keys -> bundle -> "
        "fingerprint = SHA-256(label || u16 len || kem_public || u16 len || sig_public). "
        "PROTOCOL.md §11.1.",
        "kem_seed": _hex(KEM_SEED),
        "sig_seed": _hex(SIG_SEED),
        "kem_public": _hex(bundle.kem_public),
        "sig_public": _hex(bundle.sig_public),
        "bundle": _hex(bundle.encode()),
        "bundle_base64": bundle.to_base64(),
        "fingerprint_label": _hex(identity.FINGERPRINT_LABEL),
        "fingerprint_input_sha256": hashlib.sha256(identity.FINGERPRINT_LABEL + key_material).hexdigest(),
        "fingerprint": _hex(bundle.fingerprint()),
        "id": identity.format_id(bundle.fingerprint()),
        "short_id": identity.short_id(bundle.fingerprint()),
    }


# ---------------------------------------------------------------- 2. ID text


def _swap_first_differing_pair(compact: str) -> str:
    """The ID with one pair of adjacent, different characters swapped (in the data part)."""
    for i in range(10, len(compact) - 1):
        if compact[i] != compact[i + 1]:
            return compact[:i] + compact[i + 1] + compact[i] + compact[i + 2 :]
    raise AssertionError("no pair to swap")


def _wrong_char(compact: str, index: int) -> str:
    alphabet = identity.ID_ALPHABET
    replacement = alphabet[(alphabet.index(compact[index]) + 1) % 32]
    return compact[:index] + replacement + compact[index + 1 :]


def _non_canonical_id(fp: bytes) -> str:
    """58 valid characters with a correct checksum, but the last data character's 4 unused
    bits are not 0: refused as not canonical."""
    chars = identity._fp_chars(fp)
    last = identity.ID_ALPHABET.index(chars[-1]) | 0x01
    chars = chars[:-1] + identity.ID_ALPHABET[last]
    check = identity._checksum([identity.ID_ALPHABET.index(c) for c in chars])
    return identity._group(chars + "".join(identity.ID_ALPHABET[v] for v in check))


def id_vectors() -> dict:
    fp = vector_identity().fingerprint
    fingerprints = [
        ("vector identity (fingerprint.json)", fp),
        ("all zero", bytes(32)),
        ("all 0xff", b"\xff" * 32),
        ("00 01 .. 1f", bytes(range(32))),
    ]
    formatted = [{"name": name, "fingerprint": _hex(f), "id": identity.format_id(f)} for name, f in fingerprints]

    canonical = identity.format_id(fp)
    compact = canonical.replace("-", "")
    ones = identity.format_id(b"\xff" * 32)
    # Every ID above with an o, l or b in it, written with the look-alike digits
    confusables = [
        (f"confusables 0/1/8 for o/l/b ({e['name']})",
         e["id"].replace("o", "0").replace("l", "1").replace("b", "8"), bytes.fromhex(e["fingerprint"]))
        for e in formatted if any(c in e["id"] for c in "olb")
    ]
    accepted = [
        ("canonical form", canonical, fp),
        ("upper case", canonical.upper(), fp),
        ("no separators", compact, fp),
        ("mixed case, spaces instead of '-'", canonical.replace("-", " ").title(), fp),
        ("groups of 4 with tabs and a line break", "\t".join(compact[i : i + 4] for i in range(0, 58, 4)) + "\r\n", fp),
        ("separators anywhere, doubled", "--" + "- -".join(compact[i : i + 3] for i in range(0, 58, 3)), fp),
        ("all 0xff, upper case", ones.upper(), b"\xff" * 32),
    ] + confusables
    wrong = _wrong_char(compact, 20)
    swapped = _swap_first_differing_pair(compact)
    wrong_check = _wrong_char(compact, 57)
    rejected = [
        ("one wrong character (data)", identity._group(wrong), "checksum"),
        ("one wrong character (checksum)", identity._group(wrong_check), "checksum"),
        ("one adjacent pair swapped", identity._group(swapped), "checksum"),
        ("one character missing", identity._group(compact[:-1]), "length"),
        ("one character too many", identity._group(compact + "a"), "length"),
        ("character outside the alphabet ('9')", identity._group(compact[:30] + "9" + compact[31:]), "character"),
        ("underscore is not a separator", canonical.replace("-", "_"), "character"),
        ("bare base32 of the fingerprint, no checksum", identity._group(compact[:52]), "length"),
        ("unused bits of the last data character set", _non_canonical_id(fp), "canonical"),
        ("empty", "", "empty"),
    ]
    for _, text, _ in rejected:  # the generator must not write a vector the code accepts
        try:
            identity.parse_id(text)
        except identity.IdentityError:
            continue
        raise AssertionError(f"{text!r} parses")
    return {
        "description": "ID text: RFC 4648 base32 (lowercase, no padding) of the 32-byte fingerprint "
        "(52 chars) + 6 checksum chars (bech32m's BCH code over the 5-bit values, with the prefix "
        "'chatp2p-id' expanded as in BIP-173), in groups of 5 joined by '-'. PROTOCOL.md §11.2.",
        "alphabet": identity.ID_ALPHABET,
        "check_prefix": identity.ID_CHECK_PREFIX,
        "bech32m_const": f"{identity._BECH32M_CONST:#010x}",
        "format": formatted,
        "parse_accepted": [{"name": n, "text": t, "fingerprint": _hex(f)} for n, t, f in accepted],
        "parse_rejected": [{"name": n, "text": t, "reason": r} for n, t, r in rejected],
    }


# ---------------------------------------------------------------- 3. X-Wing


def xwing_vectors() -> dict:
    """Kept as committed (copied from the draft); only checked here."""
    data = json.loads(XWING_DRAFT_VECTORS.read_text())
    kem = pqc.XWingKem(pqc.PycryptodomeMlKem())
    for v in data["vectors"]:
        seed = bytes.fromhex(v["seed"])
        assert kem.public(seed).hex() == v["pk"]
        ss, ct = kem.encaps(bytes.fromhex(v["pk"]), bytes.fromhex(v["eseed"]))
        assert (ss.hex(), ct.hex()) == (v["ss"], v["ct"])
    return data


# ---------------------------------------------------------------- 4. crypto encrypt envelope


@contextlib.contextmanager
def fixed_hpke_randomness(randomness: bytes) -> Iterator[list]:
    """Make pycryptodome's X-Wing encapsulation (the only random input of ``sealed.seal``)
    use ``randomness`` (64 bytes: ML-KEM coins || X25519 ephemeral key). Test-only: it
    replaces ``Crypto.PublicKey.Hybrid.get_random_bytes`` for the duration."""
    original = Hybrid.get_random_bytes
    calls: list = []

    def fake(n: int) -> bytes:
        assert n == len(randomness), n
        calls.append(n)
        return randomness

    Hybrid.get_random_bytes = fake
    try:
        yield calls
    finally:
        Hybrid.get_random_bytes = original


ENVELOPE_CASES = [
    ("chacha20poly1305", bytes(range(0x60, 0xA0)), "Hello from ChatP2P: ML-KEM-768 + X25519 → HPKE".encode("utf-8")),
    ("aes256gcm", bytes(range(0xA0, 0xE0)), b""),
]


def envelope_vectors() -> dict:
    ident = vector_identity()
    bundle_b64 = ident.bundle.to_base64()
    kem = pqc.XWingKem(pqc.PycryptodomeMlKem())
    cases = []
    for aead, randomness, plaintext in ENVELOPE_CASES:
        with fixed_hpke_randomness(randomness) as calls:
            text = sealed.seal(bundle_b64, plaintext, aead)
        assert calls == [64]
        envelope = base64.b64decode(text)
        aead_id = pqc.AEAD_IDS[aead]
        header = sealed.ENVELOPE_MAGIC + bytes([sealed.ENVELOPE_VERSION]) + aead_id.to_bytes(2, "big")
        info = sealed._info(header, ident.kem_public)
        ss, enc = kem.encaps(ident.kem_public, randomness)
        assert envelope[:7] == header and envelope[9 : 9 + len(enc)] == enc
        assert sealed.open_sealed(text, KEM_SEED) == plaintext
        cases.append({
            "aead": aead,
            "aead_id": f"{aead_id:#06x}",
            "randomness": _hex(randomness),
            "plaintext": _hex(plaintext),
            "header": _hex(header),
            "info": _hex(info),
            "enc": _hex(enc),
            "shared_secret": _hex(ss),
            "envelope": _hex(envelope),
            "envelope_base64": text,
        })
    return {
        "description": "The `crypto encrypt` envelope: 'CP2E' || version 1 || AEAD id (u16) || "
        "u16 len(enc) || enc || HPKE ciphertext, as standard base64. HPKE (RFC 9180) base mode, "
        "KEM 0x647A (X-Wing), KDF 0x0001 (HKDF-SHA256), AEAD 0x0003 or 0x0002; "
        "info = header (7 bytes) || SHA-256(recipient_label || recipient X-Wing public key); "
        "aad empty, sequence 0. Recipient: the identity of fingerprint.json. The randomness is "
        "X-Wing's encapsulation seed (ML-KEM coins || X25519 ephemeral key). PROTOCOL.md §11.4.",
        "recipient_kem_seed": _hex(KEM_SEED),
        "recipient_label": _hex(sealed.RECIPIENT_LABEL),
        "recipient_hash": hashlib.sha256(sealed.RECIPIENT_LABEL + ident.kem_public).hexdigest(),
        "hpke": {"mode": "0x00", "kem_id": "0x647a", "kdf_id": "0x0001"},
        "cases": cases,
    }


# ---------------------------------------------------------------- 5. wire records


def _record_case(name: str, record: wire.Record, fields: dict) -> dict:
    return {"name": name, "fields": fields, "hex": _hex(wire.encode_record(record))}


def wire_vectors() -> dict:
    mid = hashlib.sha256("msg-0001".encode()).digest()[:16]
    records = [
        ("PING", wire.Ping(1_700_000_000_123_456), {"timestamp": 1_700_000_000_123_456}),
        ("PONG", wire.Pong(1_700_000_000_123_456), {"echo": 1_700_000_000_123_456}),
        ("MSG", wire.Msg(mid, 7, 1_700_000_000_123, 11, 0, b"hello world"),
         {"message_id": _hex(mid), "seq": 7, "created": 1_700_000_000_123, "total": 11, "offset": 0,
          "data": _hex(b"hello world")}),
        ("MSG", wire.Msg(mid, 2**64 - 1, 0, 70000, 65536, b"\x00\xff"),
         {"message_id": _hex(mid), "seq": 2**64 - 1, "created": 0, "total": 70000, "offset": 65536,
          "data": "00ff"}),
        ("ACK", wire.Ack(), {"ranges": [], "segments": []}),
        ("ACK", wire.Ack(((1, 41), (43, 43)), ((42, 0, 1122), (44, 2244, 500))),
         {"ranges": [[1, 41], [43, 43]], "segments": [[42, 0, 1122], [44, 2244, 500]]}),
        ("CLOSE", wire.Close(0, ""), {"code": 0, "reason": ""}),
        ("CLOSE", wire.Close(0, "busy"), {"code": 0, "reason": "busy"}),
        ("CLOSE", wire.Close(1, "closed"), {"code": 1, "reason": "closed"}),
        ("CLOSE", wire.Close(0xFFFF, "déjà vu"), {"code": 0xFFFF, "reason": "déjà vu"}),
        ("PADDING", wire.Padding(5), {"length": 5}),
    ]
    cases = [_record_case(name, rec, fields) for name, rec, fields in records]
    sequence = [wire.Pong(1), wire.Ack(((1, 3),), ()), wire.Padding(3)]
    header = wire.DataHeader(bytes.fromhex("0102030405060708"), 3, 0x0102030405060708)
    return {
        "description": "Record encodings of the DATA frame plaintext: type (u8) || length (u16) || "
        "body; PADDING is bare zero bytes. PROTOCOL.md §5-§6.",
        "records": cases,
        "sequence": {"records": "PONG(echo=1), ACK(ranges=[[1,3]]), PADDING(3)",
                     "hex": _hex(wire.encode_records(sequence))},
        "data_header": {"conn_id": "0102030405060708", "key_phase": 3, "counter": 0x0102030405060708,
                        "hex": _hex(header.encode())},
    }


GENERATORS = {
    "fingerprint.json": fingerprint_vectors,
    "id.json": id_vectors,
    "envelope.json": envelope_vectors,
    "wire.json": wire_vectors,
}


def main() -> int:
    xwing_vectors()  # committed as copied from the draft: only checked
    for name, make in GENERATORS.items():
        path = HERE / name
        path.write_text(json.dumps(make(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
