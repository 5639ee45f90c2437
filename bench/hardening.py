"""
How the relay ends connections it should not keep, and how it stops.

(a) Handshake timeout: N connections that never speak, and N that say HELLO
    and then nothing, against a relay started with ``--handshake-timeout``.
    When does the relay close each one, and what does it say first?
(b) SIGTERM drain: a large transfer (real send/receive CLIs) is streaming
    and a second sender waits for its receiver when the relay gets SIGTERM.
    Are new connections refused, is the waiting sender told, does the
    transfer finish intact, how long until the relay exits and with what
    status? Then the same with ``--drain-timeout 1`` and a receiver that is
    SIGSTOPped, so the transfer cannot finish and must be cut.

    python bench/hardening.py [-n 50] [--handshake-timeout 2] [--size 256M]

Prints Markdown tables on stdout; progress goes to stderr. Exit status 0
when every figure matches what docs/protocol.rst (5.3, 5.7) says, 1
otherwise (the table says which row).
"""

from __future__ import annotations

import argparse
import errno
import glob
import os
import re
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    add_scratch_options,
    run_main,
    BenchError,
    Harness,
    MiB,
    Relay,
    describe_tree,
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
    spawn_sender,
    start_receiver,
    start_relay,
    start_sender,
    wait_exit,
)

# The protocol as docs/protocol.rst writes it (2. Framing, 9.1 Error codes).
HELLO_V1 = struct.pack("!IBH", 3, 0x01, 1)
WELCOME, ERROR = 0x02, 0x07
ERROR_NAMES = {1: "PROTOCOL_ERROR", 8: "SHUTTING_DOWN", 9: "TIMEOUT"}
TIMEOUT_CODE, TIMEOUT_TEXT = 9, "handshake timed out"

#: The relay's fixed close grace (docs/protocol.rst 5.2): how long after
#: close(CODE) it aborts a client that does not read.
CLOSE_GRACE = 10.0

#: The client exit codes this benchmark expects (README.rst, Exit codes).
EXIT_OK, EXIT_UNREACHABLE, EXIT_PEER_GONE, EXIT_SHUTTING_DOWN = 0, 3, 6, 7



def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bench/hardening.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--connections", type=int, default=50, help="silent connections per group (default 50)")
    p.add_argument("--handshake-timeout", type=float, default=2.0, help="the relay's --handshake-timeout in (a) (default 2)")
    p.add_argument("--size", type=parse_size, default=parse_size("256M"), help="size of the file in flight at SIGTERM in (b) (default 256M)")
    p.add_argument("--cut-drain", type=float, default=1.0, help="the relay's --drain-timeout in (b)'s second run (default 1)")
    p.add_argument("--timeout", type=float, default=120.0, help="give up on any one wait after this many seconds (default 120)")
    add_scratch_options(p, urandom=False)
    return p


# -- helpers --------------------------------------------------------------------------


def relay_log(h: Harness, log_name: str) -> str:
    with open(h.path(f"{log_name}.log"), "rb") as f:
        return f.read().decode("utf-8", "replace")


def accepted(h: Harness, log_name: str) -> int:
    """Connections the relay has logged as opened."""
    return len(re.findall(r" connected$", relay_log(h, log_name), re.MULTILINE))


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete frames in C{data}, and whatever trails them."""
    frames = []
    offset = 0
    while len(data) - offset >= 5:
        (length,) = struct.unpack_from("!I", data, offset)
        if not 1 <= length <= 65536 or len(data) - offset < 4 + length:
            break
        frames.append((data[offset + 4], data[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return frames, data[offset:]


def describe_error(value: bytes) -> str:
    if len(value) < 2:
        return f"malformed ERROR {value!r}"
    (code,) = struct.unpack_from("!H", value)
    return f"{ERROR_NAMES.get(code, code)} {value[2:].decode('utf-8', 'replace')!r}"


def last_line(h: Harness, log_name: str) -> str:
    """The last line a client wrote on stderr."""
    lines = [line for line in h.log_tail(log_name, 20).splitlines() if line.strip()]
    return lines[-1] if lines else "(nothing)"


def seconds(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def mark(ok: bool) -> str:
    return "" if ok else " **(unexpected)**"


# -- (a) handshake timeout ------------------------------------------------------------


@dataclass
class Silent:
    """One connection that says nothing (after an optional HELLO)."""

    sock: socket.socket
    connected_at: float
    received: bytes = b""
    closed_at: float | None = None
    how: str = ""


@dataclass
class GroupResult:
    name: str
    conns: list[Silent] = field(default_factory=list)
    first_connect: float = 0.0


def silent_group(h: Harness, relay: Relay, log_name: str, n: int, hello: bool, timeout: float) -> GroupResult:
    """Open C{n} connections (paced so the relay's listen backlog never
    overflows), optionally say HELLO on each, then read until the relay
    closes every one of them or C{timeout} passes."""
    result = GroupResult("HELLO, then silent" if hello else "silent (nothing sent)")
    seen = accepted(h, log_name)
    batch = 10
    for start in range(0, n, batch):
        for _ in range(min(batch, n - start)):
            s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
            conn = Silent(s, time.monotonic())
            if hello:
                s.sendall(HELLO_V1)
            s.setblocking(False)
            result.conns.append(conn)
        # Twisted listens with a backlog of 50; wait for the relay to take
        # this batch so that none waits in the kernel's queue, unaccepted.
        deadline = time.monotonic() + 10
        while accepted(h, log_name) < seen + len(result.conns):
            if time.monotonic() > deadline:
                raise BenchError("the relay did not accept the connections")
            time.sleep(0.005)
    result.first_connect = result.conns[0].connected_at

    sel = selectors.DefaultSelector()
    for conn in result.conns:
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    open_count = len(result.conns)
    deadline = time.monotonic() + timeout
    while open_count and time.monotonic() < deadline:
        for key, _ in sel.select(0.05):
            conn = key.data
            try:
                chunk = conn.sock.recv(65536)
            except ConnectionResetError:
                chunk, conn.how = b"", "RST"
            if chunk:
                conn.received += chunk
                continue
            conn.closed_at = time.monotonic()
            conn.how = conn.how or "FIN"
            sel.unregister(conn.sock)
            conn.sock.close()
            open_count -= 1
    sel.close()
    for conn in result.conns:
        if conn.closed_at is None:
            conn.sock.close()
    return result


def group_row(result: GroupResult, hello: bool, handshake_timeout: float) -> tuple[list[object], bool]:
    closed = [c for c in result.conns if c.closed_at is not None]
    after = [c.closed_at - c.connected_at for c in closed]  # type: ignore[operator]
    all_closed = max((c.closed_at for c in closed), default=result.first_connect) - result.first_connect  # type: ignore[type-var]
    outcomes = []
    welcomed = 0
    for c in result.conns:
        frames, rest = parse_frames(c.received)
        if frames and frames[0][0] == WELCOME:
            welcomed += 1
            frames = frames[1:]
        if len(frames) == 1 and frames[0][0] == ERROR and not rest:
            outcomes.append(describe_error(frames[0][1]))
        elif frames or rest:
            outcomes.append(f"unexpected bytes {c.received[:20]!r}")
    errors = _count(outcomes)
    n = len(result.conns)
    got_error = sum(count for text, count in errors.items() if text.startswith("TIMEOUT"))
    hows = ", ".join(f"{k} {v}" for k, v in sorted(_count(c.how for c in closed).items()))
    expected_error = f"TIMEOUT {TIMEOUT_TEXT!r}"
    # docs/protocol.rst 5.3: NEW or GREETED + handshake timeout ->
    # close(TIMEOUT): an ERROR frame, then an orderly close, whether or not
    # the client said HELLO.
    problems = []
    if len(closed) != n:
        problems.append(f"{n - len(closed)} still open")
    if errors != {expected_error: n}:
        problems.append("not one ERROR TIMEOUT each")
    if welcomed != (n if hello else 0):
        problems.append("WELCOME count")
    # The relay's timer starts when it accepts, which on a busy machine can
    # be a little before our connect() returns and we read the clock.
    early = [a for a in after if a < handshake_timeout - 0.05]
    late = [a for a in after if a >= handshake_timeout + 1.0]
    if early or late:
        problems.append(f"{len(early)} closed early, {len(late)} late")
    ok = not problems
    error_cell = "; ".join(f"{count}× {text}" for text, count in errors.items()) or "none"
    row = [
        result.name,
        f"{len(closed)}/{n} ({hows or '-'})",
        f"{got_error}/{n}: {error_cell}" + (f"; WELCOME first {welcomed}/{n}" if hello else ""),
        seconds(after),
        f"{all_closed:.2f}",
    ]
    row[-1] += "" if ok else f" **(unexpected: {', '.join(problems)})**"
    return row, ok


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def run_handshake(h: Harness, args: argparse.Namespace) -> tuple[str, bool]:
    log_name = "relay-handshake"
    relay = start_relay(h, log_name=log_name, options=["--handshake-timeout", f"{args.handshake_timeout:g}"])
    say(f"[hardening] (a) relay pid {relay.pid} on {relay.address}, --handshake-timeout {args.handshake_timeout:g}")
    wait = args.handshake_timeout + CLOSE_GRACE + 5
    rows, ok = [], True
    for hello in (False, True):
        say(f"[hardening] (a) {args.connections} connections, {'HELLO then ' if hello else ''}silent")
        result = silent_group(h, relay, log_name, args.connections, hello, wait)
        row, good = group_row(result, hello, args.handshake_timeout)
        rows.append(row)
        ok = ok and good
    alive = relay.proc.poll() is None
    h.stop(relay.proc)
    table = markdown_table(
        [
            "connections",
            "closed by the relay (how)",
            "ERROR frame before the close",
            "closed after connect, s: min / median / max",
            "first connect → all closed, s",
        ],
        rows,
    )
    note = (
        f"Relay started with `--handshake-timeout {args.handshake_timeout:g}`; {args.connections} connections per row, "
        f"opened in batches of 10 as fast as the relay accepts them. Expected (docs/protocol.rst 5.3): each closed "
        f"{args.handshake_timeout:g} s (+ < 1 s) after connecting, after an ERROR TIMEOUT {TIMEOUT_TEXT!r}."
        + ("" if alive else " **The relay died during the run.**")
    )
    return f"{note}\n\n{table}", ok and alive


# -- (b) SIGTERM drain ----------------------------------------------------------------


@dataclass
class DrainRun:
    """What one SIGTERM run observed."""

    title: str
    rows: dict[str, tuple[str, bool]] = field(default_factory=dict)

    def add(self, key: str, value: str, ok: bool = True) -> None:
        self.rows[key] = (value, ok)


def part_size(outdir: str) -> int:
    sizes = [os.path.getsize(p) for p in glob.glob(os.path.join(outdir, ".filerelay-*.part"))]
    return max(sizes, default=0)


def wait_streaming(receiver: subprocess.Popen[bytes], outdir: str, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        size = part_size(outdir)
        if size >= at_least:
            return size
        if receiver.poll() is not None:
            raise BenchError(f"the receiver exited ({receiver.returncode}) before the transfer was mid-stream; "
                             "use a larger --size")
        if time.monotonic() > deadline:
            raise BenchError(f"the transfer did not reach {at_least} bytes in {timeout:.0f} s")
        time.sleep(0.005)


class ExitWatch(threading.Thread):
    """Reaps a process and notes when it exited."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.exited_at: float | None = None

    def run(self) -> None:
        self.proc.wait()
        self.exited_at = time.monotonic()


def try_connect(port: int) -> str:
    """One connection attempt: "refused", or what an accepted one got."""
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return f"error {errno.errorcode.get(e.errno or 0, e)}"
    data, end = b"", "FIN"
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        end = "RST"
    except OSError as e:
        end = f"error {errno.errorcode.get(e.errno or 0, e)}"
    finally:
        s.close()
    frames, _ = parse_frames(data)
    said = ", ".join(describe_error(v) if t == ERROR else f"type {t}" for t, v in frames) or "no frame"
    return f"accepted, then {said}, {end}"


def probe_after_term(
    relay: Relay, watch: ExitWatch, t_term: float, on_first_refusal: Callable[[], object],
) -> tuple[float | None, int, dict[str, int]]:
    """Connect in a tight loop from SIGTERM until the first refusal (then
    call C{on_first_refusal}), then every 20 ms until the relay exits.
    Returns the delay to the first refusal, how many were accepted before
    it, and the outcome of every attempt."""
    first_refused = None
    accepted_before = 0
    after: dict[str, int] = {}
    while watch.exited_at is None:
        outcome = try_connect(relay.port)
        now = time.monotonic()
        if first_refused is None:
            if outcome == "refused":
                first_refused = now - t_term
                on_first_refusal()
            else:
                accepted_before += 1
                after[f"before the first refusal: {outcome}"] = after.get(f"before the first refusal: {outcome}", 0) + 1
                time.sleep(0.001)
            continue
        after[outcome] = after.get(outcome, 0) + 1
        time.sleep(0.02)
    return first_refused, accepted_before, after


def drain_run(
    h: Harness, args: argparse.Namespace, tag: str, source: str, digest: str, small: str, cut: bool,
) -> DrainRun:
    """One relay, one waiting sender, one big transfer, SIGTERM mid-stream.
    With C{cut}, the receiver is SIGSTOPped first and the relay's drain
    timeout is L{args.cut_drain}."""
    drain = args.cut_drain if cut else 60.0
    run = DrainRun(f"--drain-timeout {drain:g}" + (", receiver SIGSTOPped" if cut else " (default)"))
    log_name = f"relay-{tag}"
    relay = start_relay(h, log_name=log_name, options=["--drain-timeout", f"{drain:g}"] if cut else [])
    say(f"[hardening] (b) {run.title}: relay pid {relay.pid} on {relay.address}")

    waiting, _ = start_sender(h, relay, small, f"{tag}-waiting")
    sender, code = start_sender(h, relay, source, f"{tag}-big")
    outdir = h.path(f"out-{tag}")
    receiver = start_receiver(h, relay, code, outdir, f"{tag}-big")
    at_term = wait_streaming(receiver, outdir, min(args.size // 8, 32 * MiB), args.timeout)
    if cut:
        receiver.send_signal(signal.SIGSTOP)
        time.sleep(0.3)  # let the relay's buffers towards the receiver fill
        at_term = part_size(outdir)
    watch = ExitWatch(relay.proc)
    watch.start()
    receiver_watch = ExitWatch(receiver)
    receiver_watch.start()
    mid_stream = receiver.poll() is None and receiver_watch.exited_at is None
    t_term = time.monotonic()
    relay.proc.send_signal(signal.SIGTERM)
    late: list[subprocess.Popen[bytes]] = []
    # A sender CLI started as soon as the port is closed, while the relay drains.
    first_refused, accepted_before, probes = probe_after_term(
        relay, watch, t_term, lambda: late.append(spawn_sender(h, relay, small, f"{tag}-late"))
    )
    if not late:
        late.append(spawn_sender(h, relay, small, f"{tag}-late"))
    watch.join(args.timeout)
    if watch.exited_at is None:
        raise BenchError(f"the relay did not exit {args.timeout:.0f} s after SIGTERM:\n{h.log_tail(log_name)}")
    exit_after = watch.exited_at - t_term
    status = relay.proc.returncode
    if cut:
        receiver.send_signal(signal.SIGCONT)

    receiver_watch.join(args.timeout)
    if receiver_watch.exited_at is None:
        raise BenchError(f"the receiver did not exit:\n{h.log_tail(f'receive-{tag}-big')}")
    rc_receiver = receiver.returncode
    rc_sender = wait_exit(sender, args.timeout)[0]
    rc_waiting = wait_exit(waiting, args.timeout)[0]
    rc_late = wait_exit(late[0], args.timeout)[0]
    out = os.path.join(outdir, os.path.basename(source))
    intact = os.path.isfile(out) and sha256_file(out) == digest
    leftovers = sorted(os.listdir(outdir)) if os.path.isdir(outdir) else []
    log = relay_log(h, log_name)

    run.add("transfer at SIGTERM", f"{human_size(args.size)}, receiver had written {at_term / MiB:.0f} MiB"
            + (" and was stopped" if cut else "") + ("" if mid_stream else "; the receiver had already exited"),
            mid_stream)
    refused = probes.get("refused", 0)
    others = {k: v for k, v in probes.items() if k != "refused"}
    run.add(
        "new connections after SIGTERM",
        (f"first refused {first_refused * 1000:.1f} ms after SIGTERM ({accepted_before} accepted before); "
         if first_refused is not None else "never refused; ")
        + f"then {refused} of {refused + sum(v for k, v in others.items() if not k.startswith('before'))} refused"
        + (f"; {'; '.join(f'{v}× {k}' for k, v in others.items())}" if others else ""),
        first_refused is not None and not any(not k.startswith("before") for k in others),
    )
    run.add("new sender started after SIGTERM: exit, stderr", f"{rc_late}, `{last_line(h, f'send-{tag}-late')}`",
            rc_late == EXIT_UNREACHABLE)
    run.add("sender waiting since before SIGTERM: exit, stderr", f"{rc_waiting}, `{last_line(h, f'send-{tag}-waiting')}`",
            rc_waiting == EXIT_SHUTTING_DOWN)
    expect = (EXIT_PEER_GONE, EXIT_PEER_GONE) if cut else (EXIT_OK, EXIT_OK)
    run.add("in-flight transfer: receiver / sender exit", f"{rc_receiver} / {rc_sender}",
            (rc_receiver, rc_sender) == expect)
    run.add("in-flight transfer: last stderr line (receiver; sender)",
            f"`{last_line(h, f'receive-{tag}-big')}`; `{last_line(h, f'send-{tag}-big')}`")
    run.add("in-flight transfer completed intact (SHA-256)", "yes" if intact else "no", intact != cut)
    run.add("output folder afterwards", ", ".join(leftovers) or "empty",
            leftovers == ([] if cut else [os.path.basename(source)]))
    run.add("SIGTERM → in-flight receiver exit", f"{receiver_watch.exited_at - t_term:.2f} s"
            + (" (it was stopped until the relay exited)" if cut else ""))
    limit = drain + 1.0 if cut else 60.0
    run.add("SIGTERM → relay exit", f"{exit_after:.2f} s", exit_after < limit)
    run.add("relay exit status", str(status), status == 0)
    drain_lines = [line.split("] ", 1)[-1] for line in log.splitlines() if "drain" in line]
    clean = "Server Shut Down." in log and "Traceback" not in log and "Unhandled" not in log
    run.add("relay log", ("; ".join(drain_lines) or "no drain line") + ("" if clean else "; **traceback or no 'Server Shut Down.'**"),
            clean)
    return run


def run_drain(h: Harness, args: argparse.Namespace) -> tuple[str, bool]:
    os.makedirs(h.path("in"))
    say(f"[hardening] (b) writing a {human_size(args.size)} file")
    pool = random_pool()
    source = h.path("in", "big.bin")
    digest = make_file(source, args.size, seed=1, pool=pool)
    small = h.path("in", "small.bin")
    make_file(small, MiB, seed=2, pool=pool)
    runs = [
        drain_run(h, args, "drain", source, digest, small, cut=False),
        drain_run(h, args, "cut", source, digest, small, cut=True),
    ]
    expected = {
        "new connections after SIGTERM": "refused (the port stopped listening)",
        "new sender started after SIGTERM: exit, stderr": f"{EXIT_UNREACHABLE} (the relay cannot be reached)",
        "sender waiting since before SIGTERM: exit, stderr": f"{EXIT_SHUTTING_DOWN} (the relay is shutting down)",
        "in-flight transfer: receiver / sender exit": f"{EXIT_OK} / {EXIT_OK}; cut: {EXIT_PEER_GONE} / {EXIT_PEER_GONE}",
        "in-flight transfer completed intact (SHA-256)": "yes; cut: no",
        "output folder afterwards": "the file; cut: empty (no .part left)",
        "SIGTERM → relay exit": "when the transfer ends (< 60 s); cut: < drain + 1 s",
        "relay exit status": "0",
        "relay log": "Server Shut Down., no traceback",
    }
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.rows if k not in keys]
    rows = []
    ok = True
    for key in keys:
        row: list[object] = [key]
        for run in runs:
            value, good = run.rows.get(key, ("-", True))
            row.append(value + mark(good))
            ok = ok and good
        row.append(expected.get(key, ""))
        rows.append(row)
    table = markdown_table(["measurement", *(run.title for run in runs), "expected"], rows)
    return table, ok


# -- main -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if args.connections < 1 or args.handshake_timeout <= 0 or args.size < 64 * MiB or args.cut_drain <= 0:
        raise BenchError("--connections and timeouts must be positive, --size at least 64M")
    if args.tree:
        set_tree(args.tree)
    tree_line = describe_tree()
    with Harness("hardening", need_bytes=2 * args.size + 64 * MiB, keep=args.keep) as h:
        warm = h.path("warmup.bin")
        make_file(warm, MiB, seed=-1)
        say(f"[{h.name}] priming the bytecode cache with a throwaway relay and transfer")
        prime_bytecode(h, warm)
        handshake, ok_a = run_handshake(h, args)
        drain, ok_b = run_drain(h, args)
    print(f"### Relay hardening: handshake timeout and SIGTERM drain\n\n{machine_line()}  \n{tree_line}\n")
    print(f"#### (a) Connections that never finish the handshake\n\n{handshake}\n")
    print(f"#### (b) SIGTERM while a {human_size(args.size)} transfer streams and a sender waits\n\n{drain}")
    return 0 if ok_a and ok_b else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("bench/hardening.py", run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
