"""Crypto backends: sizes, round trips, tampering, backend equivalence, HPKE, liboqs probing."""

import hashlib
import sys
import time
import types

import pytest
from Crypto.PublicKey import MLDSA
from Crypto.Signature import mldsa
from hypothesis import given, settings, strategies as st

from chatp2p_core.crypto import pqc

# X-Wing test vector 1 (draft-connolly-cfrg-xwing-kem-08, Appendix C); the 1216-byte public
# key and the 1120-byte ciphertext are given by their SHA-256
KAT_SEED = bytes.fromhex("7f9c2ba4e88f827d616045507605853ed73b8093f6efbc88eb1a6eacfa66ef26")
KAT_ESEED = bytes.fromhex(
    "3cb1eea988004b93103cfb0aeefd2a686e01fa4a58e8a3639ca8a1e3f9ae57e2"
    "35b8cc873c23dc62b8d260169afa2f75ab916a58d974918835d25e6a435085b2"
)
KAT_PK_HEAD = bytes.fromhex("e2236b35a8c24b39b10aa1323a96a919")
KAT_PK_SHA256 = "2e816deebcd76c5c80d0cd2d174478871658e8e2ff42bc9d4a6e486372e856bb"
KAT_CT_SHA256 = "17cd532d657e44c897ca6583e548a5424fc70bf54f99515a4d2bcf99e3469f33"
KAT_SS = bytes.fromhex("d2df0522128f09dd8e2c92b1e905c793d8f57a54c3da25861f10bf4ca613e384")

NO_LIBOQS = "liboqs shared library not installed"


# -- a stand-in for liboqs-python, built on pycryptodome, to run LiboqsBackend's glue code ----
class FakeKeyEncapsulation:
    """The parts of oqs.KeyEncapsulation (liboqs-python 0.16) that LiboqsBackend uses."""

    length_keypair_seed = 64

    def __init__(self, alg_name, secret_key=None):
        assert alg_name == "ML-KEM-768"
        self.secret_key = secret_key

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def free(self):
        self.secret_key = None  # like liboqs, which wipes it

    def generate_keypair_seed(self, seed):
        assert len(seed) == self.length_keypair_seed
        ek, self.secret_key = pqc.PycryptodomeMlKem().keypair(seed)
        return ek

    def export_secret_key(self):
        return bytes(self.secret_key)

    def encap_secret(self, public_key):
        ss, ct = pqc.PycryptodomeMlKem().encaps(public_key)
        return ct, ss  # liboqs-python's order

    def decap_secret(self, ciphertext):
        return pqc.PycryptodomeMlKem().decaps(self.secret_key, ciphertext)


class OldFakeKeyEncapsulation(FakeKeyEncapsulation):
    """A liboqs without keypair-from-seed."""

    length_keypair_seed = 0

    def generate_keypair_seed(self, seed):
        raise RuntimeError("Key generation with seed is not supported")


class FakeSignature:
    """The parts of oqs.Signature that LiboqsBackend uses (ML-DSA-65, expanded secret key)."""

    def __init__(self, alg_name, secret_key=None):
        assert alg_name == "ML-DSA-65"
        self.secret_key = secret_key

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.secret_key = None

    def sign(self, message):
        return mldsa.new(MLDSA.construct(param_set=MLDSA.ML_DSA_65, sk=self.secret_key)).sign(message)

    def verify(self, message, signature, public_key):
        try:
            mldsa.new(MLDSA.construct(param_set=MLDSA.ML_DSA_65, pk=public_key)).verify(message, signature)
        except ValueError:
            return False
        return True


def fake_oqs(kem=FakeKeyEncapsulation):
    return types.SimpleNamespace(KeyEncapsulation=kem, Signature=FakeSignature)


def make_backends():
    """Every backend to check: the real ones available here, and LiboqsBackend over the fake."""
    backends = [pqc.PycryptodomeBackend(), pqc.LiboqsBackend(fake_oqs()), pqc.LiboqsBackend(fake_oqs(OldFakeKeyEncapsulation))]
    if "liboqs" in pqc.available_backends():
        backends.append(pqc.select_backend("liboqs"))
    return backends


BACKENDS = make_backends()
IDS = ["pycryptodome", "liboqs-glue", "liboqs-glue-old", "liboqs"][: len(BACKENDS)]
REF = BACKENDS[0]
KEM_SEED, KEM_PUB = REF.kem_generate()
SIG_PRIV, SIG_PUB = REF.sig_generate()
SIGNED = b"the transcript of a handshake"
SIGNATURE = REF.sign(SIG_PRIV, SIGNED)


def flip(data, index, mask=0x01):
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


# -- sizes -------------------------------------------------------------------------------
def test_component_sizes_match_the_standards():
    assert (pqc.MLKEM_EK_LEN, pqc.MLKEM_CT_LEN) == (1184, 1088)
    assert (pqc.MLDSA_PK_LEN, pqc.MLDSA_SIG_LEN) == (1952, 3309)
    assert (pqc.KEM_PUBLIC_LEN, pqc.KEM_CT_LEN, pqc.KEM_SEED_LEN) == (1216, 1120, 32)
    assert (pqc.SIG_PUBLIC_LEN, pqc.SIG_LEN, pqc.SIG_SEED_LEN) == (1952 + 32, 3309 + 64, 64)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_output_sizes(backend):
    seed, public = backend.kem_generate()
    assert (len(seed), len(public)) == (32, 1216)
    ss, ct = backend.kem_encaps(public)
    assert (len(ss), len(ct)) == (32, 1120)
    private, sig_public = backend.sig_generate()
    assert (len(private), len(sig_public)) == (64, 1984)
    assert len(backend.sign(private, b"m")) == 3373


# -- KEM -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_kem_round_trip_and_determinism(backend):
    seed, public = backend.kem_generate()
    assert backend.kem_public(seed) == public == REF.kem_public(seed)
    ss, ct = backend.kem_encaps(public)
    assert backend.kem_decaps(seed, ct) == ss
    ss2, ct2 = backend.kem_encaps(public)
    assert ss2 != ss and ct2 != ct
    other_seed, _ = backend.kem_generate()
    assert other_seed != seed and backend.kem_decaps(other_seed, ct) != ss


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_kem_interoperates_with_reference(backend):
    ss, ct = REF.kem_encaps(KEM_PUB)
    assert backend.kem_decaps(KEM_SEED, ct) == ss
    ss, ct = backend.kem_encaps(KEM_PUB)
    assert REF.kem_decaps(KEM_SEED, ct) == ss


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_kem_matches_xwing_test_vector(backend):
    public = backend.kem_public(KAT_SEED)
    assert public[:16] == KAT_PK_HEAD
    assert hashlib.sha256(public).hexdigest() == KAT_PK_SHA256
    ss, ct = pqc.XWingKem(pqc.PycryptodomeMlKem()).encaps(public, KAT_ESEED)
    assert hashlib.sha256(ct).hexdigest() == KAT_CT_SHA256
    assert ss == KAT_SS
    assert backend.kem_decaps(KAT_SEED, ct) == KAT_SS


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_tampered_kem_ciphertext_gives_another_secret(backend):
    ss, ct = REF.kem_encaps(KEM_PUB)
    for index in (0, 500, pqc.MLKEM_CT_LEN - 1, pqc.MLKEM_CT_LEN, pqc.KEM_CT_LEN - 2):
        try:
            assert backend.kem_decaps(KEM_SEED, flip(ct, index)) != ss
        except pqc.CryptoError:
            pass  # a flipped X25519 point may also be rejected outright


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_invalid_kem_inputs_raise_crypto_error(backend):
    ek = KEM_PUB[: pqc.MLKEM_EK_LEN]
    bad_modulus = bytes([0xFF, 0xFF]) + ek[2:]  # first coefficient 0xFFF >= q
    bad_publics = [
        KEM_PUB[:-1],
        KEM_PUB + b"\0",
        b"",
        ek + bytes(32),  # X25519 point of low order
        ek + b"\x01" + bytes(31),
        bad_modulus + KEM_PUB[pqc.MLKEM_EK_LEN :],
        "not bytes",
        None,
    ]
    for bad in bad_publics:
        with pytest.raises(pqc.CryptoError):
            backend.kem_encaps(bad)
    _, ct = REF.kem_encaps(KEM_PUB)
    for bad_ct in (ct[:-1], ct + b"\0", ct[: pqc.MLKEM_CT_LEN] + bytes(32), None):
        with pytest.raises(pqc.CryptoError):
            backend.kem_decaps(KEM_SEED, bad_ct)
    for bad_seed in (KEM_SEED[:-1], KEM_SEED + b"\0", b"", "x" * 32):
        with pytest.raises(pqc.CryptoError):
            backend.kem_public(bad_seed)
        with pytest.raises(pqc.CryptoError):
            backend.kem_decaps(bad_seed, ct)


def test_crypto_error_is_a_value_error():
    assert issubclass(pqc.CryptoError, ValueError)


# -- signatures ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_sign_verify_round_trip_across_backends(backend):
    private, public = backend.sig_generate()
    assert backend.sig_public(private) == public == REF.sig_public(private)
    signature = backend.sign(private, b"hello")
    assert backend.verify(public, b"hello", signature)
    assert REF.verify(public, b"hello", signature)
    assert backend.verify(SIG_PUB, SIGNED, SIGNATURE)
    assert not backend.verify(public, b"hello!", signature)
    assert not backend.verify(SIG_PUB, b"hello", signature)
    assert backend.sign(private, b"") and backend.verify(public, b"", backend.sign(private, b""))


def test_signature_halves_are_standard_signatures():
    """ML-DSA half: pure ML-DSA-65, empty context; Ed25519 half: RFC 8032 over the same message."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ml_pk = MLDSA.construct(param_set=MLDSA.ML_DSA_65, pk=SIG_PUB[:1952])
    mldsa.new(ml_pk, context=b"").verify(SIGNED, SIGNATURE[:3309])
    ed25519.Ed25519PublicKey.from_public_bytes(SIG_PUB[1952:]).verify(SIGNATURE[3309:], SIGNED)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_verify_needs_both_halves(backend):
    other = REF.sign(SIG_PRIV, b"another message")
    mixed_1 = SIGNATURE[:3309] + other[3309:]
    mixed_2 = other[:3309] + SIGNATURE[3309:]
    assert not backend.verify(SIG_PUB, SIGNED, mixed_1)
    assert not backend.verify(SIG_PUB, SIGNED, mixed_2)
    _, other_pub = REF.sig_generate()
    assert not backend.verify(SIG_PUB[:1952] + other_pub[1952:], SIGNED, SIGNATURE)
    assert not backend.verify(other_pub[:1952] + SIG_PUB[1952:], SIGNED, SIGNATURE)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_verify_never_raises_on_garbage(backend):
    garbage = [None, "", "text", 42, b"", b"\0" * 10, SIGNATURE[:-1], SIGNATURE + b"\0", bytes(3373)]
    for sig in garbage:
        assert backend.verify(SIG_PUB, SIGNED, sig) is False
    for pub in garbage + [bytes(1984), b"\xff" * 1984]:
        assert backend.verify(pub, SIGNED, SIGNATURE) is False
    for msg in (None, "text", 3):
        assert backend.verify(SIG_PUB, msg, SIGNATURE) is False


@settings(max_examples=60, deadline=None)
@given(index=st.integers(0, pqc.SIG_LEN - 1), mask=st.integers(1, 255))
def test_any_flipped_signature_byte_fails(index, mask):
    for backend in BACKENDS[:2]:
        assert not backend.verify(SIG_PUB, SIGNED, flip(SIGNATURE, index, mask))


@settings(max_examples=30, deadline=None)
@given(index=st.integers(0, pqc.SIG_PUBLIC_LEN - 1), mask=st.integers(1, 255))
def test_any_flipped_public_key_byte_fails(index, mask):
    assert not REF.verify(flip(SIG_PUB, index, mask), SIGNED, SIGNATURE)


@settings(max_examples=30, deadline=None)
@given(message=st.binary(max_size=300))
def test_sign_verify_any_message(message):
    signature = REF.sign(SIG_PRIV, message)
    assert BACKENDS[1].verify(SIG_PUB, message, signature)
    assert not REF.verify(SIG_PUB, message + b"x", signature)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_invalid_signing_inputs_raise_crypto_error(backend):
    for bad in (SIG_PRIV[:-1], SIG_PRIV + b"\0", b"", None):
        with pytest.raises(pqc.CryptoError):
            backend.sig_public(bad)
        with pytest.raises(pqc.CryptoError):
            backend.sign(bad, b"m")
    with pytest.raises(pqc.CryptoError):
        backend.sign(SIG_PRIV, "text is not bytes")


def test_public_key_checks():
    pqc.check_kem_public(KEM_PUB)
    pqc.check_sig_public(SIG_PUB)
    with pytest.raises(pqc.CryptoError):
        pqc.check_kem_public(KEM_PUB[: pqc.MLKEM_EK_LEN] + bytes(32))
    with pytest.raises(pqc.CryptoError):
        pqc.check_sig_public(SIG_PUB[:1952] + b"\xff" * 32)  # not an Ed25519 point
    with pytest.raises(pqc.CryptoError):
        pqc.check_sig_public(SIG_PUB[:-1])
    assert pqc.xwing_public(KEM_SEED) == KEM_PUB


# -- HPKE ------------------------------------------------------------------------------------
@pytest.mark.parametrize("aead", ["chacha20poly1305", "aes256gcm", "AES-256-GCM", "ChaCha20-Poly1305"])
def test_hpke_round_trip(aead):
    enc, ct = pqc.hpke_seal(KEM_PUB, b"secret message", b"info", aead)
    assert len(enc) == pqc.KEM_CT_LEN and len(ct) == len(b"secret message") + 16
    assert pqc.hpke_open(KEM_SEED, enc, ct, b"info", aead) == b"secret message"


def test_hpke_failures_raise_crypto_error():
    enc, ct = pqc.hpke_seal(KEM_PUB, b"secret", b"info", "chacha20poly1305")
    other_seed, _ = REF.kem_generate()
    cases = [
        (other_seed, enc, ct, b"info", "chacha20poly1305"),
        (KEM_SEED, enc, ct, b"other info", "chacha20poly1305"),
        (KEM_SEED, enc, ct, b"info", "aes256gcm"),
        (KEM_SEED, enc[:-1], ct, b"info", "chacha20poly1305"),
        (KEM_SEED, enc, ct[:10], b"info", "chacha20poly1305"),
        (KEM_SEED, enc[:-32] + bytes(32), ct, b"info", "chacha20poly1305"),
        (KEM_SEED[:-1], enc, ct, b"info", "chacha20poly1305"),
        (KEM_SEED, enc, ct, b"info", "rot13"),
    ]
    for args in cases:
        with pytest.raises(pqc.CryptoError):
            pqc.hpke_open(*args)
    with pytest.raises(pqc.CryptoError):
        pqc.hpke_seal(KEM_PUB[:-1], b"m", b"info")
    with pytest.raises(pqc.CryptoError):
        pqc.hpke_seal(KEM_PUB, b"m", b"info", "des")


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_hpke_any_flipped_byte_fails(data):
    enc, ct = pqc.hpke_seal(KEM_PUB, b"sealed", b"info")
    blob = enc + ct
    index = data.draw(st.integers(0, len(blob) - 1))
    bad = flip(blob, index, data.draw(st.integers(1, 255)))
    with pytest.raises(pqc.CryptoError):
        pqc.hpke_open(KEM_SEED, bad[: len(enc)], bad[len(enc) :], b"info")


def test_aead_names():
    assert pqc.AEAD_IDS == {"chacha20poly1305": 3, "aes256gcm": 2}
    assert pqc.aead_name(3) == "chacha20poly1305"
    with pytest.raises(pqc.CryptoError):
        pqc.aead_name(1)


# -- backend selection -----------------------------------------------------------------------
def test_select_backend_by_name():
    assert pqc.select_backend("pycryptodome").name == "pycryptodome"
    assert pqc.select_backend(" PyCryptodome ").name == "pycryptodome"
    assert pqc.select_backend("auto").name in pqc.available_backends()
    assert pqc.select_backend().name == pqc.available_backends()[-1]
    with pytest.raises(pqc.CryptoError, match="Unknown crypto backend"):
        pqc.select_backend("openssl")


def test_available_backends_always_has_pycryptodome():
    names = pqc.available_backends()
    assert names[0] == "pycryptodome" and set(names) <= set(pqc.BACKEND_NAMES)


def test_liboqs_probe_ignores_missing_and_broken_libraries(tmp_path, monkeypatch):
    monkeypatch.setattr(pqc.ctypes.util, "find_library", lambda name: None)
    assert pqc.find_liboqs({"OQS_INSTALL_PATH": str(tmp_path)}) is None
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "liboqs.so").write_bytes(b"not a shared library")
    (tmp_path / "lib" / "liboqs.dylib").write_bytes(b"not a shared library")
    assert pqc.find_liboqs({"OQS_INSTALL_PATH": str(tmp_path)}) is None


def test_missing_liboqs_never_imports_oqs(tmp_path, monkeypatch):
    """`import oqs` without the library sleeps 5 s, tries to git-clone, raises SystemExit."""
    if pqc.find_liboqs() is not None:
        pytest.skip("liboqs is installed here")
    monkeypatch.setenv("OQS_INSTALL_PATH", str(tmp_path))
    monkeypatch.delitem(sys.modules, "oqs", raising=False)
    start = time.monotonic()
    assert pqc.available_backends() == ["pycryptodome"]
    assert pqc.select_backend("auto").name == "pycryptodome"
    with pytest.raises(pqc.CryptoError, match="liboqs shared library was not found"):
        pqc.select_backend("liboqs")
    assert time.monotonic() - start < 2
    assert "oqs" not in sys.modules


@pytest.mark.skipif(pqc.find_liboqs() is None, reason=NO_LIBOQS)
def test_real_liboqs_is_byte_identical():
    backend = pqc.select_backend("liboqs")
    assert backend.name == "liboqs"
    assert backend.kem_public(KAT_SEED)[:16] == KAT_PK_HEAD
    ss, ct = backend.kem_encaps(KEM_PUB)
    assert REF.kem_decaps(KEM_SEED, ct) == ss
    assert backend.sig_public(SIG_PRIV) == SIG_PUB
    assert REF.verify(SIG_PUB, b"x", backend.sign(SIG_PRIV, b"x"))
    assert backend.verify(SIG_PUB, SIGNED, SIGNATURE)
