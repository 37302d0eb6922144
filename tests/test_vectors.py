"""The test vectors of docs/PROTOCOL.md §11.5 (tests/vectors/*.json) against the code.

Every committed value is recomputed here, with the code and, where the spec is short enough,
with an independent transcription of PROTOCOL.md (fingerprint, ID checksum, X-Wing seed
expansion, the HPKE key schedule of the `crypto encrypt` envelope), so a change of any of
these formats fails, and so does a document that no longer says what the code does.
The vectors are written by tests/vectors/generate.py.
"""

import base64
import hashlib
import hmac
import json
import pathlib
import struct

import pytest
from Crypto.PublicKey import Hybrid
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from chatp2p_core.codec import wire
from chatp2p_core.crypto import identity, pqc, sealed

VECTORS = pathlib.Path(__file__).resolve().parent / "vectors"


def load(name):
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


FP = load("fingerprint.json")
IDS = load("id.json")
XWING = load("xwing.json")
ENVELOPE = load("envelope.json")
WIRE = load("wire.json")

B = bytes.fromhex


# -- 1. fingerprint ---------------------------------------------------------------------------
def test_fingerprint_vector_keys_from_seeds():
    ident = identity.Identity.from_private(pqc.PycryptodomeBackend(), B(FP["kem_seed"]), B(FP["sig_seed"]), 0.0)
    assert ident.kem_public.hex() == FP["kem_public"]
    assert ident.sig_public.hex() == FP["sig_public"]
    assert ident.bundle.encode().hex() == FP["bundle"]
    assert ident.bundle.to_base64() == FP["bundle_base64"]
    assert ident.fingerprint.hex() == FP["fingerprint"]
    assert ident.id == FP["id"]
    assert ident.short_id == FP["short_id"]


def test_fingerprint_as_documented():
    kem, sig = B(FP["kem_public"]), B(FP["sig_public"])
    assert (len(kem), len(sig)) == (1216, 1984)
    # bundle: "CP2B" || 0x01 || u16 len || X-Wing key || u16 len || ML-DSA-65 key || Ed25519 key
    assert B(FP["bundle"]) == b"CP2B\x01" + struct.pack(">H", 1216) + kem + struct.pack(">H", 1984) + sig
    # fingerprint: SHA-256 over the label and the length-prefixed keys; no magic, no version
    label = b"ChatP2P identity fingerprint v1\x00"
    assert B(FP["fingerprint_label"]) == label
    expected = hashlib.sha256(label + struct.pack(">H", 1216) + kem + struct.pack(">H", 1984) + sig).digest()
    assert expected.hex() == FP["fingerprint"] == FP["fingerprint_input_sha256"]
    assert hashlib.sha256(B(FP["bundle"])).hexdigest() != FP["fingerprint"]
    bundle = identity.Bundle.decode(B(FP["bundle"]))
    assert bundle.fingerprint().hex() == FP["fingerprint"]
    assert identity.Bundle.from_base64(FP["bundle_base64"]) == bundle


# -- 2. ID text -------------------------------------------------------------------------------
ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
BECH32M_CONST = 0x2BC830A3


def _polymod(values):
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= GEN[i] if (top >> i) & 1 else 0
    return chk


def _hrp(prefix="chatp2p-id"):
    return [ord(c) >> 5 for c in prefix] + [0] + [ord(c) & 31 for c in prefix]


def _independent_id(fp):
    """PROTOCOL.md §11.2, transcribed: base32 of the fingerprint, bech32m checksum, groups of 5."""
    bits = int.from_bytes(fp, "big") << 4  # 256 bits + 4 zero bits = 52 symbols
    data = [(bits >> 5 * (51 - i)) & 31 for i in range(52)]
    state = _polymod(_hrp() + data + [0] * 6) ^ BECH32M_CONST
    check = [(state >> 5 * (5 - i)) & 31 for i in range(6)]
    text = "".join(ALPHABET[v] for v in data + check)
    return "-".join(text[i:i + 5] for i in range(0, 58, 5))


def _checksum_holds(text):
    values = [ALPHABET.index(c) for c in text.replace("-", "")]
    return _polymod(_hrp() + values) == BECH32M_CONST


def test_id_constants():
    assert IDS["alphabet"] == identity.ID_ALPHABET == ALPHABET
    assert IDS["check_prefix"] == identity.ID_CHECK_PREFIX
    assert int(IDS["bech32m_const"], 16) == BECH32M_CONST


@pytest.mark.parametrize("case", IDS["format"], ids=[c["name"] for c in IDS["format"]])
def test_id_format(case):
    fp = B(case["fingerprint"])
    assert identity.format_id(fp) == case["id"]
    assert _independent_id(fp) == case["id"]
    assert len(case["id"]) == 58 + 11 and _checksum_holds(case["id"])
    assert identity.parse_id(case["id"]) == fp


def test_id_of_fingerprint_vector():
    assert IDS["format"][0]["fingerprint"] == FP["fingerprint"] and IDS["format"][0]["id"] == FP["id"]


@pytest.mark.parametrize("case", IDS["parse_accepted"], ids=[c["name"] for c in IDS["parse_accepted"]])
def test_id_parse_accepted(case):
    assert identity.parse_id(case["text"]).hex() == case["fingerprint"]
    assert identity.looks_like_id(case["text"])


@pytest.mark.parametrize("case", IDS["parse_rejected"], ids=[c["name"] for c in IDS["parse_rejected"]])
def test_id_parse_rejected(case):
    with pytest.raises(identity.IdentityError):
        identity.parse_id(case["text"])
    if case["reason"] == "checksum":
        # right length and alphabet: only the checksum can refuse it
        assert len(case["text"].replace("-", "")) == 58 and not _checksum_holds(case["text"])
    if case["reason"] == "canonical":
        assert _checksum_holds(case["text"])


# -- 3. X-Wing --------------------------------------------------------------------------------
def test_xwing_label():
    assert B(XWING["label"]) == pqc.XWING_LABEL == b"\\.//^\\"


@pytest.mark.parametrize("index", range(len(XWING["vectors"])))
def test_xwing_draft_vectors(index):
    v = {k: B(x) for k, x in XWING["vectors"][index].items()}
    kem = pqc.XWingKem(pqc.PycryptodomeMlKem())
    assert kem.public(v["seed"]) == v["pk"]
    assert pqc.xwing_public(v["seed"]) == v["pk"]  # pycryptodome's own X-Wing (Hybrid)
    assert kem.encaps(v["pk"], v["eseed"]) == (v["ss"], v["ct"])
    assert pqc.PycryptodomeBackend().kem_decaps(v["seed"], v["ct"]) == v["ss"]
    # seed expansion: SHAKE256(seed) -> 96 bytes = ML-KEM d || z (64) || X25519 private key (32)
    expanded = hashlib.shake_256(v["seed"]).digest(96)
    assert pqc.xwing_expand(v["seed"]) == (expanded[:64], expanded[64:])
    pk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:]).public_key().public_bytes_raw()
    assert v["pk"][1184:] == pk_x
    # encapsulation randomness: ML-KEM coins (32) || X25519 ephemeral private key (32)
    eph = x25519.X25519PrivateKey.from_private_bytes(v["eseed"][32:])
    assert v["ct"][1088:] == eph.public_key().public_bytes_raw()
    # combiner order: SHA3-256(ss_M || ss_X || ct_X || pk_X || label): with ss_X known, the
    # library's combiner of (ss_M, ...) must give ss for the ss_M the decapsulation found
    ss_x = eph.exchange(x25519.X25519PublicKey.from_public_bytes(pk_x))
    dk = pqc.PycryptodomeMlKem().keypair(expanded[:64])[1]
    ss_m = pqc.PycryptodomeMlKem().decaps(dk, v["ct"][:1088])
    assert hashlib.sha3_256(ss_m + ss_x + v["ct"][1088:] + pk_x + b"\\.//^\\").digest() == v["ss"]
    assert pqc.xwing_combine(ss_m, ss_x, v["ct"][1088:], pk_x) == v["ss"]


# -- 4. the `crypto encrypt` envelope ----------------------------------------------------------
def _labeled_extract(suite, salt, label, ikm):
    return hmac.new(salt or bytes(32), b"HPKE-v1" + suite + label + ikm, hashlib.sha256).digest()


def _labeled_expand(suite, prk, label, info, length):
    labeled = struct.pack(">H", length) + b"HPKE-v1" + suite + label + info
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + labeled + bytes([i]), hashlib.sha256).digest()
        out, i = out + block, i + 1
    return out[:length]


def _hpke_base_seal(shared_secret, info, aead_id, plaintext):
    """RFC 9180 §5.1 KeySchedule (mode_base, empty psk) and the first seal (sequence 0, aad "")."""
    suite = b"HPKE" + struct.pack(">HHH", 0x647A, 0x0001, aead_id)
    context = b"\x00" + _labeled_extract(suite, b"", b"psk_id_hash", b"") + _labeled_extract(suite, b"", b"info_hash", info)
    secret = _labeled_extract(suite, shared_secret, b"secret", b"")
    key = _labeled_expand(suite, secret, b"key", context, 32)
    nonce = _labeled_expand(suite, secret, b"base_nonce", context, 12)
    cipher = ChaCha20Poly1305(key) if aead_id == 0x0003 else AESGCM(key)
    return cipher.encrypt(nonce, plaintext, b"")


def _recipient():
    return identity.Bundle.decode(B(FP["bundle"]))


def test_envelope_constants():
    kem_public = _recipient().kem_public
    assert B(ENVELOPE["recipient_kem_seed"]) == B(FP["kem_seed"])
    assert B(ENVELOPE["recipient_label"]) == sealed.RECIPIENT_LABEL == b"ChatP2P sealed recipient v1\x00"
    assert hashlib.sha256(sealed.RECIPIENT_LABEL + kem_public).hexdigest() == ENVELOPE["recipient_hash"]
    assert int(ENVELOPE["hpke"]["kem_id"], 16) == pqc.HPKE_KEM_ID == 0x647A
    assert dict(pqc.AEAD_IDS) == {"chacha20poly1305": 0x0003, "aes256gcm": 0x0002}


@pytest.mark.parametrize("case", ENVELOPE["cases"], ids=[c["aead"] for c in ENVELOPE["cases"]])
def test_envelope_as_documented(case):
    v = {k: B(x) for k, x in case.items() if k not in ("aead", "aead_id", "envelope_base64")}
    kem_public = _recipient().kem_public
    aead_id = int(case["aead_id"], 16)
    assert aead_id == pqc.AEAD_IDS[case["aead"]]
    header = b"CP2E\x01" + struct.pack(">H", aead_id)
    assert v["header"] == header
    assert v["info"] == header + B(ENVELOPE["recipient_hash"]) == sealed._info(header, kem_public)
    ss, enc = pqc.XWingKem(pqc.PycryptodomeMlKem()).encaps(kem_public, v["randomness"])
    assert (ss, enc) == (v["shared_secret"], v["enc"])
    ciphertext = _hpke_base_seal(ss, v["info"], aead_id, v["plaintext"])
    assert v["envelope"] == header + struct.pack(">H", 1120) + enc + ciphertext
    assert base64.b64decode(case["envelope_base64"], validate=True) == v["envelope"]
    assert base64.b64encode(v["envelope"]).decode("ascii") == case["envelope_base64"]


@pytest.mark.parametrize("case", ENVELOPE["cases"], ids=[c["aead"] for c in ENVELOPE["cases"]])
def test_envelope_opens(case):
    assert sealed.open_sealed(case["envelope_base64"], B(FP["kem_seed"])) == B(case["plaintext"])


@pytest.mark.parametrize("case", ENVELOPE["cases"], ids=[c["aead"] for c in ENVELOPE["cases"]])
def test_envelope_seal_with_fixed_randomness(case, monkeypatch):
    """sealed.seal() takes no randomness: pycryptodome's X-Wing encapsulation draws it from
    Crypto.PublicKey.Hybrid.get_random_bytes (64 bytes), replaced here for the test only."""
    calls = []

    def fixed(n):
        calls.append(n)
        return B(case["randomness"])

    monkeypatch.setattr(Hybrid, "get_random_bytes", fixed)
    text = sealed.seal(FP["bundle_base64"], B(case["plaintext"]), case["aead"])
    assert calls == [64], "the randomness no longer comes from Hybrid.get_random_bytes: update this test"
    assert text == case["envelope_base64"]


# -- 5. wire records --------------------------------------------------------------------------
def _record(name, f):
    if name == "PING":
        return wire.Ping(f["timestamp"])
    if name == "PONG":
        return wire.Pong(f["echo"])
    if name == "MSG":
        return wire.Msg(B(f["message_id"]), f["seq"], f["created"], f["total"], f["offset"], B(f["data"]))
    if name == "ACK":
        return wire.Ack(tuple(map(tuple, f["ranges"])), tuple(map(tuple, f["segments"])))
    if name == "CLOSE":
        return wire.Close(f["code"], f["reason"])
    if name == "PADDING":
        return wire.Padding(f["length"])
    raise AssertionError(name)


@pytest.mark.parametrize("case", WIRE["records"], ids=[f"{c['name']}-{i}" for i, c in enumerate(WIRE["records"])])
def test_wire_record(case):
    record = _record(case["name"], case["fields"])
    assert wire.encode_record(record).hex() == case["hex"]
    assert wire.decode_records(B(case["hex"])) == [record]
    data = B(case["hex"])
    if case["name"] != "PADDING":
        assert data[0] == wire.RecordType[case["name"]] and int.from_bytes(data[1:3], "big") == len(data) - 3


def test_wire_record_sequence_and_data_header():
    seq = WIRE["sequence"]
    records = [wire.Pong(1), wire.Ack(((1, 3),), ()), wire.Padding(3)]
    assert wire.encode_records(records).hex() == seq["hex"]
    assert wire.decode_records(B(seq["hex"])) == records
    h = WIRE["data_header"]
    header = wire.DataHeader(B(h["conn_id"]), h["key_phase"], h["counter"])
    assert header.encode().hex() == h["hex"]
    assert B(h["hex"]) == b"\xc1\x10" + B(h["conn_id"]) + bytes([h["key_phase"]]) + h["counter"].to_bytes(8, "big")
