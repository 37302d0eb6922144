#!/usr/bin/env python3
"""CPU cost of one ChatP2P handshake, per side (target: under 10 ms each).

Runs complete in-memory handshakes (real keys, no network) and times, with the process CPU
clock, every call each side makes: the initiator's start/receive, the listener's receive and
the responder's accept. Prints the median and the worst over the rounds.

    python bench/bench_handshake.py [-n ROUNDS] [--backend auto|pycryptodome|liboqs]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, TypeVar

from chatp2p_core.crypto import pqc
from chatp2p_core.crypto.handshake import Authenticated, Established, Initiator, Listener
from chatp2p_core.crypto.identity import Identity

T = TypeVar("T")
ADDRESS = ("198.51.100.7", 40000)


def _timed(clock: list[float], call: Callable[[], T]) -> T:
    start = time.process_time()
    try:
        return call()
    finally:
        clock[0] += time.process_time() - start


def one_handshake(initiator: Initiator, listener: Listener, now: float) -> tuple[float, float]:
    """(initiator CPU seconds, responder CPU seconds) of one complete handshake."""
    cpu_i, cpu_r = [0.0], [0.0]
    to_responder = _timed(cpu_i, lambda: initiator.start(now))
    established = 0
    while to_responder:
        to_initiator: list[bytes] = []
        for data in to_responder:
            out = _timed(cpu_r, lambda: listener.receive(data, ADDRESS, now))
            to_initiator += out.send
            if isinstance(out.event, Authenticated):
                accepted = _timed(cpu_r, lambda: out.event.responder.accept(now))
                to_initiator += accepted.send
                established += 1
        to_responder = []
        for data in to_initiator:
            out = _timed(cpu_i, lambda: initiator.receive(data, now))
            to_responder += out.send
            if isinstance(out.event, Established):
                established += 1
    if established != 2:
        raise RuntimeError("handshake did not complete")
    return cpu_i[0], cpu_r[0]


def measure(rounds: int = 20, backend_name: str = "auto") -> dict[str, float]:
    """Median and worst CPU milliseconds per side over ``rounds`` handshakes (after one warm-up)."""
    backend = pqc.select_backend(backend_name)
    alice, bob = Identity.generate(backend), Identity.generate(backend)
    listener = Listener(bob, backend)
    one_handshake(Initiator(alice, backend), listener, 0.0)  # warm-up: imports, key caches
    samples_i, samples_r = [], []
    for index in range(rounds):
        now = 1000.0 * (index + 1)  # past the listener's handshake_timeout: no per-address limit
        cpu_i, cpu_r = one_handshake(Initiator(alice, backend, expected_fingerprint=bob.fingerprint), listener, now)
        samples_i.append(cpu_i * 1000)
        samples_r.append(cpu_r * 1000)
    return {
        "initiator_median_ms": statistics.median(samples_i),
        "initiator_max_ms": max(samples_i),
        "responder_median_ms": statistics.median(samples_r),
        "responder_max_ms": max(samples_r),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=50)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: does the bench still run?")
    args = parser.parse_args()
    if args.smoke:
        args.rounds = 3
    result = measure(args.rounds, args.backend)
    name = pqc.select_backend(args.backend).name
    print(f"backend {name}, {args.rounds} handshakes, CPU per side:")
    print(f"  initiator: median {result['initiator_median_ms']:.2f} ms, max {result['initiator_max_ms']:.2f} ms")
    print(f"  responder: median {result['responder_median_ms']:.2f} ms, max {result['responder_max_ms']:.2f} ms")


if __name__ == "__main__":
    main()
