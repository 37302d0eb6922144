"""Requests per second of the control API, against a minimal gevent JSON echo server.

Run by hand: `/tmp/venv/bin/python bench/bench_api.py [--duration 5] [--request JSON]`.
It starts a real chatp2pd (temporary data dir, free ports) and, for comparison, the smallest
gevent server that speaks the same framing: read newline-delimited JSON, json.loads, answer
{"success","data","timestamp"} + "\\n" padded to the daemon's answer size, encoded with the
daemon's own JSON settings, TCP_NODELAY set as the daemon sets it. Each case drives the
servers from a load generator in its own process (plain sockets + selectors), so the client
does not share the servers' core (with --pin: pinned to different CPUs). Cases: one
connection pipelined (64 in flight), one connection ping-pong (1 in flight), 50 connections
ping-pong. One load process per case alternates between the two servers in short slices (a
shared VM's speed drifts by tens of percent within seconds; both servers see the same drift)
and compares the totals; "slices IQR" is the spread of the ratio over successive slice
pairs. The target is daemon >= 70% of echo. CPU columns tell who was the bottleneck: a server near 100% is
saturated; a client near 100% means the figure is a lower bound of the server's capacity.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
WARMUP_S = 0.5
CASES = (("1 conn, pipelined x64", 1, 64), ("1 conn, ping-pong", 1, 1), ("50 conns, ping-pong", 50, 1))
TARGET = 0.70


# -- the echo server (its own process) -----------------------------------------------------------
def run_echo_server(pad: int = 0, nodelay: bool = True) -> int:
    """Serve until killed; prints the port on stdout once listening. `pad` adds that many
    characters to every answer, so both servers serialise and send answers of one size and
    the ratio shows the dispatcher's own cost. `nodelay`: TCP_NODELAY, as the daemon sets it
    (it must: the tail segment of an answer larger than one segment would otherwise wait for
    the client's delayed ACK, 40 ms), so both servers push their bytes the same way."""
    from gevent.server import StreamServer

    from chatp2p_core.util import encode_json, iso_utc  # the daemon's JSON settings

    def handle(sock: socket.socket, address: tuple) -> None:
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return
            *lines, pending = (pending + data).split(b"\n")
            replies = [encode_json({"success": True, "data": {"request": json.loads(line), "pad": "x" * pad},
                                    "timestamp": iso_utc(time.time())}) + b"\n"
                       for line in lines if line.strip()]
            if replies:
                sock.sendall(b"".join(replies))

    server = StreamServer(("127.0.0.1", 0), handle, backlog=1024)
    server.start()
    print(server.address[1], flush=True)
    server.serve_forever()
    return 0


# -- the load generator (its own process) ----------------------------------------------------------
def run_load(targets: list[tuple[int, int]], connections: int, depth: int, duration: float,
             request: bytes, slice_s: float) -> list[dict]:
    """Drive the servers `targets` ([(port, pid)]) in turn, `slice_s` seconds each, until each
    has had `duration` seconds: `depth` requests in flight on each of its `connections`.

    A shared VM's speed drifts by tens of percent within seconds; slices this short give both
    servers the same drift. A slice ends by draining what is in flight (its time counted), so
    no answer of one server arrives during the other's slice. Returns, per target: answers,
    seconds, its CPU seconds (from /proc) and this process's CPU seconds during its slices."""
    conns = [[socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(connections)]
             for port, _ in targets]
    selectors_ = []
    for socks in conns:
        selector = selectors.DefaultSelector()
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            selector.register(sock, selectors.EVENT_READ)
        selectors_.append(selector)
    totals = [{"requests": 0, "seconds": 0.0, "server_cpu": 0.0, "cpu": 0.0, "slices": []} for _ in targets]
    for index in range(len(targets)):  # warm-up, not counted
        _run_slice(conns[index], selectors_[index], depth, WARMUP_S, request)
    while min(t["seconds"] for t in totals) < duration:
        for index, (_, pid) in enumerate(targets):
            server_before, client_before = process_cpu(pid), time.process_time()
            answered, seconds = _run_slice(conns[index], selectors_[index], depth, slice_s, request)
            total = totals[index]
            total["requests"] += answered
            total["seconds"] += seconds
            total["server_cpu"] += process_cpu(pid) - server_before
            total["cpu"] += time.process_time() - client_before
            total["slices"].append(answered / seconds)
    for socks in conns:
        for sock in socks:
            sock.close()
    return totals


def _run_slice(socks: list[socket.socket], selector: selectors.BaseSelector, depth: int,
               slice_s: float, request: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    stop_at = started + slice_s
    for sock in socks:
        sock.sendall(request * depth)
    outstanding = len(socks) * depth
    answered = 0
    sending = True
    while outstanding:
        events = selector.select(timeout=30)
        if not events:
            raise RuntimeError(f"no answer for 30 s with {outstanding} requests outstanding")
        for key, _ in events:
            data = key.fileobj.recv(1 << 20)
            if not data:
                raise RuntimeError("the server closed a connection")
            count = data.count(b"\n")  # JSON text never holds a raw newline: one per answer
            answered += count
            outstanding -= count
            if sending:
                key.fileobj.sendall(request * count)
                outstanding += count
        if sending and time.perf_counter() >= stop_at:
            sending = False  # drain: the next slice starts with nothing in flight
    return answered, time.perf_counter() - started


def measure(servers: dict[str, tuple[int, int]], connections: int, depth: int, duration: float,
            request: bytes, slice_s: float, load_cpus: set[int] | None) -> dict[str, dict]:
    """Run one case in a fresh load process that alternates between the servers."""
    names = list(servers)
    targets = ",".join(f"{servers[n][0]}:{servers[n][1]}" for n in names)
    command = [sys.executable, __file__, "--role", "load", "--targets", targets,
               "--connections", str(connections), "--depth", str(depth), "--duration", str(duration),
               "--slice", str(slice_s), "--request", request.decode()]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    if load_cpus:
        os.sched_setaffinity(proc.pid, load_cpus)
    out, _ = proc.communicate(timeout=2 * duration * len(names) + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    return dict(zip(names, json.loads(out)))


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_answer(port: int, request: bytes) -> int:
    """One request, to be sure the server answers it; returns the size of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        reply = sock.makefile("rb").readline()
    parsed = json.loads(reply)
    if "success" not in parsed:
        raise RuntimeError(f"unexpected answer: {reply[:200]!r}")
    return len(reply)


# -- the driver --------------------------------------------------------------------------------
def run_bench(duration: float, request: bytes, pin: bool, same_size: bool, slice_s: float,
              echo_nagle: bool) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from daemon import Daemon  # the tests' helper: starts a real chatp2pd on a temp dir

    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[0]} if pin and len(cpus) >= 2 else None
    load_cpus = set(cpus[1:]) if pin and len(cpus) >= 2 else None
    tmp = tempfile.mkdtemp(prefix="chatp2p-bench-")
    daemon = Daemon(pathlib.Path(tmp, "daemon"), "--log-level", "warning")
    echo = None
    try:
        daemon.start()
        pad = max(0, check_answer(daemon.port, request) - 120) if same_size else 0
        echo = subprocess.Popen([sys.executable, __file__, "--role", "echo", "--pad", str(pad)]
                                + (["--echo-nagle"] if echo_nagle else []),
                                stdout=subprocess.PIPE, text=True, env=Daemon.environment(tmp))
        echo_port = int(echo.stdout.readline())
        servers = {"daemon": (daemon.port, daemon.proc.pid), "echo": (echo_port, echo.pid)}
        if server_cpus:
            for _, pid in servers.values():
                os.sched_setaffinity(pid, server_cpus)
        sizes = {name: check_answer(port, request) for name, (port, _) in servers.items()}
        print(f"request: {request.decode().strip()}")
        print(f"answer size: daemon {sizes['daemon']} B, echo {sizes['echo']} B; {duration:g} s per case and server "
              f"in alternating {slice_s:g} s slices; "
              f"servers on CPU {server_cpus or 'any'}, load on CPU {load_cpus or 'any'}")
        print()
        header = (f"{'case':<24}{'daemon req/s':>14}{'echo req/s':>12}{'ratio':>8}{'slices IQR':>12}"
                  f"{'daemon cpu':>11}{'echo cpu':>10}{'client cpu':>12}  ")
        print(header)
        print("-" * len(header))
        worst = None
        for label, connections, depth in CASES:
            results = measure(servers, connections, depth, duration, request, slice_s, load_cpus)
            rates = {name: r["requests"] / r["seconds"] for name, r in results.items()}
            ratio = rates["daemon"] / rates["echo"]
            pairs = sorted(d / e for d, e in zip(results["daemon"]["slices"], results["echo"]["slices"]))
            quartiles = pairs[len(pairs) // 4], pairs[(3 * len(pairs)) // 4]
            worst = ratio if worst is None else min(worst, ratio)
            cpu = {name: r["server_cpu"] / r["seconds"] for name, r in results.items()}
            client_cpu = max(r["cpu"] / r["seconds"] for r in results.values())
            print(f"{label:<24}{rates['daemon']:>14,.0f}{rates['echo']:>12,.0f}{ratio:>8.0%}"
                  f"{quartiles[0]:>7.0%}-{quartiles[1]:<4.0%}{cpu['daemon']:>11.0%}{cpu['echo']:>10.0%}"
                  f"{client_cpu:>12.0%}  {'ok' if ratio >= TARGET else 'BELOW TARGET'}", flush=True)
        print()
        print(f"worst ratio daemon/echo: {worst:.0%} (target {TARGET:.0%})")
        return 0
    finally:
        if echo is not None:
            echo.kill()
            echo.wait()
        if daemon.proc is not None:
            daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds measured per case and server (default 5)")
    parser.add_argument("--slice", type=float, default=0.2,
                        help="seconds each server is driven before the other's turn (default 0.2)")
    parser.add_argument("--request", default='{"command":"status"}',
                        help="the request to send (default: the status command)")
    parser.add_argument("--pin", action="store_true",
                        help="pin the servers to the first CPU and the load generator to the others "
                             "(steadier throughput figures; on VMs it slows ping-pong, whose every "
                             "round trip then needs a cross-CPU wake-up)")
    parser.add_argument("--small-echo", action="store_true",
                        help="let the echo server answer tiny objects instead of answers as large as the daemon's")
    parser.add_argument("--echo-nagle", action="store_true",
                        help="leave Nagle on in the echo server (the daemon sets TCP_NODELAY)")
    parser.add_argument("--pad", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=("bench", "echo", "load"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--targets", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="a few seconds: does the bench still run?")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.slice = 0.3, 0.1
    request = json.dumps(json.loads(args.request), separators=(",", ":")).encode() + b"\n"
    if args.role == "echo":
        return run_echo_server(args.pad, not args.echo_nagle)
    if args.role == "load":
        targets = [tuple(int(x) for x in t.split(":")) for t in args.targets.split(",")]
        print(json.dumps(run_load(targets, args.connections, args.depth, args.duration, request, args.slice)))
        return 0
    return run_bench(args.duration, request, args.pin, not args.small_echo, args.slice, args.echo_nagle)


if __name__ == "__main__":
    sys.exit(main())
