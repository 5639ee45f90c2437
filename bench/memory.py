"""
How much memory the relay holds per transfer when receivers stop reading.

Starts a relay, records its resident set, starts N concurrent transfers
(sender and receiver CLIs, one process each), waits until every transfer is
moving bytes, then SIGSTOPs every receiver for a few seconds while sampling
the relay's RSS. With working backpressure the relay stops reading from the
senders once its outgoing buffers fill, so its RSS stays flat however large
the files. Then SIGCONT, wait for every transfer to finish, and check every
received file's SHA-256.

    python bench/memory.py [--transfers 10] [--size 512M] [--stall 8]

Prints a Markdown table on stdout; progress goes to stderr. Exit status 0
when every transfer arrived intact, 1 otherwise (the target is reported,
not enforced).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    add_scratch_options,
    run_main,
    BenchError,
    Harness,
    describe_tree,
    MiB,
    human_size,
    machine_line,
    make_file,
    markdown_table,
    memory_kib,
    parse_size,
    prime_bytecode,
    random_pool,
    read_code,
    say,
    set_tree,
    sha256_file,
    start_receiver,
    start_relay,
    spawn_sender,
    start_sender,
    wait_exit,
)

#: The issue's target: relay RSS growth per stalled transfer.
TARGET_KIB = 1024


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bench/memory.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--transfers", type=int, default=10, help="concurrent transfers (default 10)")
    p.add_argument("--size", type=parse_size, default=parse_size("512M"), help="bytes per file, e.g. 512M (default)")
    p.add_argument("--stall", type=float, default=8.0, help="seconds the receivers stay stopped (default 8)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between RSS samples (default 0.05)")
    p.add_argument("--timeout", type=float, default=900.0, help="give up on the transfers after this many seconds (default 900)")
    add_scratch_options(p)
    return p


class Sampler(threading.Thread):
    """Reads the relay's VmRSS every C{interval} seconds, tagging each
    sample with the phase the main thread says we are in."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.phase = "start"
        self.samples: list[tuple[float, str, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.samples.append((time.monotonic(), self.phase, memory_kib(self.pid)["VmRSS"]))
            except (OSError, KeyError):
                return
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def max_in(self, phase: str) -> int:
        return max((rss for _, p, rss in self.samples if p == phase), default=0)

    def count_in(self, phase: str) -> int:
        return sum(1 for _, p, _ in self.samples if p == phase)


def relay_bytes_received(port: int) -> int | None:
    """Bytes the relay's sockets have received, summed over its connections
    (the kernel's tcpi_bytes_received, via ``ss``); None without ``ss``.
    (/proc/PID/io's rchar does not count recv() on sockets.)"""
    try:
        out = subprocess.run(
            ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
            capture_output=True, text=True, timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(int(m) for m in re.findall(r"bytes_received:(\d+)", out))


def partial_size(outdir: str) -> int | None:
    """Bytes the receiver has written so far (its hidden .part file), or
    None if it has none (not started, or finished)."""
    sizes = [os.path.getsize(p) for p in glob.glob(os.path.join(outdir, ".filerelay-*.part"))]
    return max(sizes) if sizes else None


def stall_reads(start: int | None, half: int | None, end: int | None) -> str:
    if start is None or half is None or end is None:
        return "(no ss)"
    return f"{(half - start) / MiB:.1f} MiB / {(end - half) / MiB:.1f} MiB"


def run(args: argparse.Namespace) -> int:
    n, size = args.transfers, args.size
    if n < 1 or size < 1 or args.stall < 0:
        raise BenchError("--transfers and --size must be positive, --stall not negative")
    if args.tree:
        set_tree(args.tree)
    tree_line = describe_tree()
    need = 2 * n * size + 64 * MiB
    with Harness("memory", need_bytes=need, keep=args.keep) as h:
        os.makedirs(h.path("in"))
        say(f"[memory] writing {n} files of {human_size(size)}")
        pool = None if args.urandom else random_pool()
        files = [h.path("in", f"file-{i}.bin") for i in range(n)]
        digests = [make_file(path, size, seed=i, pool=pool) for i, path in enumerate(files)]
        warm_file = h.path("in", "warmup.bin")
        warm_digest = make_file(warm_file, MiB, seed=-1, pool=pool)

        say(f"[{h.name}] priming the bytecode cache with a throwaway relay and transfer")
        prime_bytecode(h, warm_file)
        relay = start_relay(h)
        start_rss = memory_kib(relay.pid)["VmRSS"]
        say(f"[memory] relay pid {relay.pid} on {relay.address}, RSS {start_rss} KiB")

        # One small transfer first, so one-time costs (lazy imports, first
        # allocations) are not charged to the transfers being measured.
        sender, code = start_sender(h, relay, warm_file, "warmup")
        receiver = start_receiver(h, relay, code, h.path("out-warmup"), "warmup")
        if wait_exit(receiver, 60)[0] != 0 or wait_exit(sender, 60)[0] != 0:
            raise BenchError(f"warm-up transfer failed:\n{h.log_tail('receive-warmup')}")
        if sha256_file(h.path("out-warmup", "warmup.bin")) != warm_digest:
            raise BenchError("warm-up transfer corrupted")
        time.sleep(0.5)
        base_samples = []
        for _ in range(10):
            base_samples.append(memory_kib(relay.pid)["VmRSS"])
            time.sleep(0.05)
        baseline = int(statistics.median(base_samples))

        sampler = Sampler(relay.pid, args.interval)
        sampler.phase = "flowing"
        sampler.start()
        t0 = time.monotonic()
        # All senders first, then all receivers, so the transfers overlap.
        senders = [spawn_sender(h, relay, path, str(i)) for i, path in enumerate(files)]
        codes = [read_code(h, proc, str(i)) for i, proc in enumerate(senders)]
        outdirs = [h.path(f"out-{i}") for i in range(n)]
        receivers = [start_receiver(h, relay, code, outdirs[i], str(i)) for i, code in enumerate(codes)]
        say(f"[memory] {n} transfers started; waiting until each has moved some bytes")

        # Flowing: every receiver has written a good part of its file (or
        # already finished, which means the stall comes too late for it).
        threshold = min(size // 8, 32 * MiB) or 1
        deadline = time.monotonic() + min(args.timeout, 120)
        while True:
            states = [partial_size(d) for d in outdirs]
            flowing = [s is not None and s >= threshold for s in states]
            exited = [r.poll() is not None for r in receivers]
            if all(f or e for f, e in zip(flowing, exited)):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"transfers not flowing after 120 s; bytes written so far: {states}")
            time.sleep(0.02)

        in_flight = [r for r in receivers if r.poll() is None]
        say(f"[memory] stopping {len(in_flight)} receivers for {args.stall} s")
        sampler.phase = "stall"
        for r in in_flight:
            r.send_signal(signal.SIGSTOP)
        stall_start = time.monotonic()
        read_at_start = relay_bytes_received(relay.port)
        time.sleep(args.stall / 2)
        read_at_half = relay_bytes_received(relay.port)
        time.sleep(max(0.0, stall_start + args.stall - time.monotonic()))
        read_at_end = relay_bytes_received(relay.port)
        sampler.phase = "draining"
        for r in in_flight:
            r.send_signal(signal.SIGCONT)

        say("[memory] receivers resumed; waiting for every transfer to finish")
        deadline = t0 + args.timeout
        outcomes = []
        hung = 0
        for i, (s, r) in enumerate(zip(senders, receivers)):
            left = max(1.0, deadline - time.monotonic())
            try:
                rc_r = wait_exit(r, left)[0]
                rc_s = wait_exit(s, max(1.0, deadline - time.monotonic()))[0]
            except BenchError:
                say(f"[memory] transfer {i} hung; receiver wrote {partial_size(outdirs[i])} bytes")
                say(h.log_tail(f"receive-{i}", 5))
                say(h.log_tail(f"send-{i}", 5))
                outcomes.append(False)
                hung += 1
                continue
            out = os.path.join(outdirs[i], f"file-{i}.bin")
            ok = rc_r == 0 and rc_s == 0 and os.path.isfile(out) and os.path.getsize(out) == size
            ok = ok and sha256_file(out) == digests[i]
            if not ok:
                say(f"[memory] transfer {i} failed: receiver exit {rc_r}, sender exit {rc_s}")
                say(h.log_tail(f"receive-{i}", 5))
            outcomes.append(ok)
            if os.path.exists(out):
                os.unlink(out)  # give tmpfs its memory back
        elapsed = time.monotonic() - t0
        sampler.stop()
        mem = memory_kib(relay.pid)
        if relay.proc.poll() is not None:
            raise BenchError(f"the relay died:\n{h.log_tail('relay')}")

    stall_max = sampler.max_in("stall")
    growth = (stall_max - baseline) / n
    intact = sum(outcomes)
    mib = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731
    rows = [
        ["transfers", f"{n} × {human_size(size)}, receivers stopped {args.stall:g} s"],
        ["relay RSS at start", mib(start_rss)],
        ["relay RSS baseline (after a 1 MiB warm-up transfer)", mib(baseline)],
        ["relay RSS max while flowing, before the stall", mib(sampler.max_in("flowing"))],
        [f"relay RSS max during the stall ({sampler.count_in('stall')} samples)", mib(stall_max)],
        ["growth per transfer: (stall max − baseline) / N", f"{growth:.0f} KiB"],
        [f"target: < {TARGET_KIB} KiB per transfer", "PASS" if growth < TARGET_KIB else "FAIL"],
        ["relay RSS max after the stall, while draining", mib(sampler.max_in("draining"))],
        ["relay peak RSS (VmHWM) over the whole run", mib(mem["VmHWM"])],
        ["bytes the relay received in the stall's 1st half / 2nd half", stall_reads(read_at_start, read_at_half, read_at_end)],
        ["transfers still in flight when stopped", f"{len(in_flight)}/{n}"],
        ["all intact (both exit 0, size and SHA-256 match)", f"{'yes' if intact == n else 'NO'} ({intact}/{n}"
         + (f"; {hung} still running after --timeout {args.timeout:g} s)" if hung else ")")],
        ["time, first sender start → last transfer done", f"{elapsed:.1f} s (incl. {args.stall:g} s stall)"],
    ]
    print(f"### Relay memory under stalled receivers\n\n{machine_line()}  \n{tree_line}\n")
    print(markdown_table(["measurement", "value"], rows))
    return 0 if intact == n else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("bench/memory.py", run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
