"""Requests per second of the control API, against a minimal gevent JSON echo server.

Run by hand: `/tmp/venv/bin/python bench/bench_api.py [--duration 3] [--request JSON]`.
It starts a real chatp2pd (temporary data dir, free ports) and, for comparison, the smallest
gevent server that speaks the same framing (read newline-delimited JSON, json.loads, answer
{"success","data","timestamp"} + "\\n"). Each case drives one server from a load generator in
its own process (plain sockets + selectors), so the client does not share the server's
core (with --pin: pinned to different CPUs). Cases: one connection pipelined (64 in
flight), one connection ping-pong (1 in flight), 50 connections ping-pong. The target is
daemon >= 70% of echo. CPU columns tell who was the bottleneck: a server near 100% is
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
def run_echo_server(pad: int = 0) -> int:
    """Serve until killed; prints the port on stdout once listening. `pad` adds that many
    characters to every answer, so both servers serialise and send answers of one size and
    the ratio shows the dispatcher's own cost."""
    from gevent.server import StreamServer

    from chatp2p_core.util import iso_utc

    def handle(sock: socket.socket, address: tuple) -> None:
        pending = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return
            *lines, pending = (pending + data).split(b"\n")
            replies = [json.dumps({"success": True, "data": {"request": json.loads(line), "pad": "x" * pad},
                                   "timestamp": iso_utc(time.time())},
                                  separators=(",", ":")).encode() + b"\n"
                       for line in lines if line.strip()]
            if replies:
                sock.sendall(b"".join(replies))

    server = StreamServer(("127.0.0.1", 0), handle, backlog=1024)
    server.start()
    print(server.address[1], flush=True)
    server.serve_forever()
    return 0


# -- the load generator (its own process) ----------------------------------------------------------
def run_load(port: int, connections: int, depth: int, duration: float, request: bytes) -> dict:
    """Keep `depth` requests in flight on each connection; count answers during `duration`."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(connections)]
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        selector.register(sock, selectors.EVENT_READ)
        sock.sendall(request * depth)
    answered = received_bytes = 0
    warm_until = time.perf_counter() + WARMUP_S
    phase = "warm-up"   # then "measure", then "drain" (no new requests; wait for the answers)
    outstanding = connections * depth
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
            received_bytes += len(data)
            if phase == "drain":
                outstanding -= count
            else:
                key.fileobj.sendall(request * count)
        now = time.perf_counter()
        if phase == "warm-up" and now >= warm_until:
            phase, measure_from, measure_until = "measure", now, now + duration
            start = (answered, received_bytes, time.process_time())
        elif phase == "measure" and now >= measure_until:
            phase = "drain"
            result = {"requests": answered - start[0], "seconds": now - measure_from,
                      "bytes": received_bytes - start[1], "cpu": time.process_time() - start[2]}
    for sock in socks:
        sock.close()
    return result


def measure(port: int, connections: int, depth: int, duration: float, request: bytes,
            server_pid: int, load_cpus: set[int] | None) -> dict:
    """Run one case in a fresh load process; adds the server's CPU use to the result."""
    command = [sys.executable, __file__, "--role", "load", "--port", str(port), "--connections", str(connections),
               "--depth", str(depth), "--duration", str(duration), "--request", request.decode()]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    if load_cpus:
        os.sched_setaffinity(proc.pid, load_cpus)
    cpu_before = process_cpu(server_pid)
    started = time.perf_counter()
    out, _ = proc.communicate(timeout=duration + 120)
    server_cpu = process_cpu(server_pid) - cpu_before
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    result = json.loads(out)
    # The server also worked during warm-up and drain: spread its CPU over the whole run.
    result["server_cpu_share"] = server_cpu / (time.perf_counter() - started)
    return result


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
def run_bench(duration: float, request: bytes, pin: bool, same_size: bool) -> int:
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
        echo = subprocess.Popen([sys.executable, __file__, "--role", "echo", "--pad", str(pad)],
                                stdout=subprocess.PIPE, text=True, env=Daemon.environment(tmp))
        echo_port = int(echo.stdout.readline())
        servers = {"daemon": (daemon.port, daemon.proc.pid), "echo": (echo_port, echo.pid)}
        if server_cpus:
            for _, pid in servers.values():
                os.sched_setaffinity(pid, server_cpus)
        sizes = {name: check_answer(port, request) for name, (port, _) in servers.items()}
        print(f"request: {request.decode().strip()}")
        print(f"answer size: daemon {sizes['daemon']} B, echo {sizes['echo']} B; {duration:g} s per case; "
              f"servers on CPU {server_cpus or 'any'}, load on CPU {load_cpus or 'any'}")
        print()
        header = (f"{'case':<24}{'daemon req/s':>14}{'echo req/s':>12}{'ratio':>8}"
                  f"{'daemon cpu':>12}{'echo cpu':>10}{'client cpu':>12}  ")
        print(header)
        print("-" * len(header))
        worst = None
        for label, connections, depth in CASES:
            results = {name: measure(port, connections, depth, duration, request, pid, load_cpus)
                       for name, (port, pid) in servers.items()}
            rates = {name: r["requests"] / r["seconds"] for name, r in results.items()}
            ratio = rates["daemon"] / rates["echo"]
            worst = ratio if worst is None else min(worst, ratio)
            client_cpu = max(r["cpu"] / r["seconds"] for r in results.values())
            print(f"{label:<24}{rates['daemon']:>14,.0f}{rates['echo']:>12,.0f}{ratio:>8.0%}"
                  f"{results['daemon']['server_cpu_share']:>12.0%}{results['echo']['server_cpu_share']:>10.0%}"
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
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per case (default 3)")
    parser.add_argument("--request", default='{"command":"status"}',
                        help="the request to send (default: the status command)")
    parser.add_argument("--pin", action="store_true",
                        help="pin the servers to the first CPU and the load generator to the others "
                             "(steadier throughput figures; on VMs it slows ping-pong, whose every "
                             "round trip then needs a cross-CPU wake-up)")
    parser.add_argument("--small-echo", action="store_true",
                        help="let the echo server answer tiny objects instead of answers as large as the daemon's")
    parser.add_argument("--pad", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=("bench", "echo", "load"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    request = json.dumps(json.loads(args.request), separators=(",", ":")).encode() + b"\n"
    if args.role == "echo":
        return run_echo_server(args.pad)
    if args.role == "load":
        print(json.dumps(run_load(args.port, args.connections, args.depth, args.duration, request)))
        return 0
    return run_bench(args.duration, request, args.pin, not args.small_echo)


if __name__ == "__main__":
    sys.exit(main())
