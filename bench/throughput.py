"""
How fast one file goes through our relay, next to a plain socat forwarder.

Each repeat runs, back to back on the same machine:

ours   ``twisted_relay.send`` -> relay (``twistd filerelay``) -> ``twisted_relay.receive``;
       timed from starting the receiver (the sender is already waiting with
       its code) to the receiver's exit, so it includes the receiver's start-up,
       handshake and fsync.
socat  ``socat -u OPEN:file TCP:P1`` -> ``socat TCP-LISTEN:P1 TCP:P2`` ->
       ``socat -u TCP-LISTEN:P2 OPEN:out``, all with ``-b 262144``; timed from
       starting the source to the sink's exit.

Both outputs are checked (size and SHA-256). The forwarder's CPU time (our
relay: utime+stime from /proc/PID/stat before and after; socat's
forwarder: its whole-life rusage) is reported per GiB moved.

    python bench/throughput.py [--size 1G] [--repeats 3]

Prints a Markdown table on stdout; progress goes to stderr. Exit status 0
when every transfer arrived intact, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    add_scratch_options,
    run_main,
    GiB,
    MiB,
    BenchError,
    Harness,
    Relay,
    cpu_seconds,
    describe_tree,
    free_port,
    human_size,
    machine_line,
    make_file,
    markdown_table,
    parse_size,
    prime_bytecode,
    random_pool,
    say,
    set_tree,
    sha256_file,
    start_receiver,
    start_relay,
    start_sender,
    wait_exit,
    wait_listening,
)

SOCAT_BUFFER = 262144


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bench/throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=parse_size("1G"), help="file size, e.g. 1G (default)")
    p.add_argument("-r", "--repeats", type=int, default=3, help="runs of each measurement (default 3)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one transfer may take (default 300)")
    p.add_argument("--no-install", action="store_true", help="fail if socat is missing instead of apt-get installing it")
    add_scratch_options(p)
    return p


@dataclass
class Run:
    seconds: float
    forwarder_cpu: float  # seconds
    sending_cpu: float  # seconds: our sender, or socat's source
    receiving_cpu: float  # seconds: our receiver, or socat's sink
    intact: bool


def ensure_socat(install: bool) -> str:
    path = shutil.which("socat")
    if path:
        return path
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError("socat is not installed; install it (e.g. apt-get install socat) and run again")
    say("socat is missing: installing it with apt-get (apt-get update && apt-get install -y socat)")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "socat"]):
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
    path = shutil.which("socat")
    if not path:
        raise BenchError("apt-get install socat succeeded but socat is not on PATH")
    return path


def check_output(path: str, size: int, digest: str) -> bool:
    try:
        ok = os.path.getsize(path) == size and sha256_file(path) == digest
    except OSError:
        return False
    os.unlink(path)  # give tmpfs its memory back before the next run
    return ok


def run_ours(h: Harness, relay: Relay, src: str, size: int, digest: str, rep: int, timeout: float) -> Run:
    tag = f"ours-{rep}"
    outdir = h.path(f"out-{tag}")
    sender, code = start_sender(h, relay, src, tag)
    cpu_before = cpu_seconds(relay.pid)
    t0 = time.monotonic()
    receiver = start_receiver(h, relay, code, outdir, tag)
    try:
        rc_r, cpu_r = wait_exit(receiver, timeout)
    except BenchError as e:
        raise BenchError(f"{e}\nreceiver:\n{h.log_tail(f'receive-{tag}', 5)}\n"
                         f"sender:\n{h.log_tail(f'send-{tag}', 5)}\nrelay:\n{h.log_tail('relay', 5)}") from None
    elapsed = time.monotonic() - t0
    cpu_after = cpu_seconds(relay.pid)
    rc_s, cpu_s = wait_exit(sender, 30)
    intact = rc_r == 0 and rc_s == 0 and check_output(os.path.join(outdir, os.path.basename(src)), size, digest)
    if not intact:
        say(f"[throughput] our transfer {rep} failed: receiver exit {rc_r}, sender exit {rc_s}")
        say(h.log_tail(f"receive-{tag}", 5))
    return Run(elapsed, cpu_after - cpu_before, cpu_s, cpu_r, intact)


def run_socat(h: Harness, socat: str, src: str, size: int, digest: str, rep: int, timeout: float) -> Run:
    tag = f"socat-{rep}"
    out = h.path(f"out-{tag}.bin")
    b = str(SOCAT_BUFFER)
    sink_port = free_port()
    sink = h.spawn([socat, "-u", "-b", b, f"TCP-LISTEN:{sink_port},bind=127.0.0.1,reuseaddr",
                    f"OPEN:{out},creat,trunc"], f"{tag}-sink")
    wait_listening(sink_port, sink)
    fwd_port = free_port()
    forwarder = h.spawn([socat, "-b", b, f"TCP-LISTEN:{fwd_port},bind=127.0.0.1,reuseaddr",
                         f"TCP:127.0.0.1:{sink_port}"], f"{tag}-forwarder")
    wait_listening(fwd_port, forwarder)
    t0 = time.monotonic()
    source = h.spawn([socat, "-u", "-b", b, f"OPEN:{src},rdonly", f"TCP:127.0.0.1:{fwd_port}"], f"{tag}-source")
    rc_sink, cpu_sink = wait_exit(sink, timeout)
    elapsed = time.monotonic() - t0
    rc_fwd, cpu_fwd = wait_exit(forwarder, 30)
    rc_src, cpu_src = wait_exit(source, 30)
    intact = rc_sink == rc_fwd == rc_src == 0 and check_output(out, size, digest)
    if not intact:
        say(f"[throughput] socat run {rep} failed: exits source {rc_src}, forwarder {rc_fwd}, sink {rc_sink}")
    return Run(elapsed, cpu_fwd, cpu_src, cpu_sink, intact)


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.size < 1:
        raise BenchError("--repeats and --size must be positive")
    if args.tree:
        set_tree(args.tree)
    tree_line = describe_tree()
    socat = ensure_socat(not args.no_install)
    size = args.size
    ours: list[Run] = []
    theirs: list[Run] = []
    with Harness("throughput", need_bytes=2 * size + 64 * MiB, keep=args.keep) as h:
        src = h.path("file.bin")
        say(f"[throughput] writing {human_size(size)}")
        pool = None if args.urandom else random_pool()
        digest = make_file(src, size, seed=1, pool=pool)
        warm = h.path("warmup.bin")
        warm_digest = make_file(warm, MiB, seed=2, pool=pool)

        say(f"[{h.name}] priming the bytecode cache with a throwaway relay and transfer")
        prime_bytecode(h, warm)
        relay = start_relay(h)
        say(f"[throughput] relay pid {relay.pid} on {relay.address}")
        # A small transfer first, so one-time costs (imports, first
        # allocations in the relay) are not charged to the first repeat.
        if not run_ours(h, relay, warm, MiB, warm_digest, -1, 60).intact:
            raise BenchError(f"warm-up transfer failed:\n{h.log_tail('relay')}")
        # A second small transfer per path, timed: the fixed cost per
        # transfer (process start-up, handshake) inside the big runs' times.
        warm_ours = run_ours(h, relay, warm, MiB, warm_digest, -2, 60)
        warm_socat = run_socat(h, socat, warm, MiB, warm_digest, -2, 60)
        if not (warm_ours.intact and warm_socat.intact):
            raise BenchError(f"small transfer failed:\n{h.log_tail('relay')}")

        # Interleaved, so drift in machine load affects both alike.
        for rep in range(args.repeats):
            ours.append(run_ours(h, relay, src, size, digest, rep, args.timeout))
            say(f"[throughput] run {rep + 1}/{args.repeats} ours:  {size / ours[-1].seconds / 1e6:7.1f} MB/s")
            theirs.append(run_socat(h, socat, src, size, digest, rep, args.timeout))
            say(f"[throughput] run {rep + 1}/{args.repeats} socat: {size / theirs[-1].seconds / 1e6:7.1f} MB/s")
        if relay.proc.poll() is not None:
            raise BenchError(f"the relay died:\n{h.log_tail('relay')}")

    print(f"### Throughput: one {human_size(size)} file, ours vs a socat forwarder ({args.repeats} runs each)\n")
    print(f"{machine_line()}  \n{tree_line}\n")
    print(markdown_table(["measurement", "ours: send → relay → receive", "socat: source → forwarder → sink", "ours / socat"],
                         table_rows(ours, theirs, size, warm_ours, warm_socat)))
    return 0 if all(r.intact for r in ours + theirs) else 1


def table_rows(ours: list[Run], theirs: list[Run], size: int, warm_ours: Run, warm_socat: Run) -> list[list[str]]:
    def rate(runs: list[Run]) -> list[float]:
        return [size / r.seconds / 1e6 for r in runs]

    def per_gib(values: list[float]) -> list[float]:
        return [v * GiB / size for v in values]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "n/a"

    rows = []
    r_ours, r_theirs = rate(ours), rate(theirs)
    for name, fn in (("median", statistics.median), ("min", min), ("max", max)):
        a, b = fn(r_ours), fn(r_theirs)
        rows.append([f"throughput, MB/s (10^6 B/s), {name}", f"{a:.1f}", f"{b:.1f}", ratio(a, b)])
    rows.append(["throughput, every run, MB/s",
                 ", ".join(f"{v:.0f}" for v in r_ours), ", ".join(f"{v:.0f}" for v in r_theirs), ""])
    t_ours = statistics.median(r.seconds for r in ours)
    t_theirs = statistics.median(r.seconds for r in theirs)
    rows.append(["wall time, s, median", f"{t_ours:.2f}", f"{t_theirs:.2f}", ratio(t_ours, t_theirs)])
    rows.append(["fixed cost: wall time of one 1 MiB transfer, s",
                 f"{warm_ours.seconds:.2f}", f"{warm_socat.seconds:.2f}", ratio(warm_ours.seconds, warm_socat.seconds)])
    net_ours = size / max(1e-9, t_ours - warm_ours.seconds) / 1e6
    net_theirs = size / max(1e-9, t_theirs - warm_socat.seconds) / 1e6
    rows.append(["throughput net of the fixed cost, MB/s: size / (median wall − fixed)",
                 f"{net_ours:.1f}", f"{net_theirs:.1f}", ratio(net_ours, net_theirs)])
    for label, attr in (("forwarder CPU (our relay / socat forwarder), s per GiB", "forwarder_cpu"),
                        ("sending end CPU (our sender / socat source), s per GiB", "sending_cpu"),
                        ("receiving end CPU (our receiver / socat sink), s per GiB", "receiving_cpu")):
        a = per_gib([getattr(r, attr) for r in ours])
        b = per_gib([getattr(r, attr) for r in theirs])
        rows.append([f"{label}, median [min–max]",
                     f"{statistics.median(a):.2f} [{min(a):.2f}–{max(a):.2f}]",
                     f"{statistics.median(b):.2f} [{min(b):.2f}–{max(b):.2f}]",
                     ratio(statistics.median(a), statistics.median(b))])
    n = len(ours)
    rows.append(["intact (exit 0, size and SHA-256 match)",
                 f"{sum(r.intact for r in ours)}/{n}", f"{sum(r.intact for r in theirs)}/{n}", ""])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("bench/throughput.py", run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
