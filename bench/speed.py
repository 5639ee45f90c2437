"""
How fast one big file goes through our relay, next to the peers the Speed
issue names, in one run on one machine, with the ratios its targets use.

Rows (each a path for the same file, repeated and interleaved):

1 iperf3        raw loopback TCP, one stream: the ceiling
2 direct        raw sender (``os.sendfile``) -> raw receiver (writes the file)
3 socat         the same raw ends through ``socat -b 262144`` (one hop)
4 ours          the same raw ends through ``twistd filerelay``, once per
                ``--forwarding`` mode (splice, copy) when the tree has it
5 transit       the same raw ends through magic-wormhole's transit relay
6 piping        ``curl -T`` -> piping-server (node) -> ``curl``
7 wormhole      ``wormhole send`` -> mailbox + transit relay -> ``wormhole receive``
8 e2e           ``twisted_relay.send`` -> relay (splice) -> ``twisted_relay.receive``

Rows 2 to 5 time only the data (the sender's first byte to the receiver's
end-of-file), so they compare forwarders, not handshakes; rows 6 to 8 time
whole command lines, start to the receiver's exit. Every output is checked
(size and SHA-256; iperf3's byte count). The peers are installed on first
use (bench/peers.py).

    python bench/run.py speed [--size 1G] [--repeat 3] [--only 3,4]

Prints one Markdown table on stdout; progress goes to stderr. Exit status 0
when every run arrived intact, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402
from _common import (  # noqa: E402
    GiB,
    MiB,
    BenchError,
    Harness,
    add_scratch_options,
    cpu_seconds,
    describe_tree,
    free_port,
    human_size,
    machine_line,
    make_file,
    markdown_table,
    memory_kib,
    parse_size,
    prime_bytecode,
    random_pool,
    read_code,
    read_line,
    relay_supports,
    run_main,
    say,
    set_tree,
    sha256_file,
    spawn_sender,
    start_receiver,
    start_relay,
    wait_exit,
    wait_listening,
    wait_rusage,
)

RAW_ENDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rawends.py")
SOCAT_BUFFER = 262144
WARMUP_SIZE = 4 * MiB
#: Row keys in table order, with the numbers --only also accepts.
ROW_KEYS = ("iperf3", "direct", "socat", "ours", "transit", "piping", "wormhole", "e2e")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bench/speed.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=parse_size("1G"), help="file size, e.g. 1G (default)")
    p.add_argument("-r", "--repeat", type=int, default=3, help="runs of each row, interleaved (default 3)")
    p.add_argument("--wormhole-repeat", type=int, help="runs of the magic-wormhole row (default: --repeat)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one transfer may take (default 300)")
    p.add_argument("--only", help=f"rows to run, by number (1-8) or name ({','.join(ROW_KEYS)}), comma-separated")
    add_scratch_options(p)
    return p


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(ROW_KEYS)
    keys = []
    for part in text.replace(" ", "").split(","):
        if part.isdigit() and 1 <= int(part) <= len(ROW_KEYS):
            keys.append(ROW_KEYS[int(part) - 1])
        elif part in ROW_KEYS:
            keys.append(part)
        elif part:
            raise BenchError(f"--only: unknown row {part!r}; use 1-8 or {', '.join(ROW_KEYS)}")
    return [k for k in ROW_KEYS if k in keys]


@dataclass
class Sample:
    seconds: float
    intact: bool
    middle_cpu: float | None = None  # CPU-seconds of the process in the middle, this run


@dataclass
class Row:
    """One line of the table: a path for the file, how to run it once, and
    what it measured."""

    number: str
    label: str
    timing: str
    run_once: Callable[[str, int, str, int], Sample]  # (src, size, digest, tag) -> Sample
    repeats: int
    samples: list[Sample] = field(default_factory=list)
    peak_rss_kib: Callable[[], int | None] = lambda: None
    key: str = ""
    failure: str = ""
    peak_kib: int | None = None  # read from peak_rss_kib before the servers stop


class Bench:
    """Everything one run of the benchmark holds: the harness, the file,
    the long-lived servers, and the rows."""

    def __init__(self, h: Harness, args: argparse.Namespace) -> None:
        self.h = h
        self.args = args
        self.timeout = args.timeout
        self.rows: list[Row] = []
        self.forwarding_modes: list[str] = []
        self.versions: list[str] = []

    # -- plumbing ----------------------------------------------------------------

    def check(self, path: str, size: int, digest: str) -> bool:
        """Size and SHA-256; the output is removed either way, to give
        tmpfs its memory back before the next run."""
        try:
            return os.path.getsize(path) == size and sha256_file(path) == digest
        except OSError:
            return False
        finally:
            if os.path.isdir(path):
                subprocess.run(["rm", "-rf", path])
            elif os.path.exists(path):
                os.unlink(path)

    def raw(self, role: str, options: Sequence[str], path: str, tag: str) -> subprocess.Popen[bytes]:
        return self.h.spawn([sys.executable, RAW_ENDS, role, *options, "--wait", str(self.timeout), path],
                            f"raw-{role}-{tag}", stdout_pipe=True)

    def raw_report(self, proc: subprocess.Popen[bytes], role: str, tag: str) -> dict[str, float]:
        code, _ = wait_exit(proc, self.timeout)
        assert proc.stdout is not None
        lines = proc.stdout.read().decode("ascii", "replace").splitlines()
        if code != 0 or not lines:
            raise BenchError(f"raw {role} {tag} exited {code}:\n{self.h.log_tail(f'raw-{role}-{tag}', 5)}")
        return json.loads(lines[-1])

    def raw_pair(self, src: str, size: int, digest: str, tag: str, send_opts: Sequence[str],
                 recv_opts: Callable[[str], Sequence[str]]) -> tuple[float, bool]:
        """Start the raw sender, then the receiver with options made from
        the sender's first stdout line (our channel) if it prints one;
        return the data time (sender's first byte to receiver's end) and
        whether the output is intact."""
        out = self.h.path(f"out-{tag}.bin")
        sender = self.raw("send", send_opts, src, tag)
        first = read_line(self.h, sender, f"raw-send-{tag}", 30, "raw sender", "channel") if "--relay" in send_opts else ""
        receiver = self.raw("receive", recv_opts(first), out, tag)
        got = self.raw_report(receiver, "receive", tag)
        sent = self.raw_report(sender, "send", tag)
        return got["end"] - sent["start"], got["bytes"] == size and self.check(out, size, digest)

    # -- rows 1 to 3: the ceiling and the forwarder to beat ----------------------

    def add_iperf3(self) -> None:
        iperf3 = peers.ensure_apt("iperf3")
        _, port = peers.start_iperf3_server(self.h, iperf3)

        def once(src: str, size: int, digest: str, tag: str) -> Sample:
            log = f"iperf3-{tag}"
            proc = self.h.spawn([iperf3, "-c", "127.0.0.1", "-p", str(port), "-n", str(size), "-J"], log)
            code, _ = wait_exit(proc, self.timeout)
            with open(self.h.path(f"{log}.log"), "rb") as f:
                text = f.read().decode("utf-8", "replace")
            try:
                end = json.loads(text[text.index("{"):])["end"]
                sent, received = end["sum_sent"], end["sum_received"]
            except (ValueError, KeyError):
                raise BenchError(f"iperf3 {tag} exited {code} without a JSON report:\n{text[-800:]}") from None
            # The receiver's own rate. Its count stops when the sender ends
            # the test, so it can miss what was still in flight: the check
            # is that the sender sent every byte and the receiver got some.
            rate = received["bytes"] / received["seconds"] if received["seconds"] > 0 else 0
            return Sample(size / rate if rate else float("nan"), code == 0 and sent["bytes"] >= size and rate > 0)

        self.rows.append(Row("1", "raw loopback TCP, one stream: `iperf3 -c -n SIZE`", "iperf3's receiver",
                             once, self.args.repeat))

    def add_direct(self) -> None:
        def once(src: str, size: int, digest: str, tag: str) -> Sample:
            out = self.h.path(f"out-{tag}.bin")
            receiver = self.raw("receive", ["--listen"], out, tag)
            port = read_line(self.h, receiver, f"raw-receive-{tag}", 30, "raw receiver", "port").split()[1]
            sender = self.raw("send", ["--connect", f"127.0.0.1:{port}"], src, tag)
            got = self.raw_report(receiver, "receive", tag)
            sent = self.raw_report(sender, "send", tag)
            return Sample(got["end"] - sent["start"], got["bytes"] == size and self.check(out, size, digest))

        self.rows.append(Row("2", "file copy, no relay: raw sender (`sendfile`) → raw receiver (writes)", "data",
                             once, self.args.repeat))

    def add_socat(self) -> None:
        socat = peers.ensure_apt("socat")
        peaks: list[int] = []

        def once(src: str, size: int, digest: str, tag: str) -> Sample:
            out = self.h.path(f"out-{tag}.bin")
            receiver = self.raw("receive", ["--listen"], out, tag)
            port = read_line(self.h, receiver, f"raw-receive-{tag}", 30, "raw receiver", "port").split()[1]
            fwd_port = free_port()
            forwarder = self.h.spawn([socat, "-b", str(SOCAT_BUFFER), f"TCP-LISTEN:{fwd_port},bind=127.0.0.1,reuseaddr",
                                      f"TCP:127.0.0.1:{port}"], f"socat-{tag}")
            wait_listening(fwd_port, forwarder)
            sender = self.raw("send", ["--connect", f"127.0.0.1:{fwd_port}"], src, tag)
            got = self.raw_report(receiver, "receive", tag)
            sent = self.raw_report(sender, "send", tag)
            code, usage = wait_rusage(forwarder, 30)
            peaks.append(usage.ru_maxrss)
            intact = code == 0 and got["bytes"] == size and self.check(out, size, digest)
            return Sample(got["end"] - sent["start"], intact, usage.ru_utime + usage.ru_stime)

        self.rows.append(Row("3", f"one-hop forwarder: raw ends through `socat -b {SOCAT_BUFFER}`", "data",
                             once, self.args.repeat, peak_rss_kib=lambda: max(peaks, default=None)))

    # -- rows 4 and 5: relays between the same raw ends --------------------------

    def relay_row(self, number: str, label: str, pid: int, send_opts: Callable[[], Sequence[str]],
                  recv_opts: Callable[[str], Sequence[str]]) -> None:
        def once(src: str, size: int, digest: str, tag: str) -> Sample:
            before = cpu_seconds(pid)
            seconds, intact = self.raw_pair(src, size, digest, tag, send_opts(), recv_opts)
            return Sample(seconds, intact, cpu_seconds(pid) - before)

        self.rows.append(Row(number, label, "data", once, self.args.repeat,
                             peak_rss_kib=lambda: memory_kib(pid).get("VmHWM")))

    def add_ours(self) -> None:
        for mode in self.forwarding_modes or [""]:
            options = ["--forwarding", mode] if mode else []
            relay = start_relay(self.h, log_name=f"relay-{mode or 'default'}", options=options)
            label = (f"our relay `--forwarding {mode}`: raw ends (HELLO/REGISTER/CLAIM, then raw)" if mode else
                     "our relay, default forwarding (this tree has no `--forwarding`): raw ends")
            self.relay_row("4", label, relay.pid, lambda a=relay.address: ["--connect", a, "--relay"],
                           lambda line, a=relay.address: ["--connect", a, "--claim", line.split()[1]])
            self.rows[-1].key = f"ours-{mode}" if mode else "ours"
            if len(self.forwarding_modes) > 1:
                self.rows[-1].number = f"4{'abcdef'[self.forwarding_modes.index(mode)]}"

    def add_transit(self) -> None:
        peers.ensure_python_peers()
        proc, port = peers.start_transit_relay(self.h, "transit")
        address = f"127.0.0.1:{port}"
        tokens: list[str] = []

        def send_opts() -> list[str]:
            tokens.append(secrets.token_hex(32))
            return ["--connect", address, "--transit", tokens[-1]]

        self.relay_row("5", "magic-wormhole's transit relay (`twistd transitrelay`): raw ends", proc.pid,
                       send_opts, lambda line: ["--connect", address, "--transit", tokens[-1]])

    # -- rows 6 to 8: whole command lines -----------------------------------------

    def add_piping(self) -> None:
        curl = peers.ensure_apt("curl")
        entry = peers.ensure_piping_server()
        self.versions.append(peers.piping_version())
        proc, port = peers.start_piping_server(self.h, entry)

        def once(src: str, size: int, digest: str, tag: str) -> Sample:
            url = f"http://127.0.0.1:{port}/{tag}-{secrets.token_hex(8)}"
            out = self.h.path(f"out-{tag}.bin")
            before = cpu_seconds(proc.pid)
            t0 = time.monotonic()
            sender = self.h.spawn([curl, "-sS", "--fail", "-T", src, url], f"curl-send-{tag}")
            receiver = self.h.spawn([curl, "-sS", "--fail", "-o", out, url], f"curl-receive-{tag}")
            rc_r, _ = wait_exit(receiver, self.timeout)
            seconds = time.monotonic() - t0
            rc_s, _ = wait_exit(sender, 30)
            cpu = cpu_seconds(proc.pid) - before
            if rc_r or rc_s:
                say(f"[speed] piping {tag}: curl exits {rc_s} (send), {rc_r} (receive)")
            return Sample(seconds, rc_r == rc_s == 0 and self.check(out, size, digest), cpu)

        self.rows.append(Row("6", "piping-server (node): `curl -T FILE URL` → `curl URL -o OUT`",
                             "both curls start → receiving curl exits", once, self.args.repeat,
                             peak_rss_kib=lambda: memory_kib(proc.pid).get("VmHWM")))

    def add_wormhole(self) -> None:
        peers.ensure_python_peers()
        self.versions.append(peers.peer_versions())
        _, mailbox_port = peers.start_mailbox(self.h)
        transit, transit_port = peers.start_transit_relay(self.h, "transit-wormhole")
        common = [peers.peers_bin("wormhole"), "--relay-url", f"ws://127.0.0.1:{mailbox_port}/v1",
                  "--transit-helper", f"tcp:127.0.0.1:{transit_port}"]
        nameplates = iter(range(100, 10**6))

        def once(src: str, size: int, digest: str, tag: str) -> Sample:
            code = f"{next(nameplates)}-guitarist-revenge"
            out = self.h.path(f"out-{tag}.bin")
            before = cpu_seconds(transit.pid)
            t0 = time.monotonic()
            sender = self.h.spawn([*common, "send", "--no-listen", "--hide-progress", "--code", code, src],
                                  f"wormhole-send-{tag}")
            receiver = self.h.spawn([*common, "receive", "--no-listen", "--hide-progress", "--accept-file",
                                     "-o", out, code], f"wormhole-receive-{tag}")
            rc_r, _ = wait_exit(receiver, self.timeout)
            seconds = time.monotonic() - t0
            rc_s, _ = wait_exit(sender, 60)
            cpu = cpu_seconds(transit.pid) - before
            if rc_r or rc_s:
                say(f"[speed] wormhole {tag}: exits {rc_s} (send), {rc_r} (receive):\n"
                    f"{self.h.log_tail(f'wormhole-receive-{tag}', 5)}")
            return Sample(seconds, rc_r == rc_s == 0 and self.check(out, size, digest), cpu)

        self.rows.append(Row("7", "magic-wormhole, encrypted: `wormhole send --no-listen` → its mailbox and "
                             "transit relay → `wormhole receive --no-listen --accept-file`",
                             "both start → receiver exits", once, self.args.wormhole_repeat or self.args.repeat,
                             peak_rss_kib=lambda: memory_kib(transit.pid).get("VmHWM")))

    def add_e2e(self, warm: str) -> None:
        say("[speed] priming the bytecode cache with a throwaway relay and transfer")
        prime_bytecode(self.h, warm)
        mode = "splice" if "splice" in self.forwarding_modes else ""
        relay = start_relay(self.h, log_name="relay-e2e", options=["--forwarding", mode] if mode else [])

        def once(src: str, size: int, digest: str, tag: str) -> Sample:
            outdir = self.h.path(f"out-{tag}")
            before = cpu_seconds(relay.pid)
            t0 = time.monotonic()
            sender = spawn_sender(self.h, relay, src, tag)
            receiver = start_receiver(self.h, relay, read_code(self.h, sender, tag), outdir, tag)
            rc_r, _ = wait_exit(receiver, self.timeout)
            seconds = time.monotonic() - t0
            rc_s, _ = wait_exit(sender, 60)
            cpu = cpu_seconds(relay.pid) - before
            if rc_r or rc_s:
                say(f"[speed] ours e2e {tag}: exits {rc_s} (send), {rc_r} (receive):\n{self.h.log_tail(f'receive-{tag}', 5)}")
            intact = rc_r == rc_s == 0 and self.check(os.path.join(outdir, os.path.basename(src)), size, digest)
            return Sample(seconds, intact, cpu)  # run_row removes outdir

        where = f"`--forwarding {mode}`" if mode else "default forwarding"
        self.rows.append(Row("8", f"ours, encrypted, CLI to CLI: `twisted_relay.send` → relay ({where}) → "
                             "`twisted_relay.receive`", "sender starts → receiver exits", once, self.args.repeat,
                             peak_rss_kib=lambda: memory_kib(relay.pid).get("VmHWM")))

    # -- running -----------------------------------------------------------------

    def run_row(self, row: Row, src: str, size: int, digest: str, tag: str) -> Sample:
        """One run; a failure becomes a failed sample, and whatever the run
        started is stopped, so the other rows go on."""
        started = len(self.h.procs)
        try:
            return row.run_once(src, size, digest, tag)
        except BenchError as e:
            say(f"[speed] row {row.number} run {tag} failed: {e}")
            return Sample(float("nan"), False)
        finally:
            for proc in self.h.procs[started:]:
                self.h.stop(proc, grace=2)
            for name in os.listdir(self.h.dir):
                if name.startswith(f"out-{tag}"):
                    subprocess.run(["rm", "-rf", self.h.path(name)])


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1 or args.size < 1 or (args.wormhole_repeat is not None and args.wormhole_repeat < 1):
        raise BenchError("--repeat, --wormhole-repeat and --size must be positive")
    if args.tree:
        set_tree(args.tree)
    keys = parse_only(args.only)
    tree_line = describe_tree()
    size = args.size
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    with Harness("speed", need_bytes=3 * size + 2 * WARMUP_SIZE + 256 * MiB, keep=args.keep) as h:
        b = Bench(h, args)
        src, warm = h.path("file.bin"), h.path("warmup.bin")
        say(f"[speed] writing {human_size(size)} and a {human_size(WARMUP_SIZE)} warm-up file")
        pool = None if args.urandom else random_pool()
        digest = make_file(src, size, seed=1, pool=pool)
        warm_digest = make_file(warm, WARMUP_SIZE, seed=2, pool=pool)
        if {"ours", "e2e"} & set(keys):
            b.forwarding_modes = ["splice", "copy"] if relay_supports("--forwarding") else []
            if not b.forwarding_modes:
                say("[speed] this tree's relay has no --forwarding option: measuring its default forwarding only")
        for key in keys:
            before = len(b.rows)
            try:
                b.add_e2e(warm) if key == "e2e" else getattr(b, f"add_{key}")()
            except BenchError as e:
                say(f"[speed] row {key} cannot run: {e}")
                b.rows.append(Row(str(ROW_KEYS.index(key) + 1), key, "", lambda *a: Sample(0, False), 0,
                                  failure=str(e).splitlines()[0]))
            for row in b.rows[before:]:
                row.key = row.key or key

        say(f"[speed] touching {human_size(2 * size)} of tmpfs once, so no row pays for first-touched memory")
        touch_memory(h.path("touch.bin"), 2 * size)
        # A small run of each path first, so that one-time costs (imports,
        # first allocations, JIT in node) are not charged to the first repeat.
        for row in b.rows:
            if not row.failure and not b.run_row(row, warm, WARMUP_SIZE, warm_digest, f"warm-{row.key}").intact:
                row.failure = "the warm-up run failed (see stderr)"
        # Interleaved, so drifting load affects every row alike.
        for rep in range(max(r.repeats for r in b.rows)):
            for row in b.rows:
                if row.failure or rep >= row.repeats:
                    continue
                sample = b.run_row(row, src, size, digest, f"{row.key}-{rep}")
                row.samples.append(sample)
                state = f"{size / sample.seconds / 1e6:8.1f} MB/s" if sample.intact else "FAILED"
                say(f"[speed] run {rep + 1}/{row.repeats} row {row.number} {row.key}: {state}")
        for row in b.rows:
            if not row.failure:
                try:
                    row.peak_kib = row.peak_rss_kib()
                except OSError:
                    row.peak_kib = None

    minutes = (time.monotonic() - started) / 60
    print(f"### Speed: one {human_size(size)} file on every path, on 127.0.0.1, files on tmpfs\n")
    print(f"{machine_line()} ({load_before:.2f} at the start), {minutes:.1f} min in all  \n{tree_line}  ")
    print(f"peers: {'; '.join(b.versions + [tool_versions()]) or '(none run)'}\n")
    print(markdown_table(["#", "path", "clock", "MB/s median", "min – max", "every run", "intact",
                          "middle CPU-s/GiB median [min–max]", "middle peak RSS, MiB", "ratio vs target"],
                         [row_cells(r, size) for r in b.rows] + ratio_rows(b.rows, size)))
    ok = all(not r.failure and all(s.intact for s in r.samples) for r in b.rows)
    return 0 if ok else 1


def touch_memory(path: str, size: int) -> None:
    """Write C{size} bytes to tmpfs and delete them. On a VM, memory the
    guest touches for the first time (or that the host reclaimed) costs a
    fault to the host per page; without this, the first repeat of the first
    rows ran at a fifth of the speed of the next ones here."""
    block = bytes(8 * MiB)
    with open(path, "wb") as f:
        for _ in range(0, size, len(block)):
            f.write(block)
    os.unlink(path)


def tool_versions() -> str:
    """socat, iperf3, node and curl versions, for the header line."""
    out = []
    for argv in (["socat", "-V"], ["iperf3", "--version"], ["node", "--version"], ["curl", "--version"]):
        try:
            text = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        except OSError:
            continue
        m = re.search(r"\d+\.\d+(?:\.\d+)*", text if argv[0] != "socat" else text[text.find("version"):])
        out.append(f"{argv[0]} {m.group(0) if m else '?'}")
    return ", ".join(out)


def rates(row: Row, size: int) -> list[float]:
    return [size / s.seconds / 1e6 for s in row.samples if s.intact]


def cpu_per_gib(row: Row, size: int) -> list[float]:
    return [s.middle_cpu * GiB / size for s in row.samples if s.intact and s.middle_cpu is not None]


def row_cells(row: Row, size: int) -> list[str]:
    clock = {"1": "iperf3", "6": "CLI", "7": "CLI", "8": "CLI"}.get(row.number, "data")
    if row.failure:
        return [row.number, row.key, "", f"not run: {row.failure}", "", "", "0/0", "", "", ""]
    r, c = rates(row, size), cpu_per_gib(row, size)
    every = ", ".join(f"{size / s.seconds / 1e6:.0f}" if s.intact else "failed" for s in row.samples)
    return [
        row.number, row.label, clock,
        f"{statistics.median(r):.0f}" if r else "—",
        f"{min(r):.0f} – {max(r):.0f}" if r else "—",
        every,
        f"{sum(s.intact for s in row.samples)}/{len(row.samples)}",
        f"{statistics.median(c):.2f} [{min(c):.2f}–{max(c):.2f}]" if c else "—",
        f"{row.peak_kib / 1024:.1f}" if row.peak_kib else "—",
        "",
    ]


def ratio_rows(rows: list[Row], size: int) -> list[list[str]]:
    """The Speed issue's targets, from the medians of this run."""
    by_key = {r.key: r for r in rows if not r.failure}
    ours = by_key.get("ours-splice") or by_key.get("ours")
    ours_name = "our relay (splice)" if "ours-splice" in by_key else "our relay"

    def median_rate(row: Row | None) -> float | None:
        r = rates(row, size) if row else []
        return statistics.median(r) if r else None

    def verdict(value: float | None, target: float, at_least: bool, fmt: str = "{:.2f}") -> str:
        if value is None:
            return "not measured"
        met = value >= target if at_least else value <= target
        return f"{fmt.format(value)} (target {'≥' if at_least else '≤'} {target:g}): {'**met**' if met else '**not met**'}"

    def ratio(a: Row | None, b: Row | None) -> float | None:
        x, y = median_rate(a), median_rate(b)
        return x / y if x and y else None

    c = cpu_per_gib(ours, size) if ours else []
    lines = [
        ("R1", f"{ours_name} / socat, throughput", verdict(ratio(ours, by_key.get("socat")), 1.2, True)),
        ("R2", f"{ours_name} CPU-s per GiB", verdict(statistics.median(c) if c else None, 0.3, False)),
        ("R3", "ours e2e / magic-wormhole e2e, throughput", verdict(ratio(by_key.get("e2e"), by_key.get("wormhole")), 4, True)),
        ("R4", "ours e2e / piping-server, throughput", verdict(ratio(by_key.get("e2e"), by_key.get("piping")), 1.0, True)),
    ]
    return [[n, label, "ratio", "", "", "", "", "", "", v] for n, label, v in lines]


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("bench/speed.py", run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
