"""
How many senders and receivers a relay pairs per second: ours next to
magic-wormhole's transit relay, with the same load shape, in one run.

Each pair is two fresh TCP connections. Against our relay the sender sends
HELLO, gets WELCOME, sends REGISTER and gets CHANNEL; its receiver then
connects, sends HELLO, gets WELCOME, sends CLAIM and gets PAIRED, as the
sender does. Against the transit relay each side sends ``please relay TOKEN
for side SIDE`` and both get ``ok``. Then each side sends the other 8 bytes
naming its pair and direction, checks the 8 bytes it gets, and closes. A pair
counts once both its connections are closed, so the figure covers the
relay's whole cycle: accept, handshake, pairing, forwarding, teardown.

The clients run in a few worker processes (no interpreter start-up per
client), each keeping a bounded number of pairs in flight and starting a new
one as soon as one finishes.

    python bench/pairing.py [-n 5000] [--in-flight 200] [--workers 2] [-r 3]

Prints a Markdown table on stdout; progress goes to stderr. Exit status 0
when every pair on every relay paired and exchanged its bytes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import time
from typing import Any, Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    react_quietly,
    worker_or_main,
    BenchError,
    Harness,
    MiB,
    add_scratch_options,
    cpu_seconds,
    describe_tree,
    free_port,
    machine_line,
    make_file,
    markdown_table,
    memory_kib,
    need_open_files,
    prime_bytecode,
    raise_open_files_limit,
    random_pool,
    say,
    set_tree,
    start_relay,
    wait_exit,
)
from load import _Lines, cpu_busy_ticks, listen_overflows  # noqa: E402
from memory import Sampler  # noqa: E402

#: Seconds a worker may take to start, import and run its warm-up pairs.
READY_TIMEOUT = 120.0
READY = "ready"

#: Bytes each side sends the other once paired.
MESSAGE_BYTES = 8


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bench/pairing.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--pairs", type=int, default=5000, help="pairs per run (default 5000)")
    p.add_argument("--in-flight", type=int, default=200, help="pairs in flight at once, over all workers (default 200)")
    p.add_argument("--workers", type=int, default=2, help="client worker processes (default 2)")
    p.add_argument("-r", "--repeat", type=int, default=3, help="runs per relay, interleaved (default 3)")
    p.add_argument("--warmup", type=int, default=200, help="unmeasured pairs each worker runs first (default 200)")
    p.add_argument("--timeout", type=float, default=120.0, help="give up on a run after this many seconds (default 120)")
    p.add_argument("--peer-backlog", type=int, default=1024,
                   help="the transit relay's listen queue (default 1024, what our relay uses unless told; "
                        "50 is Twisted's default, which the transit relay gets unless told)")
    p.add_argument("--no-peer", action="store_true", help="measure our relay only (no transit relay, nothing installed)")
    add_scratch_options(p, urandom=False)
    return p


# -- the orchestrator ----------------------------------------------------------------


def _summary(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "-"
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))} – {fmt.format(max(values))})"


def _percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _measure(h: Harness, kind: str, port: int, pid: int, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """One run: start the workers, let them warm up, go, collect."""
    w = args.workers
    workers = []
    for k in range(w):
        share = args.pairs // w + (1 if k < args.pairs % w else 0)
        job = {
            "kind": kind, "port": port, "pairs": share, "worker": k,
            "in_flight": max(1, args.in_flight // w + (1 if k < args.in_flight % w else 0)),
            "warmup": args.warmup, "timeout": args.timeout,
        }
        job_path = h.path(f"job-{tag}-{k}.json")
        with open(job_path, "w") as f:
            json.dump(job, f)
        workers.append(h.spawn([sys.executable, os.path.abspath(__file__), "--worker", job_path],
                               f"worker-{tag}-{k}", stdout_pipe=True))
    lines = _Lines(workers)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            firsts = [lines.first_line(k) for k in range(w)]
            for k, first in enumerate(firsts):
                if (first is not None and first != READY) or (first is None and lines.eof[k]):
                    raise BenchError(f"{kind} worker {k} failed to get ready: {first}\n{h.log_tail(f'worker-{tag}-{k}')}")
            if all(f == READY for f in firsts):
                break
            if not lines.pump(deadline):
                raise BenchError(f"{kind} workers not ready after {READY_TIMEOUT:.0f} s")
        time.sleep(0.2)
        rss_before = memory_kib(pid)["VmRSS"]
        sampler = Sampler(pid, 0.05)
        sampler.phase = "run"
        overflows_before = listen_overflows()
        busy_before = cpu_busy_ticks()
        cpu_before = cpu_seconds(pid)
        sampler.start()
        t_go = time.monotonic()
        for p in workers:
            p.send_signal(signal.SIGUSR1)
        deadline = t_go + args.timeout + 30
        while not all(lines.eof) and lines.pump(deadline):
            pass
        cpu_after = cpu_seconds(pid)
        busy_after = cpu_busy_ticks()
        overflows_after = listen_overflows()
        sampler.stop()
        for k, p in enumerate(workers):
            try:
                wait_exit(p, 1 if not lines.eof[k] else 30)
            except BenchError:
                h.stop(p)
    finally:
        lines.close()

    ok: list[list[float]] = []
    errors: dict[str, int] = {}
    worker_cpu = 0.0
    for k in range(w):
        try:
            report = json.loads(lines.data[k].partition(b"\n")[2])
        except ValueError:
            errors[f"worker {k} sent no report"] = errors.get(f"worker {k} sent no report", 0) + 1
            say(h.log_tail(f"worker-{tag}-{k}"))
            continue
        worker_cpu += report["cpu"]
        ok += report["ok"]
        for why, count in report["errors"].items():
            errors[why] = errors.get(why, 0) + count
    for why, count in sorted(errors.items(), key=lambda kv: -kv[1]):
        say(f"[pairing] {tag}: {count} pair(s) failed: {why}")
    # Each ok pair is [start, both paired, both closed] (CLOCK_MONOTONIC,
    # shared by all processes).
    wall = (max(r[2] for r in ok) - min(r[0] for r in ok)) if ok else 0.0
    result = {
        "ok": len(ok),
        "failed": args.pairs - len(ok),
        "rate": len(ok) / wall if wall > 0 else 0.0,
        "wall": wall,
        "to_paired": [r[1] - r[0] for r in ok],
        "to_closed": [r[2] - r[0] for r in ok],
        "relay_cpu": cpu_after - cpu_before,
        "rss_before": rss_before,
        "rss_max": sampler.max_in("run"),
        "worker_cpu": worker_cpu,
        "busy": (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1),
        "overflows": None if overflows_before is None or overflows_after is None else overflows_after - overflows_before,
    }
    say(f"[pairing] {tag}: {len(ok)}/{args.pairs} pairs in {wall:.2f} s = {result['rate']:.0f} pairs/s; "
        f"relay CPU {result['relay_cpu']:.2f} s")
    return result


def _log_problems(h: Harness, log_name: str) -> str:
    with open(h.path(f"{log_name}.log"), "rb") as f:
        text = f.read().decode("utf-8", "replace")
    tracebacks = len(re.findall(r"Traceback \(most recent call last\)", text))
    unhandled = len(re.findall(r"Unhandled", text))
    if tracebacks or unhandled:
        say(f"[pairing] {log_name}.log has {tracebacks} traceback(s), {unhandled} 'Unhandled':\n{h.log_tail(log_name, 30)}")
    return f"{tracebacks} / {unhandled}"


def run(args: argparse.Namespace) -> int:
    if min(args.pairs, args.in_flight, args.workers, args.repeat) < 1 or args.warmup < 0 or args.timeout <= 0:
        raise BenchError("--pairs, --in-flight, --workers, --repeat and --timeout must be positive")
    args.workers = min(args.workers, args.pairs, args.in_flight)
    if args.tree:
        set_tree(args.tree)
    tree_line = describe_tree()
    # Two connections per pair in flight, on the relay and in the workers.
    need_open_files(2 * args.in_flight + 256, f"--in-flight {args.in_flight}")
    peer_line = ""
    if not args.no_peer:
        import peers

        peers.ensure_python_peers()
        peer_line = f"peer: {peers.peer_versions()}  \n"

    relays: dict[str, dict[str, Any]] = {}
    with Harness("pairing", need_bytes=64 * MiB, keep=args.keep) as h:
        prime_file = h.path("prime.bin")
        make_file(prime_file, MiB, seed=-1, pool=random_pool())
        say("[pairing] priming the bytecode cache with a throwaway relay and transfer")
        prime_bytecode(h, prime_file)
        relay = start_relay(h)
        relays["ours"] = {"proc": relay.proc, "port": relay.port, "log": "relay", "runs": []}
        if not args.no_peer:
            port = free_port()
            proc = peers.start_listener(h, [peers.peers_bin("twistd"), "-n", "--pidfile=", "transitrelay",
                                            f"--port=tcp:{port}:interface=127.0.0.1:backlog={args.peer_backlog}"],
                                        port, "transit")
            relays["transit"] = {"proc": proc, "port": port, "log": "transit", "runs": []}
        for name, r in relays.items():
            r["rss_start"] = memory_kib(r["proc"].pid)["VmRSS"]
            say(f"[pairing] {name} relay pid {r['proc'].pid} on 127.0.0.1:{r['port']}, RSS {r['rss_start']} KiB")

        for i in range(args.repeat):
            for name, r in relays.items():  # interleaved, so drifting load hits both alike
                r["runs"].append(_measure(h, name, r["port"], r["proc"].pid, args, f"{name}-{i}"))
        for name, r in relays.items():
            if r["proc"].poll() is not None:
                raise BenchError(f"the {name} relay died:\n{h.log_tail(r['log'])}")
            mem = memory_kib(r["proc"].pid)
            r["rss_end"], r["hwm"] = mem["VmRSS"], mem["VmHWM"]
            r["log_problems"] = _log_problems(h, r["log"])

    names = list(relays)
    n, total = args.pairs, args.pairs * args.repeat

    def col(fn: Callable[[dict[str, Any]], str]) -> list[str]:
        return [fn(relays[name]) for name in names]

    def med(r: dict[str, Any], key: str) -> float:
        return statistics.median(run[key] for run in r["runs"])

    def ratio(key: str, fmt: str = "{:.2f}") -> list[str]:
        if len(names) < 2:
            return []
        a, b = med(relays["ours"], key), med(relays["transit"], key)
        return [fmt.format(a / b) if b else "-"]

    def all_of(r: dict[str, Any], key: str) -> list[float]:
        return [x for run in r["runs"] for x in run[key]]

    mib = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731
    rows = [
        ["pairs per run; in flight; client processes",
         *col(lambda r: f"{n}; {args.in_flight}; {args.workers}"), *([""] if len(names) > 1 else [])],
        ["all paired and exchanged 8 bytes each way, every run",
         *col(lambda r: f"{'yes' if all(x['failed'] == 0 for x in r['runs']) else 'NO'} "
                        f"({sum(x['ok'] for x in r['runs'])}/{total})"), *([""] if len(names) > 1 else [])],
        ["pairs per second, median (min – max)", *col(lambda r: _summary([x["rate"] for x in r["runs"]], "{:.0f}")),
         *ratio("rate")],
        ["pairs per second, every run", *col(lambda r: ", ".join(f"{x['rate']:.0f}" for x in r["runs"])),
         *([""] if len(names) > 1 else [])],
        ["sender start → both paired, median / p99 / max (all runs)",
         *col(lambda r: " / ".join(f"{1000 * v:.1f} ms" for v in (
             statistics.median(all_of(r, "to_paired")), _percentile(all_of(r, "to_paired"), 0.99),
             max(all_of(r, "to_paired")))) if all_of(r, "to_paired") else "-"),
         *([""] if len(names) > 1 else [])],
        ["sender start → both closed, median (all runs)",
         *col(lambda r: f"{1000 * statistics.median(all_of(r, 'to_closed')):.1f} ms" if all_of(r, "to_closed") else "-"),
         *([""] if len(names) > 1 else [])],
        ["relay CPU per run, s: median (min – max)", *col(lambda r: _summary([x["relay_cpu"] for x in r["runs"]], "{:.2f}")),
         *([""] if len(names) > 1 else [])],
        ["relay CPU per 1,000 pairs (median run)",
         *col(lambda r: f"{1000 * med(r, 'relay_cpu') / n:.3f} s ({100 * med(r, 'relay_cpu') / med(r, 'wall'):.0f}% of one core)"),
         *ratio("relay_cpu")],
        ["relay RSS at start / before the first run / max sampled in runs",
         *col(lambda r: f"{mib(r['rss_start'])} / {mib(r['runs'][0]['rss_before'])} / {mib(max(x['rss_max'] for x in r['runs']))}"),
         *([""] if len(names) > 1 else [])],
        ["relay peak RSS (VmHWM) at the end; RSS at the end",
         *col(lambda r: f"{mib(r['hwm'])}; {mib(r['rss_end'])}"),
         *([f"{relays['ours']['hwm'] / relays['transit']['hwm']:.2f}"] if len(names) > 1 else [])],
        ["client workers' CPU per run, s (median)", *col(lambda r: f"{med(r, 'worker_cpu'):.2f}"),
         *([""] if len(names) > 1 else [])],
        ["machine: all CPUs busy during the runs (median)",
         *col(lambda r: f"{100 * med(r, 'busy'):.0f}% of {os.cpu_count()} CPUs"), *([""] if len(names) > 1 else [])],
        ["kernel ListenOverflows per run (system-wide)",
         *col(lambda r: ", ".join("-" if x["overflows"] is None else str(x["overflows"]) for x in r["runs"])),
         *([""] if len(names) > 1 else [])],
        ["relay log: tracebacks / 'Unhandled'", *col(lambda r: r["log_problems"]), *([""] if len(names) > 1 else [])],
    ]
    headers = ["measurement", "ours"] + (["transit relay", "ours / transit"] if len(names) > 1 else [])
    print(f"### Pairing rate: senders and receivers paired per second\n\n{machine_line()}  \n{peer_line}{tree_line}\n")
    print(markdown_table(headers, rows))
    failed = any(x["failed"] for r in relays.values() for x in r["runs"])
    return 1 if failed else 0


# -- a worker ------------------------------------------------------------------------


def worker(job_path: str) -> int:
    """
    Run this worker's share of pairs against one relay, at most C{in_flight}
    at a time: first C{warmup} unmeasured pairs, then print L{READY}, wait
    for SIGUSR1, run the measured pairs and print one JSON report.
    """
    import resource
    import struct

    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import ClientFactory, Protocol

    from twisted_relay.wire import (
        RELAY_PROTOCOL_VERSION,
        FrameReceiver,
        FrameType,
        decode_channel,
        decode_error,
        encode_channel,
        encode_version,
    )

    raise_open_files_limit()
    with open(job_path) as f:
        job = json.load(f)
    host, port, kind = "127.0.0.1", job["port"], job["kind"]
    worker_id = job["worker"]

    class Pair:
        """One sender and its receiver. Finished once every connection it
        started has closed; C{error} says why if it did not go all the way."""

        def __init__(self, runner: "Runner", index: int) -> None:
            self.runner = runner
            self.index = index
            self.t_start = self.t_paired = 0.0
            self.paired = self.exchanged = self.live = 0
            self.error: str | None = None
            self.protocols: list[Any] = []
            self.channel = 0
            tag = struct.pack("!HI", worker_id, index)
            self.messages = {"sender": b"S>" + tag, "receiver": b"R>" + tag}
            if kind == "transit":
                token = os.urandom(32).hex().encode("ascii")
                self.lines = {role: b"please relay %s for side %s\n" % (token, os.urandom(8).hex().encode("ascii"))
                              for role in ("sender", "receiver")}

        def start(self) -> None:
            self.t_start = time.monotonic()
            self._connect("sender")

        def start_receiver(self) -> None:
            self._connect("receiver")

        def _connect(self, role: str) -> None:
            proto = (OursSide if kind == "ours" else TransitSide)(self, role)
            self.protocols.append(proto)
            self.live += 1
            reactor.connectTCP(host, port, OneShot(proto), timeout=30)

        def on_paired(self) -> None:
            self.paired += 1
            if self.paired == 2:
                self.t_paired = time.monotonic()

        def on_message(self, role: str, data: bytes) -> None:
            other = "receiver" if role == "sender" else "sender"
            if data != self.messages[other]:
                self.fail(f"{role} got {data!r}, not its partner's {self.messages[other]!r}")
            else:
                self.exchanged += 1

        def fail(self, why: str) -> None:
            if self.error is None:
                self.error = why
            for proto in self.protocols:
                if proto.transport is not None:
                    proto.transport.abortConnection()

        def closed(self, role: str) -> None:
            self.live -= 1
            if self.live == 0:
                if self.error is None and self.exchanged < 2:
                    self.error = f"connections closed before both sides exchanged (paired {self.paired}/2)"
                self.runner.finished(self)

    class OneShot(ClientFactory):
        noisy = False

        def __init__(self, proto: Any) -> None:
            self.proto = proto

        def buildProtocol(self, addr: Any) -> Any:
            return self.proto

        def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
            self.proto.pair.fail(f"{self.proto.role} could not connect: {reason.getErrorMessage()}")
            self.proto.pair.closed(self.proto.role)

    class OursSide(FrameReceiver):
        """HELLO → WELCOME, then REGISTER → CHANNEL (sender) or CLAIM →
        PAIRED (receiver); PAIRED; then raw bytes."""

        def __init__(self, pair: Pair, role: str) -> None:
            self.pair, self.role = pair, role
            self.got = b""

        def connectionMade(self) -> None:
            self.send_frame(FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION))

        def frame_received(self, ftype: int, value: bytes) -> None:
            if ftype == FrameType.WELCOME:
                if self.role == "sender":
                    self.send_frame(FrameType.REGISTER)
                else:
                    self.send_frame(FrameType.CLAIM, encode_channel(self.pair.channel))
            elif ftype == FrameType.CHANNEL and self.role == "sender":
                self.pair.channel = decode_channel(value)
                self.pair.start_receiver()
            elif ftype == FrameType.PAIRED:
                self.pair.on_paired()
                self.set_raw_mode()
                self.transport.write(self.pair.messages[self.role])
            elif ftype == FrameType.ERROR:
                code, text = decode_error(value)
                self.pair.fail(f"{self.role} got ERROR {code}: {text}")
            else:
                self.pair.fail(f"{self.role} got unexpected frame type {ftype}")

        def raw_data_received(self, data: bytes) -> None:
            self.got += data
            if len(self.got) >= MESSAGE_BYTES:
                self.pair.on_message(self.role, self.got[:MESSAGE_BYTES])
                self.transport.loseConnection()

        def bad_length(self, length: int) -> None:
            self.pair.fail(f"{self.role} got a bad length {length}")

        def connectionLost(self, reason: Any) -> None:
            self.pair.closed(self.role)

    class TransitSide(Protocol):
        """``please relay TOKEN for side SIDE`` → ``ok``; then raw bytes."""

        def __init__(self, pair: Pair, role: str) -> None:
            self.pair, self.role = pair, role
            self.buf = b""
            self.ok = False

        def connectionMade(self) -> None:
            self.transport.write(self.pair.lines[self.role])
            if self.role == "sender":
                # The receiver learns the token elsewhere (wormhole's
                # mailbox); it need not wait for anything from the relay.
                self.pair.start_receiver()

        def dataReceived(self, data: bytes) -> None:
            self.buf += data
            if not self.ok:
                if len(self.buf) < 3:
                    if not b"ok\n".startswith(self.buf):
                        self.pair.fail(f"{self.role} got {self.buf!r}")
                    return
                if self.buf[:3] != b"ok\n":
                    self.pair.fail(f"{self.role} got {self.buf[:60]!r} instead of ok")
                    return
                self.ok = True
                self.buf = self.buf[3:]
                self.pair.on_paired()
                self.transport.write(self.pair.messages[self.role])
            if len(self.buf) >= MESSAGE_BYTES:
                self.pair.on_message(self.role, self.buf[:MESSAGE_BYTES])
                self.transport.loseConnection()

        def connectionLost(self, reason: Any) -> None:
            self.pair.closed(self.role)

    class Runner:
        """Keeps C{in_flight} pairs going until C{count} have finished."""

        def __init__(self, count: int, in_flight: int) -> None:
            self.count, self.in_flight = count, in_flight
            self.started = self.active = 0
            self.pairs: list[Pair] = []
            self.done: Deferred[list[Pair]] = Deferred()
            self.t_done: dict[int, float] = {}

        def go(self) -> Deferred[list[Pair]]:
            self._fill()
            return self.done

        def _fill(self) -> None:
            while self.active < self.in_flight and self.started < self.count:
                pair = Pair(self, self.started)
                self.pairs.append(pair)
                self.started += 1
                self.active += 1
                pair.start()
            if self.active == 0 and not self.done.called:
                self.done.callback(self.pairs)

        def finished(self, pair: Pair) -> None:
            self.t_done[pair.index] = time.monotonic()
            self.active -= 1
            self._fill()

        def abort(self, why: str) -> None:
            self.count = self.started  # start no more
            for pair in self.pairs:
                if pair.live:
                    pair.fail(why)

    reactor: Any = None

    async def run_pairs(count: int, in_flight: int, timeout: float) -> tuple[list[Pair], dict[int, float]]:
        runner = Runner(count, in_flight)
        watchdog = reactor.callLater(timeout, runner.abort, f"still running after --timeout {timeout:g} s")
        pairs = await runner.go()
        if watchdog.active():
            watchdog.cancel()
        return pairs, runner.t_done

    async def main(r: Any) -> None:
        nonlocal reactor
        reactor = r
        timeout = float(job["timeout"])
        if job["warmup"]:
            pairs, _ = await run_pairs(job["warmup"], min(job["in_flight"], job["warmup"]), timeout)
            bad = [p.error for p in pairs if p.error]
            if bad:
                print(f"{len(bad)} of {len(pairs)} warm-up pairs failed, e.g. {bad[0]}", flush=True)
                return
        go: Deferred[None] = Deferred()
        signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(go.callback, None))
        print(READY, flush=True)
        await go
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        pairs, t_done = await run_pairs(job["pairs"], job["in_flight"], timeout)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        errors: dict[str, int] = {}
        for p in pairs:
            if p.error:
                errors[p.error] = errors.get(p.error, 0) + 1
        report = {
            "cpu": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
            "ok": [[p.t_start, p.t_paired, t_done[p.index]] for p in pairs if not p.error],
            "errors": errors,
        }
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()

    return react_quietly(main)


def main(argv: Sequence[str] | None = None) -> int:
    return worker_or_main("bench/pairing.py", argv, worker, run, build_parser())


if __name__ == "__main__":
    sys.exit(main())
