#!/usr/bin/env python3
"""Operations per second of the post-quantum primitives, per available backend.

Run by hand (not a test): ``python bench/bench_crypto.py [--seconds 0.5]``. One core, keys
already derived (backends cache them), as a node uses them.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

from chatp2p_core.crypto import pqc


def rate(op: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``op``, measured for about ``seconds``."""
    op()  # warm up (and fill key caches)
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(10):
            op()
        count += 10
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def bench_backend(backend: pqc.Backend, seconds: float) -> dict[str, float]:
    seed, public = backend.kem_generate()
    _, ct = backend.kem_encaps(public)
    private, sig_public = backend.sig_generate()
    message = b"m" * 256  # about a handshake transcript
    signature = backend.sign(private, message)
    return {
        "kem keygen": rate(backend.kem_generate, seconds),
        "kem encaps": rate(lambda: backend.kem_encaps(public), seconds),
        "kem decaps": rate(lambda: backend.kem_decaps(seed, ct), seconds),
        "sig keygen": rate(backend.sig_generate, seconds),
        "sign": rate(lambda: backend.sign(private, message), seconds),
        "verify": rate(lambda: backend.verify(sig_public, message, signature), seconds),
    }


def bench_extra(seconds: float) -> dict[str, float]:
    """Not backends: HPKE (crypto encrypt/decrypt), and X-Wing built from pycryptodome's
    ML-KEM with pyca X25519 (how the liboqs backend assembles X-Wing), for comparison."""
    seed, public = pqc.PycryptodomeBackend().kem_generate()
    enc, ct = pqc.hpke_seal(public, b"x" * 100, b"info")
    kem = pqc.XWingKem(pqc.PycryptodomeMlKem())
    _, kct = kem.encaps(public)
    return {
        "hpke seal 100 B": rate(lambda: pqc.hpke_seal(public, b"x" * 100, b"info"), seconds),
        "hpke open 100 B": rate(lambda: pqc.hpke_open(seed, enc, ct, b"info"), seconds),
        "x-wing (pycryptodome ML-KEM + pyca X25519) encaps": rate(lambda: kem.encaps(public), seconds),
        "x-wing (pycryptodome ML-KEM + pyca X25519) decaps": rate(lambda: kem.decaps(seed, kct), seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: does the bench still run?")
    args = parser.parse_args()
    if args.smoke:
        args.seconds = 0.01
    names = pqc.available_backends()
    print(f"available backends: {', '.join(names)}")
    if "liboqs" not in names:
        print("(liboqs: shared library not found; set OQS_INSTALL_PATH to measure it)")
    for name in names:
        print(f"\n{name}")
        for op, per_s in bench_backend(pqc.select_backend(name), args.seconds).items():
            print(f"  {op:<52} {per_s:>10,.0f} /s  {1e6 / per_s:>8.1f} us")
    print("\nother")
    for op, per_s in bench_extra(args.seconds).items():
        print(f"  {op:<52} {per_s:>10,.0f} /s  {1e6 / per_s:>8.1f} us")


if __name__ == "__main__":
    main()
