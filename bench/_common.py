"""
What the benchmarks share: a scratch folder on tmpfs, child processes that
are always cleaned up, the relay and the two CLIs as processes, test files
with a known SHA-256, readings from /proc, and a Markdown table.

Benchmarks are not tests: nothing here is collected by pytest or run in CI.
Everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Any, Awaitable, Callable, Sequence

MiB = 1024 * 1024
GiB = 1024 * MiB

#: Where the relay says which port it got (``--port tcp:0``): Twisted logs
#: "RelayFactory starting on 43117" when the port is listening.
_LISTENING = re.compile(rb"starting on (\d+)")

_CLK_TCK = os.sysconf("SC_CLK_TCK")


#: The source tree whose relay and CLIs are measured: by default the
#: checkout this bench/ folder lives in. Children get it first on PYTHONPATH,
#: ahead of whatever the interpreter has installed.
_tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def set_tree(path: str) -> None:
    global _tree
    if not os.path.isdir(os.path.join(path, "twisted_relay")):
        raise BenchError(f"{path} has no twisted_relay/ package")
    _tree = os.path.abspath(path)


def child_env(pycache: str | None = None) -> dict[str, str]:
    """The environment for children: the measured tree first on the path,
    and, given C{pycache}, bytecode cached there rather than in the tree.
    Without a cache every child would compile the tree's modules again
    (this machine sets PYTHONDONTWRITEBYTECODE), which is start-up cost
    users do not pay."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_tree, env.get("PYTHONPATH")) if p)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def describe_tree() -> str:
    """Which code the children run, checked by asking a child."""
    out = subprocess.run(
        [sys.executable, "-c", "import twisted_relay; print(twisted_relay.__file__)"],
        env=child_env(), capture_output=True, text=True, cwd="/",
    )
    where = out.stdout.strip() or f"(import failed: {out.stderr.strip().splitlines()[-1:]})"
    git = subprocess.run(
        ["git", "-C", _tree, "describe", "--always", "--dirty"], capture_output=True, text=True,
    )
    rev = git.stdout.strip() if git.returncode == 0 else "not a git checkout"
    return f"measured code: {where} ({rev})"


class BenchError(Exception):
    """The benchmark could not measure what it set out to; the message says why."""


def say(text: str) -> None:
    """Progress for people; stdout is kept for the results."""
    print(text, file=sys.stderr, flush=True)


# -- sizes ---------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``512M``, ``1G``, ``64K`` or plain bytes; binary units."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"bad size {text!r}: use e.g. 512M, 1G, 65536")
    number, unit = float(m.group(1)), m.group(2).upper()
    return int(number * {"": 1, "K": 1024, "M": MiB, "G": GiB}[unit])


def human_size(n: int) -> str:
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


# -- processes -----------------------------------------------------------------------


try:
    # Looked up once here: loading a library in a forked child of a
    # threaded process could deadlock.
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: if the benchmark itself is killed
    (even with SIGKILL), the kernel kills its children too (Linux)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit and return
    it. Children inherit it, so call this before spawning the relay and the
    client workers: a thousand transfers need a few thousand descriptors,
    and the usual soft limit is 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def need_open_files(count: int, what: str) -> None:
    """Fail early, with the fix, when C{count} descriptors will not fit."""
    have = raise_open_files_limit()
    if 0 <= have < count:  # -1 is unlimited
        raise BenchError(f"{what} needs about {count} open files; the limit is {have} "
                         f"(raise the hard limit: ulimit -Hn)")


def react_quietly(main: Callable[[Any], Awaitable[object]]) -> int:
    """In a client worker: run C{main(reactor)} under C{react}, which exits
    the process. Warnings and errors (an unhandled error in a Deferred, say)
    go to stderr, the worker's log file; Twisted's per-connection chatter
    does not."""
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )
    react(lambda reactor: ensureDeferred(main(reactor)))
    return 0  # react() exits; never reached


def worker_or_main(
    prog: str,
    argv: Sequence[str] | None,
    worker: Callable[[str], int],
    run: Callable[[argparse.Namespace], int],
    parser: argparse.ArgumentParser,
) -> int:
    """A benchmark's entry point, which is also its client workers' one:
    C{--worker JOB} runs a worker, anything else the benchmark."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--worker"] and len(args) == 2:
        return worker(args[1])
    return run_main(prog, run, parser.parse_args(args))


def relay_supports(option: str) -> bool:
    """Whether ``twistd filerelay --help`` of the measured tree lists
    C{option} (e.g. ``--forwarding``): options being added are used only
    once the relay has them."""
    out = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "filerelay", "--help"],
        env=child_env(), capture_output=True, text=True, cwd="/", timeout=60,
    )
    return re.search(rf"(^|\s){re.escape(option)}[=\s]", out.stdout, re.MULTILINE) is not None


class Harness:
    """
    Owns a scratch folder and every child process. Leaving the ``with``
    block, normally or by an exception, SIGINT or SIGTERM, kills the
    children it started (stopped ones included) and removes the folder.
    """

    def __init__(self, name: str, need_bytes: int = 0, keep: bool = False) -> None:
        self.name = name
        self.need_bytes = need_bytes
        self.keep = keep
        self.dir = ""
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._old_handlers: dict[int, object] = {}

    def __enter__(self) -> "Harness":
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _raise_interrupt)
        self.dir = tempfile.mkdtemp(prefix=f"filerelay-bench-{self.name}-", dir=_scratch_root(self.need_bytes))
        say(f"[{self.name}] scratch folder {self.dir}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        for f in self._logs:
            f.close()
        if self.keep:
            say(f"[{self.name}] kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def spawn(
        self,
        argv: Sequence[str],
        log_name: str,
        stdout_pipe: bool = False,
        stdin: IO[bytes] | None = None,
        stdout: IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a child in its own session (a terminal's Ctrl-C reaches only
        us; we then stop it), stdin closed (or C{stdin}, e.g. another child's
        stdout pipe), stderr (and stdout unless piped or given as C{stdout})
        to ``<scratch>/<log_name>.log``."""
        log = open(self.path(f"{log_name}.log"), "wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=subprocess.PIPE if stdout_pipe else (log if stdout is None else stdout),
            stderr=log,
            cwd=self.dir,
            env=child_env(self.path("pycache")),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.procs.append(proc)
        return proc

    def log_tail(self, log_name: str, lines: int = 15) -> str:
        try:
            with open(self.path(f"{log_name}.log"), "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM, then
        SIGKILL after C{grace} seconds."""
        if proc.returncode is not None or proc.poll() is not None:
            return
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop_all(self) -> None:
        alive = [p for p in self.procs if p.returncode is None and p.poll() is None]
        for p in alive:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for p in alive:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for p in self.procs:
            if p.stdout is not None:
                p.stdout.close()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _scratch_root(need_bytes: int) -> str | None:
    """/dev/shm if it is there and has room, else the default temp folder."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        free = shutil.disk_usage(shm).free
        if free >= need_bytes:
            return shm
        say(f"/dev/shm has {free // MiB} MiB free, {need_bytes // MiB} MiB needed: using {tempfile.gettempdir()}")
    else:
        say(f"no writable /dev/shm: using {tempfile.gettempdir()} (disk speed may dominate)")
    return None


def wait_exit(proc: subprocess.Popen[bytes], timeout: float, poll: float = 0.005) -> tuple[int, float]:
    """
    Wait for C{proc} to exit; return its exit code and the CPU seconds (user
    + system) it used over its life, from ``wait4``'s rusage.

    @raise BenchError: if it is still running after C{timeout} seconds.
    """
    code, usage = wait_rusage(proc, timeout, poll)
    return code, usage.ru_utime + usage.ru_stime


def wait_rusage(proc: subprocess.Popen[bytes], timeout: float, poll: float = 0.005) -> tuple[int, resource.struct_rusage]:
    """Like L{wait_exit}, but the whole ``wait4`` rusage: ``ru_maxrss`` is
    the child's peak RSS in KiB, which /proc can no longer tell once the
    child (a one-shot socat, say) has exited."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.args[:4]}... still running after {timeout:.0f} s")
        time.sleep(poll)


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for socat, which cannot report
    the port it got). The relay instead listens on port 0 and tells us."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Wait until something listens on 127.0.0.1:C{port}, reading
    /proc/net/tcp rather than connecting (a probe would use up a
    single-connection listener such as socat's)."""
    want = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        with open("/proc/net/tcp") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[1] == want and fields[3] == "0A":
                    return
        time.sleep(0.01)
    raise BenchError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


# -- the relay and the CLIs ----------------------------------------------------------


@dataclass
class Relay:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_relay(h: Harness, timeout: float = 30.0, log_name: str = "relay", options: Sequence[str] = ()) -> Relay:
    """``twistd -n filerelay [options]`` on an ephemeral 127.0.0.1 port.
    With ``-n`` twistd does not fork, so the child's PID is the relay's."""
    # The twistd console script, run by this interpreter (``python -m
    # twisted`` runs plugins, not twistd).
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "filerelay",
            "--port", "tcp:0:interface=127.0.0.1", *options]
    proc = h.spawn(argv, log_name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(h.path(f"{log_name}.log"), "rb") as f:
            m = _LISTENING.search(f.read())
        if m:
            return Relay(proc, int(m.group(1)))
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise BenchError(f"the relay did not start listening:\n{h.log_tail(log_name)}")


def prime_bytecode(h: Harness, path: str) -> None:
    """
    One throwaway transfer through a throwaway relay, so that the bytecode
    cache holds every module the relay and the CLIs import. Measured
    processes then start as an installed copy would, without compiling.
    This matters for memory too: heap a relay freed after compiling would
    otherwise absorb, and hide, what the transfers allocate.
    """
    relay = start_relay(h, log_name="relay-prime")
    sender, code = start_sender(h, relay, path, "prime")
    receiver = start_receiver(h, relay, code, h.path("out-prime"), "prime")
    if wait_exit(receiver, 120)[0] != 0 or wait_exit(sender, 60)[0] != 0:
        raise BenchError(f"priming transfer failed:\n{h.log_tail('receive-prime')}\n{h.log_tail('relay-prime')}")
    h.stop(relay.proc)
    shutil.rmtree(h.path("out-prime"), ignore_errors=True)


def spawn_sender(h: Harness, relay: Relay, path: str, tag: str) -> subprocess.Popen[bytes]:
    """Start ``python -m twisted_relay.send``; read its code with L{read_code}."""
    return h.spawn([sys.executable, "-m", "twisted_relay.send", relay.address, path], f"send-{tag}", stdout_pipe=True)


def read_code(h: Harness, proc: subprocess.Popen[bytes], tag: str, timeout: float = 30.0) -> str:
    """The code a sender prints on stdout (its only output there)."""
    return read_line(h, proc, f"send-{tag}", timeout, f"sender {tag}", "code")


def read_line(h: Harness, proc: subprocess.Popen[bytes], log_name: str, timeout: float,
              who: str = "child", what: str = "line") -> str:
    """The next line a child started with C{stdout_pipe} prints, within
    C{timeout} seconds. Reads byte by byte so that nothing after the line
    is taken from the pipe."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    line = b""
    deadline = time.monotonic() + timeout
    try:
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise BenchError(f"{who} printed no {what} in {timeout} s:\n{h.log_tail(log_name)}")
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                raise BenchError(f"{who} exited without a {what}:\n{h.log_tail(log_name)}")
            line += chunk
    finally:
        sel.close()
    return line.decode("ascii").strip()


def start_sender(h: Harness, relay: Relay, path: str, tag: str, timeout: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start a sender and return it with its code."""
    proc = spawn_sender(h, relay, path, tag)
    return proc, read_code(h, proc, tag, timeout)


def start_receiver(h: Harness, relay: Relay, code: str, outdir: str, tag: str) -> subprocess.Popen[bytes]:
    return h.spawn([sys.executable, "-m", "twisted_relay.receive", relay.address, code, outdir], f"receive-{tag}")


# -- files ---------------------------------------------------------------------------

_CHUNK = MiB
_POOL = 8 * MiB


def make_file(path: str, size: int, seed: int, pool: bytes | None = None) -> str:
    """
    Write C{size} incompressible bytes and return their SHA-256.

    With a C{pool} (random bytes, from L{random_pool}), each 1 MiB chunk is a
    slice of it at an offset drawn from C{seed}: fast, not periodic, and
    different per seed, so a dropped, repeated or misrouted chunk changes
    the hash. Without one, every byte comes from ``os.urandom`` (slower).
    """
    rng = random.Random(seed)
    h = hashlib.sha256()
    left = size
    with open(path, "wb") as f:
        while left:
            n = min(_CHUNK, left)
            if pool is None:
                chunk = os.urandom(n)
            else:
                off = rng.randrange(len(pool) - _CHUNK)
                chunk = pool[off : off + n]
            f.write(chunk)
            h.update(chunk)
            left -= n
    return h.hexdigest()


def random_pool() -> bytes:
    return os.urandom(_POOL + _CHUNK)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


# -- /proc ---------------------------------------------------------------------------


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, from /proc/PID/stat (clock-tick
    resolution, usually 10 ms)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# -- output --------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    out = [line(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def machine_line() -> str:
    u = os.uname()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {u.sysname} {u.release}, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f} at the end"
    )


def run_main(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A benchmark's exit status: its own, 1 for a BenchError (said on
    stderr), 130 if interrupted (children already cleaned up)."""
    try:
        return run(args)
    except BenchError as e:
        say(f"{name}: {e}")
        return 1
    except KeyboardInterrupt:
        say(f"{name}: interrupted; cleaned up")
        return 130


def add_scratch_options(p: argparse.ArgumentParser, urandom: bool = True, tree: bool = True) -> None:
    """The options most benchmarks share: where the measured code and the
    test data come from, and whether to keep the scratch folder."""
    if urandom:
        p.add_argument("--urandom", action="store_true", help="fill files from os.urandom (slower) instead of a shuffled random pool")
    if tree:
        p.add_argument("--tree", help="source tree to measure (default: the checkout holding this bench/)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (logs) for inspection")
