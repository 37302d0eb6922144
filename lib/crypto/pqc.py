"""Post-quantum primitives of ChatP2P, behind one small interface with two backends.

The suite (see docs): a KEM key is X-Wing (ML-KEM-768 + X25519, draft-connolly-cfrg-xwing-kem-06 (PROTOCOL §11.3),
the same as MLKEM768-X25519 of draft-irtf-cfrg-concrete-hybrid-kems); a signature key is
ML-DSA-65 + Ed25519, and a signature is valid only when both halves verify, so it holds as long
as either algorithm does.

Backends produce identical bytes, so two nodes never need to agree on one:

- ``pycryptodome`` (default): X-Wing of ``Crypto.PublicKey.Hybrid``, ML-DSA of
  ``Crypto.Signature.mldsa``. pycryptodome 4.4 exposes X-Wing encapsulation only through
  HPKE, so this module uses its private API (``Hybrid._construct``, ``HybridKey._encaps``,
  ``._decaps``, ``._pk``); setup.py pins the 4.4 series for that reason, and no other module
  may touch those names.
- ``liboqs`` (when its shared library is installed): ML-KEM-768 and ML-DSA-65 of liboqs,
  combined here with X25519 (pyca ``cryptography``) and the X-Wing SHA3-256 combiner.

Ed25519 comes from pyca ``cryptography`` in both. Every failure surfaces as ``CryptoError``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import platform
import secrets
from collections import OrderedDict
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Callable, Mapping, NamedTuple, Optional, Protocol

from ..errors import Invalid

from Crypto.Protocol import HPKE
from Crypto.PublicKey import MLDSA, MLKEM, Hybrid
from Crypto.PublicKey.Hybrid import HybridKey
from Crypto.Signature import eddsa, mldsa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from ..codec.fields import check_bytes

log = logging.getLogger(__name__)

# Component sizes (FIPS 203, FIPS 204, RFC 7748, RFC 8032)
MLKEM_EK_LEN = 1184
MLKEM_CT_LEN = 1088
MLKEM_SEED_LEN = 64  # d || z
MLDSA_PK_LEN = 1952
MLDSA_SIG_LEN = 3309
MLDSA_SEED_LEN = 32  # xi
X25519_LEN = 32
ED25519_PK_LEN = 32
ED25519_SIG_LEN = 64
ED25519_SEED_LEN = 32

# X-Wing
KEM_PUBLIC_LEN = MLKEM_EK_LEN + X25519_LEN  # 1216
KEM_CT_LEN = MLKEM_CT_LEN + X25519_LEN  # 1120
KEM_SEED_LEN = 32
KEM_SS_LEN = 32
XWING_LABEL = b"\\.//^\\"

# Hybrid signature: ML-DSA-65 || Ed25519, for keys and signatures alike
SIG_PUBLIC_LEN = MLDSA_PK_LEN + ED25519_PK_LEN  # 1984
SIG_LEN = MLDSA_SIG_LEN + ED25519_SIG_LEN  # 3373
SIG_SEED_LEN = MLDSA_SEED_LEN + ED25519_SEED_LEN  # 64

ALGORITHM = "X-Wing (ML-KEM-768+X25519) / ML-DSA-65+Ed25519"

# HPKE (RFC 9180) identifiers: the X-Wing KEM and the two AEADs we offer
HPKE_KEM_ID = 0x647A
AEAD_IDS: Mapping[str, int] = MappingProxyType({"chacha20poly1305": 0x0003, "aes256gcm": 0x0002})

BACKEND_NAMES = ("pycryptodome", "liboqs")

_OQS_KEM = "ML-KEM-768"
_OQS_SIG = "ML-DSA-65"


class CryptoError(Invalid):
    """Any failure of this module: wrong size, invalid key or point, failed authentication."""


class Backend(Protocol):
    """What the rest of ChatP2P needs from post-quantum crypto. All keys are raw bytes."""

    name: str

    def kem_generate(self) -> tuple[bytes, bytes]:
        """A new X-Wing key: (32-byte private seed, public key)."""
        ...

    def kem_public(self, seed: bytes) -> bytes:
        """The X-Wing public key of a private seed."""
        ...

    def kem_encaps(self, public: bytes) -> tuple[bytes, bytes]:
        """A fresh shared secret for ``public``: (32-byte secret, ciphertext)."""
        ...

    def kem_decaps(self, seed: bytes, ciphertext: bytes) -> bytes:
        """The shared secret in ``ciphertext``."""
        ...

    def kem_generate_ephemeral(self) -> tuple["EphemeralKem", bytes]:
        """A one-handshake X-Wing key: (private key held only by the caller, public key).
        Never cached: once the caller drops it, nothing in the process keeps it."""
        ...

    def kem_decaps_ephemeral(self, key: "EphemeralKem", ciphertext: bytes) -> bytes:
        """The shared secret in ``ciphertext`` for an ephemeral key."""
        ...

    def sig_generate(self) -> tuple[bytes, bytes]:
        """A new signature key: (ML-DSA seed || Ed25519 seed, ML-DSA pk || Ed25519 pk)."""
        ...

    def sig_public(self, private: bytes) -> bytes:
        """The public signature key of a private one."""
        ...

    def sign(self, private: bytes, message: bytes) -> bytes:
        """ML-DSA-65 signature (pure, empty context) || Ed25519 signature of ``message``."""
        ...

    def verify(self, public: bytes, message: bytes, signature: bytes) -> bool:
        """True only if both halves verify; False (never an exception) for anything else."""
        ...


# ---------------------------------------------------------------- small pure helpers


def xwing_expand(seed: bytes) -> tuple[bytes, bytes]:
    """X-Wing key derivation: (64-byte ML-KEM-768 seed d||z, 32-byte X25519 private key)."""
    expanded = hashlib.shake_256(check_bytes(seed, "KEM seed", CryptoError, KEM_SEED_LEN)).digest(MLKEM_SEED_LEN + X25519_LEN)
    return expanded[:MLKEM_SEED_LEN], expanded[MLKEM_SEED_LEN:]


def xwing_combine(ss_mlkem: bytes, ss_x25519: bytes, ct_x25519: bytes, pk_x25519: bytes) -> bytes:
    """The X-Wing combiner: SHA3-256(ss_M || ss_X || ct_X || pk_X || label)."""
    return hashlib.sha3_256(ss_mlkem + ss_x25519 + ct_x25519 + pk_x25519 + XWING_LABEL).digest()


def normalize_aead(aead: str) -> str:
    """Canonical AEAD name ('chacha20poly1305' or 'aes256gcm'); case, '-' and '_' are ignored."""
    if not isinstance(aead, str):
        raise CryptoError("AEAD name must be a string")
    name = aead.lower().replace("-", "").replace("_", "")
    if name not in AEAD_IDS:
        raise CryptoError(f"Unknown AEAD {aead!r}: expected one of {', '.join(AEAD_IDS)}")
    return name


def aead_name(aead_id: int) -> str:
    """The AEAD name of an HPKE AEAD identifier."""
    for name, value in AEAD_IDS.items():
        if value == aead_id:
            return name
    raise CryptoError(f"Unknown AEAD identifier {aead_id:#06x}")


class _KeyCache:
    """A few derived keys, by private seed, least recently used dropped first.

    Deriving a key costs more than using it (X-Wing: ~0.4 ms from the seed, ~0.27 ms to
    decapsulate), and a node uses the same one or two keys all the time."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._items: OrderedDict[bytes, Any] = OrderedDict()

    def get(self, seed: bytes, derive: Callable[[bytes], Any]) -> Any:
        item = self._items.get(seed)
        if item is None:
            item = derive(seed)
            self._items[seed] = item
            if len(self._items) > self._size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(seed)
        return item


# ---------------------------------------------------------------- pycryptodome X-Wing


def _xwing_private_key(seed: bytes) -> HybridKey:
    return Hybrid._construct(param_set=Hybrid.MLKEM768_X25519, seed=check_bytes(seed, "KEM seed", CryptoError, KEM_SEED_LEN))


def _xwing_public_key(public: Any) -> HybridKey:
    """Parse and check an X-Wing public key (ML-KEM modulus check, X25519 not of low order)."""
    data = check_bytes(public, "KEM public key", CryptoError, KEM_PUBLIC_LEN)
    try:
        MLKEM.construct(param_set=MLKEM.ML_KEM_768, ek=data[:MLKEM_EK_LEN])
    except ValueError:
        raise CryptoError("Invalid KEM public key: the ML-KEM key fails the modulus check") from None
    try:
        return Hybrid._construct(param_set=Hybrid.MLKEM768_X25519, pk=data)
    except ValueError:
        raise CryptoError("Invalid KEM public key: the X25519 key is of low order") from None


def xwing_public(seed: bytes) -> bytes:
    """The X-Wing public key of a 32-byte seed (reference derivation, pycryptodome)."""
    return _xwing_private_key(seed)._pk


def check_kem_public(public: Any) -> None:
    """Raise CryptoError unless ``public`` is a usable X-Wing public key."""
    _xwing_public_key(public)


def check_sig_public(public: Any) -> None:
    """Raise CryptoError unless ``public`` is a usable ML-DSA-65 || Ed25519 public key.

    Every ML-DSA public key of the right size decodes; the Ed25519 half must be a curve point
    (pyca accepts any 32 bytes and only fails at verification, so pycryptodome checks it)."""
    data = check_bytes(public, "signature public key", CryptoError, SIG_PUBLIC_LEN)
    try:
        eddsa.import_public_key(data[MLDSA_PK_LEN:])
    except ValueError:
        raise CryptoError("Invalid signature public key: the Ed25519 key is not a curve point") from None


# ---------------------------------------------------------------- hybrid signature keys


class _SigKeys(NamedTuple):
    mldsa: MLDSA.MLDSAKey
    ed25519: ed25519.Ed25519PrivateKey
    public: bytes


def _derive_sig_keys(private: bytes) -> _SigKeys:
    """Expand a 64-byte private signature key (ML-DSA seed || Ed25519 seed).

    liboqs-python has no ML-DSA keypair-from-seed, so both backends expand the ML-DSA seed
    with pycryptodome (FIPS 204 ML-DSA.KeyGen_internal) and liboqs signs with the expanded key."""
    ml = MLDSA.construct(param_set=MLDSA.ML_DSA_65, seed=private[:MLDSA_SEED_LEN])
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(private[MLDSA_SEED_LEN:])
    return _SigKeys(ml, ed, ml.pk + ed.public_key().public_bytes_raw())


def _ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def ed25519_sign(private: bytes, message: bytes) -> bytes:
    """The Ed25519 half alone of a hybrid signature key (``private`` = ML-DSA seed || Ed25519
    seed): a 64-byte signature where a hybrid one costs too much (group messages, §13.5)."""
    seed = check_bytes(private, "private signature key", CryptoError, SIG_SEED_LEN)[MLDSA_SEED_LEN:]
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed).sign(check_bytes(message, "message", CryptoError))


def ed25519_verify(public: Any, message: Any, signature: Any) -> bool:
    """Verify an `ed25519_sign` signature with a hybrid public key (its last 32 bytes are the
    Ed25519 key); False, never an exception, for anything that does not verify."""
    if not all(isinstance(x, (bytes, bytearray, memoryview)) for x in (public, message, signature)):
        return False
    if len(public) != SIG_PUBLIC_LEN or len(signature) != ED25519_SIG_LEN:
        return False
    return _ed25519_verify(bytes(public[MLDSA_PK_LEN:]), bytes(message), bytes(signature))


def _split_signed(public: Any, message: Any, signature: Any) -> Optional[tuple[bytes, bytes, bytes]]:
    """Inputs of verify() as bytes, or None if their types or sizes are wrong."""
    if not all(isinstance(x, (bytes, bytearray, memoryview)) for x in (public, message, signature)):
        return None
    if len(public) != SIG_PUBLIC_LEN or len(signature) != SIG_LEN:
        return None
    return bytes(public), bytes(message), bytes(signature)


class _XWingBackend:
    """What both backends share: X-Wing through an ``XWingKem`` and the hybrid signature keys'
    cache; they differ in their ML-KEM and in how they sign and verify."""

    name = ""

    def __init__(self, kem: "XWingKem") -> None:
        self._kem = kem
        self._sig_keys = _KeyCache()

    def _sig_key(self, private: Any) -> _SigKeys:
        return self._sig_keys.get(check_bytes(private, "private signature key", CryptoError, SIG_SEED_LEN), _derive_sig_keys)

    def kem_generate(self) -> tuple[bytes, bytes]:
        seed = secrets.token_bytes(KEM_SEED_LEN)
        return seed, self.kem_public(seed)

    def kem_generate_ephemeral(self) -> tuple["EphemeralKem", bytes]:
        try:
            key = self._kem.derive(secrets.token_bytes(KEM_SEED_LEN))
        except (RuntimeError, ValueError) as exc:
            raise _as_crypto_error(exc, "KEM key generation failed") from None
        return key, key.public

    def kem_decaps_ephemeral(self, key: "EphemeralKem", ciphertext: bytes) -> bytes:
        try:
            return self._kem.decaps_with(key, ciphertext)
        except (RuntimeError, ValueError) as exc:
            raise _as_crypto_error(exc, "KEM decapsulation failed") from None

    def kem_public(self, seed: bytes) -> bytes:
        try:
            return self._kem.public(seed)
        except (RuntimeError, ValueError) as exc:
            raise _as_crypto_error(exc, "KEM key generation failed") from None

    def kem_encaps(self, public: bytes) -> tuple[bytes, bytes]:
        try:
            return self._kem.encaps(public)
        except (RuntimeError, ValueError) as exc:
            raise _as_crypto_error(exc, "KEM encapsulation failed") from None

    def kem_decaps(self, seed: bytes, ciphertext: bytes) -> bytes:
        try:
            return self._kem.decaps(seed, ciphertext)
        except (RuntimeError, ValueError) as exc:
            raise _as_crypto_error(exc, "KEM decapsulation failed") from None

    def sig_generate(self) -> tuple[bytes, bytes]:
        private = secrets.token_bytes(SIG_SEED_LEN)
        return private, self.sig_public(private)

    def sig_public(self, private: bytes) -> bytes:
        return self._sig_key(private).public


class PycryptodomeBackend(_XWingBackend):
    """The default backend: ML-KEM and ML-DSA from pycryptodome.

    X-Wing is assembled (``XWingKem``: pycryptodome's ML-KEM-768, pyca X25519, the SHA3-256
    combiner) rather than taken from ``Crypto.PublicKey.Hybrid``: byte-identical (the tests
    compare both and check the draft's vector) and measured 3-4x faster per encapsulation
    (bench/bench_crypto.py), which is most of a handshake's CPU."""

    name = "pycryptodome"

    def __init__(self) -> None:
        super().__init__(XWingKem(PycryptodomeMlKem()))

    def sign(self, private: bytes, message: bytes) -> bytes:
        keys = self._sig_key(private)
        msg = check_bytes(message, "message", CryptoError)
        return mldsa.new(keys.mldsa).sign(msg) + keys.ed25519.sign(msg)

    def verify(self, public: bytes, message: bytes, signature: bytes) -> bool:
        parts = _split_signed(public, message, signature)
        if parts is None:
            return False
        pk, msg, sig = parts
        try:
            key = MLDSA.construct(param_set=MLDSA.ML_DSA_65, pk=pk[:MLDSA_PK_LEN])
            mldsa.new(key).verify(msg, sig[:MLDSA_SIG_LEN])
        except (ValueError, TypeError):
            return False
        return _ed25519_verify(pk[MLDSA_PK_LEN:], msg, sig[MLDSA_SIG_LEN:])


# ---------------------------------------------------------------- X-Wing from any ML-KEM


class _MlKem(Protocol):
    """An ML-KEM-768 implementation, in FIPS 203 byte formats."""

    def keypair(self, seed: bytes) -> tuple[bytes, bytes]:
        """(encapsulation key, expanded decapsulation key) of a 64-byte seed d || z."""
        ...

    def encaps(self, ek: bytes, coins: Optional[bytes] = None) -> tuple[bytes, bytes]:
        """(shared secret, ciphertext); ``coins`` (32 bytes) only for known-answer tests."""
        ...

    def decaps(self, dk: bytes, ct: bytes) -> bytes: ...


class PycryptodomeMlKem:
    """ML-KEM-768 of pycryptodome behind ``_MlKem``: checks XWingKem against Hybrid in tests."""

    def keypair(self, seed: bytes) -> tuple[bytes, bytes]:
        key = MLKEM.construct(param_set=MLKEM.ML_KEM_768, seed=seed)
        return key.ek, key.expanded_dk

    def encaps(self, ek: bytes, coins: Optional[bytes] = None) -> tuple[bytes, bytes]:
        return MLKEM.construct(param_set=MLKEM.ML_KEM_768, ek=ek)._encaps(coins)

    def decaps(self, dk: bytes, ct: bytes) -> bytes:
        return MLKEM.construct(param_set=MLKEM.ML_KEM_768, expanded_dk=dk)._decaps(ct)


class _XWingPrivate(NamedTuple):
    """A derived X-Wing private key (an ephemeral one is held only by its handshake)."""

    dk: bytes
    x25519: x25519.X25519PrivateKey
    pk_x25519: bytes
    public: bytes


EphemeralKem = _XWingPrivate


class XWingKem:
    """X-Wing assembled from an ML-KEM-768 implementation, pyca X25519 and the SHA3-256
    combiner; byte-identical to ``Crypto.PublicKey.Hybrid`` (the tests check it, and the
    draft's test vector)."""

    def __init__(self, mlkem: _MlKem) -> None:
        self._mlkem = mlkem
        self._keys = _KeyCache()

    def derive(self, seed: bytes) -> _XWingPrivate:
        """The private key of a seed, not cached (ephemeral keys must not outlive their use)."""
        seed_mlkem, sk_x = xwing_expand(seed)
        ek, dk = self._mlkem.keypair(seed_mlkem)
        key_x = x25519.X25519PrivateKey.from_private_bytes(sk_x)
        pk_x = key_x.public_key().public_bytes_raw()
        return _XWingPrivate(dk, key_x, pk_x, ek + pk_x)

    def _private(self, seed: Any) -> _XWingPrivate:
        return self._keys.get(check_bytes(seed, "KEM seed", CryptoError, KEM_SEED_LEN), self.derive)

    def public(self, seed: bytes) -> bytes:
        return self._private(seed).public

    def encaps(self, public: bytes, randomness: Optional[bytes] = None) -> tuple[bytes, bytes]:
        """(shared secret, ciphertext); ``randomness`` (64 bytes) only for known-answer tests."""
        pk = check_bytes(public, "KEM public key", CryptoError, KEM_PUBLIC_LEN)
        ek, pk_x = pk[:MLKEM_EK_LEN], pk[MLKEM_EK_LEN:]
        # FIPS 203 modulus check on the encapsulation key, whatever the ML-KEM implementation
        try:
            MLKEM.construct(param_set=MLKEM.ML_KEM_768, ek=ek)
        except ValueError:
            raise CryptoError("Invalid KEM public key: the ML-KEM key fails the modulus check") from None
        if randomness is None:
            coins, eph = None, x25519.X25519PrivateKey.generate()
        else:
            rnd = check_bytes(randomness, "encapsulation randomness", CryptoError, 64)
            coins, eph = rnd[:32], x25519.X25519PrivateKey.from_private_bytes(rnd[32:])
        ct_x = eph.public_key().public_bytes_raw()
        try:
            ss_x = eph.exchange(x25519.X25519PublicKey.from_public_bytes(pk_x))
        except ValueError:
            raise CryptoError("Invalid KEM public key: the X25519 key is of low order") from None
        ss_m, ct_m = self._mlkem.encaps(ek, coins)
        return xwing_combine(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x

    def decaps(self, seed: bytes, ciphertext: bytes) -> bytes:
        return self.decaps_with(self._private(seed), ciphertext)

    def decaps_with(self, key: _XWingPrivate, ciphertext: bytes) -> bytes:
        ct = check_bytes(ciphertext, "KEM ciphertext", CryptoError, KEM_CT_LEN)
        ct_m, ct_x = ct[:MLKEM_CT_LEN], ct[MLKEM_CT_LEN:]
        try:
            ss_x = key.x25519.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
        except ValueError:
            raise CryptoError("Invalid KEM ciphertext: the X25519 point is rejected") from None
        ss_m = self._mlkem.decaps(key.dk, ct_m)
        return xwing_combine(ss_m, ss_x, ct_x, key.pk_x25519)


# ---------------------------------------------------------------- liboqs


class _OqsMlKem:
    """ML-KEM-768 of liboqs (liboqs-python), in the FIPS 203 formats pycryptodome uses too."""

    def __init__(self, oqs: ModuleType) -> None:
        self._oqs = oqs

    def keypair(self, seed: bytes) -> tuple[bytes, bytes]:
        with self._oqs.KeyEncapsulation(_OQS_KEM) as kem:
            if kem.length_keypair_seed == MLKEM_SEED_LEN:
                ek = kem.generate_keypair_seed(seed)
                return ek, kem.export_secret_key()  # before __exit__ wipes it
        # liboqs older than keypair_derand: same keys, from pycryptodome
        return PycryptodomeMlKem().keypair(seed)

    def encaps(self, ek: bytes, coins: Optional[bytes] = None) -> tuple[bytes, bytes]:
        if coins is not None:
            raise CryptoError("liboqs-python offers no derandomized ML-KEM encapsulation")
        with self._oqs.KeyEncapsulation(_OQS_KEM) as kem:
            ct, ss = kem.encap_secret(ek)
        return ss, ct

    def decaps(self, dk: bytes, ct: bytes) -> bytes:
        with self._oqs.KeyEncapsulation(_OQS_KEM, secret_key=dk) as kem:
            return kem.decap_secret(ct)


class LiboqsBackend(_XWingBackend):
    """ML-KEM-768 and ML-DSA-65 of liboqs, X25519/Ed25519 of pyca: same bytes as pycryptodome."""

    name = "liboqs"

    def __init__(self, oqs: ModuleType) -> None:
        super().__init__(XWingKem(_OqsMlKem(oqs)))
        self._oqs = oqs

    def sign(self, private: bytes, message: bytes) -> bytes:
        keys = self._sig_key(private)
        msg = check_bytes(message, "message", CryptoError)
        try:
            # OQS_SIG_sign of ML-DSA is pure ML-DSA with an empty context (liboqs >= 0.12)
            with self._oqs.Signature(_OQS_SIG, secret_key=keys.mldsa.sk) as signer:
                sig_ml = signer.sign(msg)
        except RuntimeError as exc:
            raise CryptoError(f"ML-DSA signing failed: {exc}") from None
        return sig_ml + keys.ed25519.sign(msg)

    def verify(self, public: bytes, message: bytes, signature: bytes) -> bool:
        parts = _split_signed(public, message, signature)
        if parts is None:
            return False
        pk, msg, sig = parts
        try:
            with self._oqs.Signature(_OQS_SIG) as verifier:
                ok = verifier.verify(msg, sig[:MLDSA_SIG_LEN], pk[:MLDSA_PK_LEN])
        except Exception:  # verify() must answer False, whatever liboqs-python raises
            return False
        return bool(ok) and _ed25519_verify(pk[MLDSA_PK_LEN:], msg, sig[MLDSA_SIG_LEN:])


def _as_crypto_error(exc: Exception, what: str) -> CryptoError:
    return exc if isinstance(exc, CryptoError) else CryptoError(f"{what}: {exc}")


def find_liboqs(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Path of a loadable liboqs shared library, or None.

    Must be asked before ``import oqs``: that import, when it finds no library, counts down
    5 s, tries to git-clone and build liboqs, and raises SystemExit. The places are those
    liboqs-python searches: the system's library path, then $OQS_INSTALL_PATH/lib and lib64
    (~/_oqs without the variable)."""
    env = os.environ if environ is None else environ
    candidates: list[str] = []
    found = ctypes.util.find_library("oqs")
    if found:
        candidates.append(found)
    base = Path(env["OQS_INSTALL_PATH"]) if env.get("OQS_INSTALL_PATH") else Path.home() / "_oqs"
    name = "liboqs.dylib" if platform.system() == "Darwin" else "liboqs.so"
    candidates += [str(base / sub / name) for sub in ("lib", "lib64") if (base / sub / name).is_file()]
    for path in candidates:
        try:
            ctypes.CDLL(path)
        except OSError:
            continue
        return path
    return None


def _load_oqs() -> Optional[ModuleType]:
    """The ``oqs`` module if liboqs is installed and offers ML-KEM-768 and ML-DSA-65, else None."""
    if find_liboqs() is None:
        return None
    try:
        import oqs  # noqa: PLC0415 - only once the library is known to be there
    except (Exception, SystemExit) as exc:  # SystemExit: liboqs-python's auto-installer gave up
        log.warning("liboqs found but liboqs-python failed to load it: %r", exc)
        return None
    try:
        if not (oqs.is_kem_enabled(_OQS_KEM) and oqs.is_sig_enabled(_OQS_SIG)):
            log.warning("liboqs lacks %s or %s: not used", _OQS_KEM, _OQS_SIG)
            return None
    except Exception as exc:
        log.warning("liboqs unusable: %r", exc)
        return None
    return oqs


def available_backends() -> list[str]:
    """Names of the backends usable on this machine (pycryptodome always is)."""
    return ["pycryptodome"] + (["liboqs"] if _load_oqs() is not None else [])


def select_backend(preference: str = "auto") -> Backend:
    """A new backend: 'pycryptodome', 'liboqs', or 'auto' (liboqs when its library is found).

    Keep the returned object: it caches derived keys."""
    choice = str(preference).strip().lower()
    if choice == "pycryptodome":
        return PycryptodomeBackend()
    if choice in ("liboqs", "auto"):
        oqs = _load_oqs()
        if oqs is not None:
            return LiboqsBackend(oqs)
        if choice == "auto":
            return PycryptodomeBackend()
        raise CryptoError(
            "The liboqs backend was requested, but the liboqs shared library was not found "
            "(install liboqs, or set OQS_INSTALL_PATH to its install prefix)"
        )
    raise CryptoError(f"Unknown crypto backend {preference!r}: expected auto, pycryptodome or liboqs")


# ---------------------------------------------------------------- HPKE (RFC 9180)


def hpke_seal(public: bytes, plaintext: bytes, info: bytes, aead: str = "chacha20poly1305") -> tuple[bytes, bytes]:
    """HPKE base mode, X-Wing KEM (0x647A), HKDF-SHA256: (enc, ciphertext) for ``public``."""
    aead_id = AEAD_IDS[normalize_aead(aead)]
    key = _xwing_public_key(public)
    context = HPKE.new(
        receiver_key=key, aead_id=HPKE.AEAD(aead_id), info=check_bytes(info, "HPKE info", CryptoError)
    )
    return context.enc, context.seal(check_bytes(plaintext, "plaintext", CryptoError))


def hpke_open(seed: bytes, enc: bytes, ciphertext: bytes, info: bytes, aead: str = "chacha20poly1305") -> bytes:
    """Open what hpke_seal made for the public key of ``seed``; CryptoError if anything is off."""
    aead_id = AEAD_IDS[normalize_aead(aead)]
    key = _xwing_private_key(seed)
    enc_b = check_bytes(enc, "HPKE encapsulated key", CryptoError, KEM_CT_LEN)
    ct = check_bytes(ciphertext, "ciphertext", CryptoError)
    info_b = check_bytes(info, "HPKE info", CryptoError)
    try:
        context = HPKE.new(receiver_key=key, aead_id=HPKE.AEAD(aead_id), enc=enc_b, info=info_b)
        return context.unseal(ct)
    except ValueError:
        raise CryptoError("Decryption failed: wrong key or tampered data") from None
