"""
Many concurrent transfers through one relay: does every file arrive, and
what does the relay spend on them (memory, CPU) and deliver (throughput)?

Starts one relay and a few worker processes. Each worker runs its share of
the N transfers at once on its own Twisted reactor, with the real client
classes (L{SenderProtocol} and L{ReceiverProtocol}) rather than one CLI
process per end: 2N interpreters would mostly measure Python start-up, and
take gigabytes. A sender's code goes straight to its paired receiver in the
same worker. Each worker hashes every received file, deletes it, and
reports its results as JSON on stdout; the benchmark checks them against
the files' known SHA-256 and reads the relay's memory and CPU from /proc.

    python bench/load.py [-n 200] [--size 4M] [--workers 2] [--timeout 300]
                         [--forwarding auto|splice|copy]

Prints a Markdown table on stdout; progress goes to stderr. Exit status 0
when every transfer arrived intact, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import signal
import statistics
import sys
import time
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    react_quietly,
    worker_or_main,
    add_scratch_options,
    BenchError,
    Harness,
    MiB,
    cpu_seconds,
    describe_tree,
    human_size,
    machine_line,
    make_file,
    markdown_table,
    memory_kib,
    need_open_files,
    parse_size,
    prime_bytecode,
    raise_open_files_limit,
    random_pool,
    relay_supports,
    say,
    set_tree,
    start_relay,
    wait_exit,
)
from memory import Sampler  # noqa: E402  (the memory benchmark's RSS sampler)

#: Seconds a worker may take to start, import and run its warm-up transfer.
READY_TIMEOUT = 120.0

#: What a worker prints on stdout once warmed up and waiting for SIGUSR1.
READY = "ready"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bench/load.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--transfers", type=int, default=200, help="concurrent transfers (default 200)")
    p.add_argument("--size", type=parse_size, default=parse_size("4M"), help="bytes per file, e.g. 4M (default)")
    p.add_argument("--workers", type=int, default=2, help="client worker processes sharing the transfers (default 2)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between relay RSS samples (default 0.05)")
    p.add_argument("--timeout", type=float, default=300.0, help="give up on the transfers after this many seconds (default 300)")
    p.add_argument("--forwarding", choices=("auto", "splice", "copy"),
                   help="pass --forwarding to the relay (default: the relay's own default); needs a relay that has it")
    add_scratch_options(p)
    return p


# -- the orchestrator ----------------------------------------------------------------


class _Lines:
    """Reads the workers' stdout pipes without blocking on any one of them."""

    def __init__(self, procs: Sequence[Any]) -> None:
        self.procs = list(procs)
        self.data = [b""] * len(procs)
        self.eof = [False] * len(procs)
        self._sel = selectors.DefaultSelector()
        for k, p in enumerate(procs):
            self._sel.register(p.stdout, selectors.EVENT_READ, k)

    def close(self) -> None:
        self._sel.close()

    def pump(self, until: float) -> bool:
        """Read whatever is there, waiting at most until C{until}
        (monotonic); False once the deadline has passed."""
        left = until - time.monotonic()
        if left <= 0:
            return False
        for key, _ in self._sel.select(min(left, 0.5)):
            k = key.data
            chunk = os.read(self.procs[k].stdout.fileno(), 65536)
            if chunk:
                self.data[k] += chunk
            else:
                self.eof[k] = True
                self._sel.unregister(self.procs[k].stdout)
        return True

    def first_line(self, k: int) -> str | None:
        line, nl, _ = self.data[k].partition(b"\n")
        return line.decode("utf-8", "replace") if nl else None


def _worker_ready(h: Harness, workers: list[Any], lines: _Lines) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        firsts = [lines.first_line(k) for k in range(len(workers))]
        for k, first in enumerate(firsts):
            if first is not None and first != READY:
                raise BenchError(f"worker {k} failed to get ready: {first}\n{h.log_tail(f'worker-{k}')}")
            if first is None and lines.eof[k]:
                raise BenchError(f"worker {k} exited before it was ready:\n{h.log_tail(f'worker-{k}')}")
        if all(f == READY for f in firsts):
            return
        if not lines.pump(deadline):
            late = [k for k, f in enumerate(firsts) if f is None]
            raise BenchError(f"workers {late} not ready after {READY_TIMEOUT:.0f} s:\n{h.log_tail(f'worker-{late[0]}')}")


def listen_overflows() -> int | None:
    """The kernel's TcpExt ListenOverflows counter (system-wide): SYNs or
    handshake ACKs dropped because a listener's accept queue was full. The
    client then retransmits after about a second."""
    try:
        with open("/proc/net/netstat") as f:
            rows = [line.split() for line in f if line.startswith("TcpExt:")]
        return int(dict(zip(rows[0], rows[1]))["ListenOverflows"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


def cpu_busy_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs together, from /proc/stat: the
    whole machine, other people's processes included."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def _summary(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def run(args: argparse.Namespace) -> int:
    n, size, w = args.transfers, args.size, args.workers
    if n < 1 or size < 1 or w < 1 or args.timeout <= 0:
        raise BenchError("--transfers, --size, --workers and --timeout must be positive")
    w = min(w, n)
    if args.tree:
        set_tree(args.tree)
    tree_line = describe_tree()
    relay_options = []
    if args.forwarding:
        if not relay_supports("--forwarding"):
            raise BenchError("this relay has no --forwarding option (twistd filerelay --help)")
        relay_options = ["--forwarding", args.forwarding]
    # Descriptors, inherited by the relay and the workers: the relay holds two
    # sockets per transfer; a worker, per transfer of its share, two sockets,
    # the file it sends and the one it writes.
    need_open_files(max(2 * n, 4 * -(-n // w)) + 256, f"{n} concurrent transfers")
    # Inputs, plus at worst every output at once (each is deleted once hashed).
    need = 2 * n * size + (w + 2) * 2 * MiB + 64 * MiB
    with Harness("load", need_bytes=need, keep=args.keep) as h:
        os.makedirs(h.path("in"))
        say(f"[load] writing {n} files of {human_size(size)}")
        pool = None if args.urandom else random_pool()
        files = [h.path("in", f"file-{i}.bin") for i in range(n)]
        digests = [make_file(path, size, seed=i, pool=pool) for i, path in enumerate(files)]
        prime_file = h.path("in", "prime.bin")
        make_file(prime_file, MiB, seed=-1, pool=pool)
        warm = [(h.path("in", f"warmup-{k}.bin"), make_file(h.path("in", f"warmup-{k}.bin"), MiB, seed=-2 - k, pool=pool))
                for k in range(w)]

        say("[load] priming the bytecode cache with a throwaway relay and transfer")
        prime_bytecode(h, prime_file)
        relay = start_relay(h, options=relay_options)
        start_rss = memory_kib(relay.pid)["VmRSS"]
        say(f"[load] relay pid {relay.pid} on {relay.address}, RSS {start_rss} KiB")

        # Transfers go round-robin to the workers.
        workers = []
        for k in range(w):
            job = {
                "relay": relay.address,
                "timeout": args.timeout,
                "outdir": h.path(f"out-{k}"),
                "warmup": {"path": warm[k][0], "sha256": warm[k][1], "outdir": h.path(f"out-warmup-{k}")},
                "transfers": [{"i": i, "path": files[i]} for i in range(k, n, w)],
            }
            job_path = h.path(f"job-{k}.json")
            with open(job_path, "w") as f:
                json.dump(job, f)
            workers.append(h.spawn([sys.executable, os.path.abspath(__file__), "--worker", job_path], f"worker-{k}", stdout_pipe=True))
        lines = _Lines(workers)
        try:
            # Each worker imports everything and runs one 1 MiB warm-up
            # transfer, so neither its own nor the relay's one-time costs
            # (imports, first allocations) are charged to the measured ones.
            say(f"[load] {w} workers warming up (one 1 MiB transfer each)")
            _worker_ready(h, workers, lines)
            time.sleep(0.5)
            base_samples = []
            for _ in range(10):
                base_samples.append(memory_kib(relay.pid)["VmRSS"])
                time.sleep(0.05)
            baseline = int(statistics.median(base_samples))
            hwm_before = memory_kib(relay.pid)["VmHWM"]

            sampler = Sampler(relay.pid, args.interval)
            sampler.phase = "load"
            overflows_before = listen_overflows()
            load_before = os.getloadavg()[0]
            busy_before = cpu_busy_ticks()
            cpu_before = cpu_seconds(relay.pid)
            sampler.start()
            t_go = time.monotonic()
            for p in workers:
                p.send_signal(signal.SIGUSR1)
            say(f"[load] {n} transfers of {human_size(size)} started in {w} workers; waiting (at most {args.timeout:g} s)")

            # Workers stop their own transfers at --timeout; the margin is for
            # them to report and exit.
            deadline = t_go + args.timeout + 60
            while not all(lines.eof) and lines.pump(deadline):
                pass
            t_eof = time.monotonic()
            cpu_after = cpu_seconds(relay.pid)
            overflows_after = listen_overflows()
            busy_after = cpu_busy_ticks()
            sampler.stop()
            mem = memory_kib(relay.pid)
            stuck = [k for k in range(w) if not lines.eof[k]]
            exits = []
            for k, p in enumerate(workers):
                try:
                    exits.append(wait_exit(p, 1 if k in stuck else 30)[0])
                except BenchError:
                    exits.append(None)
        finally:
            lines.close()
        if relay.proc.poll() is not None:
            raise BenchError(f"the relay died:\n{h.log_tail('relay')}")
        time.sleep(0.5)
        end_rss = memory_kib(relay.pid)["VmRSS"]

        # Gather the workers' reports.
        records: dict[int, dict[str, Any]] = {}
        worker_cpu = 0.0
        worker_hwm = []
        for k in range(w):
            body = lines.data[k].partition(b"\n")[2]
            try:
                report = json.loads(body)
            except ValueError:
                say(f"[load] worker {k} (exit {exits[k]}) sent no report"
                    + (" (still running at the deadline)" if k in stuck else "") + f":\n{h.log_tail(f'worker-{k}')}")
                continue
            worker_cpu += report["cpu"]
            worker_hwm.append(report["maxrss_kib"])
            for r in report["transfers"]:
                records[r["i"]] = r

        intact = 0
        failures: dict[str, int] = {}
        timed_out = 0
        for i in range(n):
            r = records.get(i)
            if r is None:
                why = "no report from its worker"
            elif r.get("timed_out"):
                why = f"still running after --timeout: {r.get('error')}"
                timed_out += 1
            elif r.get("error"):
                why = r["error"]
            elif r.get("size") != size:
                why = f"size {r.get('size')} != {size}"
            elif r.get("sha256") != digests[i]:
                why = "SHA-256 mismatch"
            else:
                intact += 1
                continue
            failures[why] = failures.get(why, 0) + 1
        for why, count in sorted(failures.items(), key=lambda kv: -kv[1]):
            say(f"[load] {count} transfer(s) failed: {why}")

        done = [r for r in records.values() if "t_start" in r and "t_end" in r and not r.get("error")]
        starts = [r["t_start"] for r in records.values() if "t_start" in r]
        ends = [r["t_end"] for r in done]
        wall = (max(ends) - min(starts)) if starts and ends else t_eof - t_go
        durations = [r["t_end"] - r["t_start"] for r in done]
        to_code = [r["t_code"] - r["t_start"] for r in records.values() if "t_code" in r and "t_start" in r]
        to_welcome = [r["t_welcome"] - r["t_start"] for r in records.values() if "t_welcome" in r and "t_start" in r]
        late_welcome = sum(1 for t in to_welcome if t >= 0.9)
        first_start_delay = (min(starts) - t_go) if starts else None

        with open(h.path("relay.log"), "rb") as f:
            relay_log = f.read().decode("utf-8", "replace")
        tracebacks = len(re.findall(r"Traceback \(most recent call last\)", relay_log))
        unhandled = len(re.findall(r"Unhandled", relay_log))
        if tracebacks or unhandled:
            say(f"[load] relay log has {tracebacks} traceback(s), {unhandled} 'Unhandled':\n{h.log_tail('relay', 30)}")

    moved = size * intact
    relay_cpu = cpu_after - cpu_before
    peak = mem["VmHWM"]
    mib = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731
    per_worker = f"{n // w}" if n % w == 0 else f"{n // w}-{n // w + 1}"
    rows = [
        ["transfers", f"{n} × {human_size(size)}, all started at once, in {w} client processes ({per_worker} each)"],
        ["relay options", " ".join(relay_options) or "(defaults)"],
        ["all intact (no error either end, size and SHA-256 match)",
         f"{'yes' if intact == n else 'NO'} ({intact}/{n}" + (f"; {timed_out} still running after --timeout {args.timeout:g} s)" if timed_out else ")")],
        ["relay RSS at start", mib(start_rss)],
        ["relay RSS before: baseline after the workers' warm-up transfers", mib(baseline)],
        ["relay peak RSS (VmHWM) at the end (before the transfers)", f"{mib(peak)} ({mib(hwm_before)})"],
        [f"relay RSS max sampled every {args.interval:g} s ({sampler.count_in('load')} samples)", mib(sampler.max_in("load"))],
        ["relay RSS after the last transfer", mib(end_rss)],
        ["RSS per transfer: (VmHWM − baseline) / N", f"{(peak - baseline) / n:.0f} KiB"],
        ["relay CPU (utime+stime) during the transfers",
         f"{relay_cpu:.2f} s ({100 * relay_cpu / max(t_eof - t_go, 1e-9):.0f}% of one core over {t_eof - t_go:.1f} s"
         + (f"; {relay_cpu / (moved / (1024 * MiB)):.2f} s per GiB" if moved else "") + ")"],
        ["aggregate throughput: bytes delivered / wall time", f"{moved / wall / 1e6:.1f} MB/s" if ends and wall > 0 else "-"],
        ["wall time, first sender start → last receiver done", f"{wall:.2f} s" if ends else "- (none done)"],
        ["per-transfer duration (sender start → receiver done), min / median / max", _summary(durations, "{:.2f} s")],
        ["sender start → relay's WELCOME, min / median / max", _summary(to_welcome, "{:.3f} s")],
        ["senders answered after ≥ 0.9 s (a dropped connection attempt is retried after 1 s)", f"{late_welcome}/{len(to_welcome)}"],
        ["sender start → code, min / median / max", _summary(to_code, "{:.3f} s")],
        ["kernel ListenOverflows during the run (system-wide: full accept queues)",
         "-" if overflows_before is None or overflows_after is None else str(overflows_after - overflows_before)],
        ["machine: all CPUs busy during the run (anyone's processes); load average before",
         f"{100 * (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1):.0f}% of {os.cpu_count()} CPUs; "
         f"{load_before:.2f}"],
        ["client workers: CPU total, peak RSS each",
         f"{worker_cpu:.1f} s; " + ", ".join(mib(x) for x in worker_hwm)],
        ["relay log: tracebacks / 'Unhandled'", f"{tracebacks} / {unhandled}"],
    ]
    if first_start_delay is not None:
        say(f"[load] first sender started {first_start_delay * 1000:.1f} ms after the go signal")
    print(f"### Relay under {n} concurrent transfers\n\n{machine_line()}  \n{tree_line}\n")
    print(markdown_table(["measurement", "value"], rows))
    return 0 if intact == n else 1


# -- a worker ------------------------------------------------------------------------


def worker(job_path: str) -> int:
    """
    Run the transfers in C{job_path} concurrently on one reactor: first a
    warm-up transfer, then print L{READY} and wait for SIGUSR1, then all at
    once; print one JSON report and exit. Monotonic times are comparable
    across processes (Linux's CLOCK_MONOTONIC is system-wide).
    """
    import hashlib
    import resource

    from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
    from twisted.internet.threads import deferToThread

    from twisted_relay.cli import keep_freed_memory
    from twisted_relay.client import Timeouts, connect, relay_endpoint
    from twisted_relay.errors import TransferFailed
    from twisted_relay.receiver import ReceiverProtocol
    from twisted_relay.sender import SenderProtocol

    def open_outgoing(path: str) -> Any:
        """Open a file to send as the send CLI does, in either API: the
        sources module's C{FileSource} where it exists, else the committed
        C{Outgoing(file, name, size)} from the sender module."""
        try:
            from twisted_relay.sources import FileSource
        except ImportError:
            from twisted_relay.sender import Outgoing

            f = open(path, "rb", buffering=0)
            return Outgoing(f, os.path.basename(path), os.fstat(f.fileno()).st_size)
        return FileSource.open(path)

    class _Greeted(SenderProtocol):
        """The real sender, noting when the relay answered its HELLO."""

        rec: dict[str, Any]

        def greeted(self) -> None:
            self.rec["t_welcome"] = time.monotonic()
            super().greeted()

    raise_open_files_limit()
    with open(job_path) as f:
        job = json.load(f)
    keep_freed_memory()  # as the CLIs do
    timeout = float(job["timeout"])
    timeouts = Timeouts(handshake=min(30.0, timeout), stall=min(120.0, timeout), wait=timeout)
    live: list[Any] = []  # protocols not finished yet, for the deadline

    def sha256_and_delete(path: str) -> tuple[str, int]:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(4 * MiB):
                h.update(chunk)
        size = os.path.getsize(path)
        os.unlink(path)  # give tmpfs its memory back
        return h.hexdigest(), size

    def describe(e: BaseException) -> str:
        if isinstance(e, TransferFailed):
            return f"{e.exit_code.name}: {e.message}"
        return f"{type(e).__name__}: {e}"

    async def transfer(reactor: Any, path: str, outdir: str, rec: dict[str, Any]) -> None:
        os.makedirs(outdir, exist_ok=True)
        outgoing = open_outgoing(path)
        receiving: list[tuple[ReceiverProtocol, Deferred[None]]] = []

        def on_code(code: Any) -> None:
            rec["t_code"] = time.monotonic()
            receiver = ReceiverProtocol(reactor, code, outdir, timeouts=timeouts)
            live.append(receiver)
            d = ensureDeferred(connect(relay_endpoint(reactor, job["relay"]), receiver))
            # The moment the receiver is done, not when we get round to it.
            d.addCallback(lambda _: rec.__setitem__("t_end", time.monotonic()))
            receiving.append((receiver, d))

        sender = _Greeted(reactor, outgoing, on_code, timeouts=timeouts)
        sender.rec = rec
        live.append(sender)
        rec["t_start"] = time.monotonic()
        errors = []
        try:
            await ensureDeferred(connect(relay_endpoint(reactor, job["relay"]), sender))
        except Exception as e:
            errors.append(f"sender {describe(e)}")
        finally:
            # The CLI closes it too (the sender's cleanup already has).
            close = getattr(outgoing, "close", None) or outgoing.file.close
            close()
            live.remove(sender)
        if receiving:
            receiver, d = receiving[0]
            try:
                await d
            except Exception as e:
                errors.append(f"receiver {describe(e)}")
            finally:
                live.remove(receiver)
            if receiver.saved_path is not None:
                try:
                    rec["sha256"], rec["size"] = await deferToThread(sha256_and_delete, receiver.saved_path)
                except OSError as e:
                    errors.append(f"reading the received file: {describe(e)}")
        elif not errors:
            errors.append("sender succeeded without a receiver?")
        if errors:
            rec["error"] = "; ".join(errors)

    async def guarded(reactor: Any, path: str, outdir: str, rec: dict[str, Any]) -> None:
        try:
            await transfer(reactor, path, outdir, rec)
        except Exception as e:  # a bug here, not in the relay: still report it
            rec["error"] = f"worker: {describe(e)}"

    async def main(reactor: Any) -> None:
        # The warm-up, checked here: a broken setup fails before any measurement.
        wu = job["warmup"]
        rec: dict[str, Any] = {}
        await guarded(reactor, wu["path"], wu["outdir"], rec)
        if rec.get("error") or rec.get("sha256") != wu["sha256"]:
            print(f"warm-up transfer failed: {rec.get('error') or 'SHA-256 mismatch'}", flush=True)
            return

        go: Deferred[None] = Deferred()
        signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(go.callback, None))
        print(READY, flush=True)
        await go

        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        records = [{"i": t["i"]} for t in job["transfers"]]
        timed_out = []

        def at_deadline() -> None:
            timed_out.append(True)
            for proto in list(live):
                proto.interrupt()

        watchdog = reactor.callLater(timeout, at_deadline)
        await DeferredList(
            [ensureDeferred(guarded(reactor, t["path"], job["outdir"], r)) for t, r in zip(job["transfers"], records)],
            consumeErrors=True,
        )
        if watchdog.active():
            watchdog.cancel()
        for r in records:
            if timed_out and "t_end" not in r:
                r["timed_out"] = True
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        report = {
            "cpu": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
            "maxrss_kib": ru1.ru_maxrss,
            "transfers": records,
        }
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()

    return react_quietly(main)


def main(argv: Sequence[str] | None = None) -> int:
    return worker_or_main("bench/load.py", argv, worker, run, build_parser())


if __name__ == "__main__":
    sys.exit(main())
