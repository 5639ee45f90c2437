"""
How much memory the relay holds per transfer when receivers stop reading.

Starts a relay, records its resident set, starts N concurrent transfers
(sender and receiver CLIs, one process each), waits until every transfer is
moving bytes, then SIGSTOPs every receiver for a few seconds while sampling
the relay's RSS. With working backpressure the relay stops reading from the
senders once its outgoing buffers fill, so its RSS stays flat however large
the files. Then SIGCONT, wait for every transfer to finish, and check every
received file's SHA-256.

Then, on a fresh relay, it opens a few thousand senders that register and
wait for a receiver that never comes (bench/waiting.py), and measures the
relay's RSS growth per waiting sender. With ``--socket-buffer BYTES`` and a
relay that has that option, everything runs a second time with it.

    python bench/memory.py [--transfers 10] [--size 512M] [--stall 8] [--waiting 2000]
                           [--socket-buffer BYTES]

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
from typing import Any, Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import waiting  # noqa: E402
from _common import (  # noqa: E402
    add_scratch_options,
    run_main,
    BenchError,
    Harness,
    Relay,
    describe_tree,
    MiB,
    human_size,
    machine_line,
    make_file,
    markdown_table,
    memory_kib,
    need_open_files,
    parse_size,
    prime_bytecode,
    random_pool,
    read_code,
    relay_supports,
    say,
    set_tree,
    sha256_file,
    start_receiver,
    start_relay,
    spawn_sender,
    start_sender,
    wait_exit,
)

#: The issue's targets (issue 6, Speed): relay RSS growth per stalled
#: transfer, and per sender waiting for its receiver.
TARGET_KIB = 128
WAITING_TARGET_KIB = 8


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bench/memory.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--transfers", type=int, default=10, help="concurrent transfers (default 10)")
    p.add_argument("--size", type=parse_size, default=parse_size("512M"), help="bytes per file, e.g. 512M (default)")
    p.add_argument("--stall", type=float, default=8.0, help="seconds the receivers stay stopped (default 8)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between RSS samples (default 0.05)")
    p.add_argument("--timeout", type=float, default=900.0, help="give up on the transfers after this many seconds (default 900)")
    p.add_argument("--waiting", type=int, default=2000,
                   help="senders that register and wait, on a fresh relay (default 2000; 0 leaves this out)")
    p.add_argument("--socket-buffer", type=parse_size,
                   help="run everything again with the relay's --socket-buffer BYTES, e.g. 64K (if the relay has it)")
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


def relay_socket_memory(port: int) -> int | None:
    """Bytes the kernel holds queued in the relay's accepted sockets right
    now: the sum of each one's receive-queue and send-queue allocations
    (``ss -m`` skmem ``r`` + ``w``). RSS does not show these; a
    ``--socket-buffer`` cap bounds them. None without ``ss``."""
    try:
        out = subprocess.run(
            ["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
            capture_output=True, text=True, timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(int(r) + int(w) for r, w in re.findall(r"skmem:\(r(\d+),.*?,w(\d+),", out))


def _warm_up(h: Harness, relay: Relay, warm_file: str, warm_digest: str, tag: str) -> int:
    """One small transfer through C{relay}, so one-time costs (lazy imports,
    first allocations) are not charged to what is measured; then the
    baseline: the median of 10 RSS readings."""
    sender, code = start_sender(h, relay, warm_file, f"{tag}-warmup")
    receiver = start_receiver(h, relay, code, h.path(f"out-{tag}-warmup"), f"{tag}-warmup")
    if wait_exit(receiver, 60)[0] != 0 or wait_exit(sender, 60)[0] != 0:
        raise BenchError(f"warm-up transfer failed:\n{h.log_tail(f'receive-{tag}-warmup')}")
    out = h.path(f"out-{tag}-warmup", os.path.basename(warm_file))
    if sha256_file(out) != warm_digest:
        raise BenchError("warm-up transfer corrupted")
    os.unlink(out)
    time.sleep(0.5)
    return _median_rss(relay.pid)


def _median_rss(pid: int) -> int:
    samples = []
    for _ in range(10):
        samples.append(memory_kib(pid)["VmRSS"])
        time.sleep(0.05)
    return int(statistics.median(samples))


def _stalled(h: Harness, args: argparse.Namespace, files: list[str], digests: list[str], warm_file: str,
             warm_digest: str, options: Sequence[str], tag: str) -> dict[str, Any]:
    """N transfers, receivers stopped for --stall seconds; see the module
    docstring."""
    n, size = args.transfers, args.size
    relay = start_relay(h, log_name=f"relay-{tag}", options=options)
    start_rss = memory_kib(relay.pid)["VmRSS"]
    say(f"[memory] {tag}: relay pid {relay.pid} on {relay.address}, RSS {start_rss} KiB")
    baseline = _warm_up(h, relay, warm_file, warm_digest, tag)

    sampler = Sampler(relay.pid, args.interval)
    sampler.phase = "flowing"
    sampler.start()
    t0 = time.monotonic()
    # All senders first, then all receivers, so the transfers overlap.
    senders = [spawn_sender(h, relay, path, f"{tag}-{i}") for i, path in enumerate(files)]
    codes = [read_code(h, proc, f"{tag}-{i}") for i, proc in enumerate(senders)]
    outdirs = [h.path(f"out-{tag}-{i}") for i in range(n)]
    receivers = [start_receiver(h, relay, code, outdirs[i], f"{tag}-{i}") for i, code in enumerate(codes)]
    say(f"[memory] {tag}: {n} transfers started; waiting until each has moved some bytes")

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
    say(f"[memory] {tag}: stopping {len(in_flight)} receivers for {args.stall} s")
    sampler.phase = "stall"
    for r in in_flight:
        r.send_signal(signal.SIGSTOP)
    stall_start = time.monotonic()
    read_at_start = relay_bytes_received(relay.port)
    time.sleep(args.stall / 2)
    read_at_half = relay_bytes_received(relay.port)
    time.sleep(max(0.0, stall_start + args.stall - time.monotonic()))
    read_at_end = relay_bytes_received(relay.port)
    kernel_queued = relay_socket_memory(relay.port)
    sampler.phase = "draining"
    for r in in_flight:
        r.send_signal(signal.SIGCONT)

    say(f"[memory] {tag}: receivers resumed; waiting for every transfer to finish")
    deadline = t0 + args.timeout
    outcomes = []
    hung = 0
    for i, (s, r) in enumerate(zip(senders, receivers)):
        left = max(1.0, deadline - time.monotonic())
        try:
            rc_r = wait_exit(r, left)[0]
            rc_s = wait_exit(s, max(1.0, deadline - time.monotonic()))[0]
        except BenchError:
            say(f"[memory] {tag}: transfer {i} hung; receiver wrote {partial_size(outdirs[i])} bytes")
            say(h.log_tail(f"receive-{tag}-{i}", 5))
            say(h.log_tail(f"send-{tag}-{i}", 5))
            outcomes.append(False)
            hung += 1
            continue
        out = os.path.join(outdirs[i], f"file-{i}.bin")
        ok = rc_r == 0 and rc_s == 0 and os.path.isfile(out) and os.path.getsize(out) == size
        ok = ok and sha256_file(out) == digests[i]
        if not ok:
            say(f"[memory] {tag}: transfer {i} failed: receiver exit {rc_r}, sender exit {rc_s}")
            say(h.log_tail(f"receive-{tag}-{i}", 5))
        outcomes.append(ok)
        if os.path.exists(out):
            os.unlink(out)  # give tmpfs its memory back
    elapsed = time.monotonic() - t0
    sampler.stop()
    if relay.proc.poll() is not None:
        raise BenchError(f"the relay died:\n{h.log_tail(f'relay-{tag}')}")
    mem = memory_kib(relay.pid)
    h.stop(relay.proc)
    return {
        "start_rss": start_rss, "baseline": baseline, "sampler": sampler, "hwm": mem["VmHWM"],
        "reads": (read_at_start, read_at_half, read_at_end), "kernel_queued": kernel_queued,
        "in_flight": len(in_flight), "intact": sum(outcomes), "hung": hung, "elapsed": elapsed,
    }


def _waiting(h: Harness, args: argparse.Namespace, warm_file: str, warm_digest: str, options: Sequence[str],
             tag: str) -> dict[str, Any]:
    """A fresh relay (memory another measurement freed would absorb, and
    hide, what the senders allocate), a warm-up transfer and a few waiting
    senders opened and closed, the baseline, then --waiting senders that
    register and wait."""
    relay = start_relay(h, log_name=f"relay-{tag}-waiting", options=options)
    _warm_up(h, relay, warm_file, warm_digest, f"{tag}-waiting")
    waiting.close_all(waiting.open_waiting_senders(relay.port, 20, args.timeout))
    time.sleep(0.5)
    baseline = _median_rss(relay.pid)
    fds_before = waiting.open_descriptors(relay.pid)
    say(f"[memory] {tag}: opening {args.waiting} waiting senders")
    t0 = time.monotonic()
    socks = waiting.open_waiting_senders(relay.port, args.waiting, args.timeout)
    try:
        took = time.monotonic() - t0
        time.sleep(0.5)
        held = _median_rss(relay.pid)
        fds = waiting.open_descriptors(relay.pid) - fds_before
        if relay.proc.poll() is not None:
            raise BenchError(f"the relay died:\n{h.log_tail(f'relay-{tag}-waiting')}")
    finally:
        waiting.close_all(socks)
    h.stop(relay.proc)
    return {"baseline": baseline, "held": held, "fds": fds, "took": took}


def run(args: argparse.Namespace) -> int:
    n, size = args.transfers, args.size
    if n < 1 or size < 1 or args.stall < 0 or args.waiting < 0:
        raise BenchError("--transfers and --size must be positive, --stall and --waiting not negative")
    if args.tree:
        set_tree(args.tree)
    tree_line = describe_tree()
    configs: list[tuple[str, list[str]]] = [("default", [])]
    if args.socket_buffer is not None:
        if relay_supports("--socket-buffer"):
            configs.append((f"--socket-buffer {args.socket_buffer}", ["--socket-buffer", str(args.socket_buffer)]))
        else:
            say("[memory] this relay has no --socket-buffer option: measuring its defaults only")
    need_open_files(args.waiting + 2 * n + 256, f"--waiting {args.waiting}")
    need = 2 * n * size + 64 * MiB
    results = []
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
        for k, (label, options) in enumerate(configs):
            tag = "default" if k == 0 else "capped"
            stalled = _stalled(h, args, files, digests, warm_file, warm_digest, options, tag)
            held = _waiting(h, args, warm_file, warm_digest, options, tag) if args.waiting else None
            results.append((label, stalled, held))

    mib = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731

    def row(name: str, fn: Callable[[dict[str, Any]], str]) -> list[str]:
        return [name, *(fn(st) for _, st, _ in results)]

    def growth(st: dict[str, Any]) -> float:
        return (st["sampler"].max_in("stall") - st["baseline"]) / n

    rows = [
        row("transfers", lambda st: f"{n} × {human_size(size)}, receivers stopped {args.stall:g} s"),
        row("relay RSS at start", lambda st: mib(st["start_rss"])),
        row("relay RSS baseline (after a 1 MiB warm-up transfer)", lambda st: mib(st["baseline"])),
        row("relay RSS max while flowing, before the stall", lambda st: mib(st["sampler"].max_in("flowing"))),
        row("relay RSS max during the stall", lambda st: f"{mib(st['sampler'].max_in('stall'))} "
                                                         f"({st['sampler'].count_in('stall')} samples)"),
        row("growth per stalled transfer: (stall max − baseline) / N", lambda st: f"{growth(st):.0f} KiB"),
        row(f"target: ≤ {TARGET_KIB} KiB per stalled transfer", lambda st: "PASS" if growth(st) <= TARGET_KIB else "FAIL"),
        row("kernel memory queued in the relay's sockets at the end of the stall, per transfer",
            lambda st: "(no ss)" if st["kernel_queued"] is None else f"{st['kernel_queued'] / 1024 / n:.0f} KiB"),
        row("relay RSS max after the stall, while draining", lambda st: mib(st["sampler"].max_in("draining"))),
        row("relay peak RSS (VmHWM) over the whole run", lambda st: mib(st["hwm"])),
        row("bytes the relay received in the stall's 1st half / 2nd half", lambda st: stall_reads(*st["reads"])),
        row("transfers still in flight when stopped", lambda st: f"{st['in_flight']}/{n}"),
        row("all intact (both exit 0, size and SHA-256 match)",
            lambda st: f"{'yes' if st['intact'] == n else 'NO'} ({st['intact']}/{n}"
                       + (f"; {st['hung']} still running after --timeout {args.timeout:g} s)" if st["hung"] else ")")),
        row("time, first sender start → last transfer done",
            lambda st: f"{st['elapsed']:.1f} s (incl. {args.stall:g} s stall)"),
    ]
    if args.waiting:
        w = args.waiting

        def per_sender(held: dict[str, Any]) -> float:
            return (held["held"] - held["baseline"]) / w

        rows += [
            ["waiting senders (registered, no receiver), fresh relay", *(f"{w}" for _ in results)],
            ["relay RSS baseline (after a warm-up transfer and 20 waiting senders)", *(mib(ws["baseline"]) for *_, ws in results)],
            [f"relay RSS with {w} senders waiting", *(mib(ws["held"]) for *_, ws in results)],
            ["growth per waiting sender: (waiting − baseline) / N", *(f"{per_sender(ws):.1f} KiB" for *_, ws in results)],
            [f"target: ≤ {WAITING_TARGET_KIB} KiB per waiting sender",
             *("PASS" if per_sender(ws) <= WAITING_TARGET_KIB else "FAIL" for *_, ws in results)],
            ["relay descriptors opened for them", *(f"{ws['fds']}" for *_, ws in results)],
            [f"time to connect and register {w}", *(f"{ws['took']:.2f} s" for *_, ws in results)],
        ]
    headers = ["measurement", *(f"relay: {label}" if label != "default" else "relay: defaults" for label, *_ in results)]
    print(f"### Relay memory: stalled transfers and waiting senders\n\n{machine_line()}  \n{tree_line}\n")
    print(markdown_table(headers, rows))
    return 0 if all(st["intact"] == n for _, st, _ in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("bench/memory.py", run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
