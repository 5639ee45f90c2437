"""
The fault matrix, with real processes: the sender, the receiver or the relay
is killed (SIGKILL) or frozen (SIGSTOP) at each stage of a transfer, and
whoever survives must end well.

How a stage is reached: every faulted transfer goes through a
L{stage_proxy} process in front of the relay (connection 0 is the sender,
1 the receiver). The proxy follows the frames of each direction and holds
one chosen frame (or two) instead of forwarding it, stops reading behind
it, and says so on stdout. The test then strikes and releases the hold:
the held frame, and everything behind it, flows on. So the target died or
froze just after that frame left it, or just before that frame reached it.

=============  ===========================================================
stage          held frame(s), in the client -> relay direction
=============  ===========================================================
pairing        the receiver's CLAIM: the sender waits with its code, the
               receiver is greeted but not yet paired
code-check     both CONFIRMs: PEER_HELLO and PAKE went both ways, neither
               side has seen the other's key confirmation
header         the sender's SEALED_HEADER: keys confirmed, nothing offered
mid-stream     the sender's 3rd SEALED_DATA of a 64 MiB (sparse) file
end            the sender's SEALED_END: every data record is out, the
               receiver cannot store the file yet
ack            the receiver's SEALED_ACK: the receiver has stored the file
               and exited 0; the sender waits for the acknowledgement
=============  ===========================================================

For every cell: each surviving client exits within its bound with the
documented exit status (README.rst) and one line naming the cause on
stderr, no traceback; OUTDIR holds no file under the final name unless it
is complete and correct, and no ``.filerelay-*.part`` file, except after a
SIGKILLed receiver that had started writing one (it cannot clean up; the
leftover is asserted). A frozen process is resumed (SIGCONT) once the
survivors have exited and must then end within its bound too. The relay,
unless killed, then carries a new normal transfer; a relay that was frozen
and resumed must also still stop cleanly on SIGTERM.

Timeouts: clients ``--stall-timeout 2`` (the sender ``--wait-timeout 4``);
the relay ``--handshake-timeout 3 --wait-timeout 10 --idle-timeout 3
--drain-timeout 2``; a client's close grace is a fixed 5 s. Bounds, counted
from the fault: *prompt* 3 s; *stall* 2 + 2.5 s; *wait* 4 + 2.5 s; *idle*
3 + 2.5 s; *grace* 2 + 5 + 2.5 s (a client whose last frame cannot be
flushed waits out its close grace).

Expected outcomes. S = sender, R = receiver, exit status (bound); "-" the
target itself; for a frozen target, its status once resumed. File: none =
OUTDIR empty; part = one ``.part`` left by the killed receiver, nothing
under the final name; stored = the complete, correct file and nothing else.

==========  ========  =================  ===================  =======
stage       target    SIGKILL            SIGSTOP, then CONT   file
==========  ========  =================  ===================  =======
pairing     sender    R 4 (prompt)       R 12 (stall); S 12   none
pairing     receiver  S 6 (prompt)       S 12 (stall); R 12   none
pairing     relay     S 6, R 6 (prompt)  S 12 (wait),         none
                                         R 12 (stall)
code-check  sender    R 6 (prompt)       R 12 (stall); S 12   none
code-check  receiver  S 6 (prompt)       S 12 (stall); R 12   none
code-check  relay     S 6, R 6 (prompt)  S 12, R 12 (stall)   none
header      sender    R 6 (prompt)       R 12 (stall); S 12   none
header      receiver  S 6 (prompt)       S 12 (stall); R 12   none
header      relay     S 6, R 6 (prompt)  S 12, R 12 (stall)   none
mid-stream  sender    R 6 (prompt)       R 12 (stall); S 12   none
mid-stream  receiver  S 6 (prompt)       S 12 (idle); R 6|12  kill: part,
                                                              stop: none
mid-stream  relay     S 6, R 6 (prompt)  R 12 (stall),        none
                                         S 12 (grace)
end         sender    R 0 (prompt)       R 0 (prompt); S 0    stored
end         receiver  S 6 (prompt)       S 12 (stall); R 12   kill: part,
                                                              stop: none
end         relay     S 6, R 6 (prompt)  S 12, R 12 (stall)   none
ack         sender    R 0 (before)       R 0 (before); S 0    stored
ack         relay     S 6, R 0 (before)  S 12 (stall),        stored
                                         R 0 (before)
==========  ========  =================  ===================  =======

(ack x receiver is no cell: by the time its SEALED_ACK is in flight the
receiver has already exited 0 on its own.)

A frozen client is resumed as soon as the survivors have exited. If it was
frozen longer than its stall timeout, it acts on that overdue timer before
reading what arrived meanwhile (CPython's epoll wait, interrupted by the
stop, returns no events once its deadline has passed, so Twisted runs its
timers first): it exits 12 even where a SEALED_END or SEALED_ACK is
waiting in its socket (end x receiver x SIGSTOP), unless it was frozen in
the middle of a read and finds the end in what it reads next: then it
stores the file and exits 0 (seen once in about twenty runs). A frozen sender whose
receiver finishes at once (end, ack) is resumed within its stall timeout,
reads the acknowledgement and exits 0. Mid-stream, a receiver is frozen
while it is busy; resumed, it meets either its timer or the connection the
relay's idle timeout cut first: 12 or 6.

What the survivors say is asserted too (see L{EXPECTED}). Two choices
there are deliberate. A sender whose relay dies before any receiver came
must not blame a receiver ("the relay closed the connection", as it says
before it has a code). A sender that gives up after sending SEALED_END,
by stall or by a lost connection, must say the file may or may not have
been stored (README: a non-zero sender status does not prove the file
was not stored; in the end x receiver x SIGSTOP cell it *was* stored).

Cells run a few at a time in threads (L{WORKERS}): each has its own proxy,
clients, folders and, when the relay is the target, its own relay; the
others share one relay, which a frozen cell never touches. Each test then
asserts on what its cell recorded. Nothing waits on a sleep: stages are
reached through the proxy's holds, and every wait polls with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from tests.integration.processes import (
    Clients,
    Launcher,
    Proc,
    Relay,
    entries,
    part_files,
    poll_until,
    check_forwarding,
    start_relay,
)

HERE = Path(__file__).parent

# -- timeouts and bounds ---------------------------------------------------------

#: The clients' --stall-timeout (also their handshake timeout).
STALL = 2.0
#: The sender's --wait-timeout: its own limit on waiting for PAIRED.
SENDER_WAIT = 4.0
#: The relay's idle timeout on paired transfers: above STALL, so a client
#: stuck with a frozen peer gives up first and says why.
RELAY_IDLE = 3.0
RELAY_ARGS = (
    "--handshake-timeout", "3",
    "--wait-timeout", "10",
    "--idle-timeout", str(RELAY_IDLE),
    "--drain-timeout", "2",
)
#: A client's fixed close grace (twisted_relay.client.CLOSE_GRACE).
CLOSE_GRACE = 5.0
#: Slack for process exit and a loaded machine.
SLACK = 2.5

BOUNDS = {
    "prompt": 3.0,
    "stall": STALL + SLACK,
    "wait": SENDER_WAIT + SLACK,
    "idle": RELAY_IDLE + SLACK,
    "grace": STALL + CLOSE_GRACE + SLACK,
}
#: How long a resumed (SIGCONTed) client may take to end.
RESUMED_BOUND = STALL + CLOSE_GRACE + SLACK

#: Cells running at once.
WORKERS = int(os.environ.get("FAULT_MATRIX_WORKERS", "3"))

#: The mid-stream file: far more than socket buffers hold; sparse.
LARGE = 64 * 1024 * 1024
#: Every other stage's file: three data records.
SMALL = 600 * 1024

# -- stages ----------------------------------------------------------------------

CLAIM, CONFIRM, SEALED_HEADER, SEALED_DATA, SEALED_END, SEALED_ACK = 0x05, 0x17, 0x20, 0x22, 0x23, 0x24

#: stage -> the proxy's holds (connection 0 is the sender, 1 the receiver).
HOLDS: dict[str, tuple[str, ...]] = {
    "pairing": (f"1:up:{CLAIM}",),
    "code-check": (f"0:up:{CONFIRM}", f"1:up:{CONFIRM}"),
    "header": (f"0:up:{SEALED_HEADER}",),
    "mid-stream": (f"0:up:{SEALED_DATA}:3",),
    "end": (f"0:up:{SEALED_END}",),
    "ack": (f"1:up:{SEALED_ACK}",),
}
STAGES = tuple(HOLDS)
TARGETS = ("sender", "receiver", "relay")
FAULTS = ("kill", "stop")


@dataclass(frozen=True)
class Cell:
    stage: str
    target: str
    fault: str

    @property
    def id(self) -> str:
        return f"{self.stage}-{self.target}-{self.fault}"


# -- what each survivor must say -------------------------------------------------

S_RECEIVER_GONE = "the receiver went away before the file was stored"
S_RELAY_CLOSED = "the relay closed the connection"
S_STALLED = "the receiver stopped answering"
S_NO_RECEIVER = "no receiver came, and the relay did not say so; start again"
#: After SEALED_END, whatever ends the wait: the file may be stored.
S_MAYBE = re.compile(r".*may or may not have been stored.*")
R_UNKNOWN = "no sender is waiting with this code"
R_STALLED = "the sender stopped answering"
R_NO_ANSWER = "the relay did not answer in time"
R_RELAY_CLOSED = "the relay closed the connection"
R_SENDER_GONE = "the sender went away before the file was sent"
R_CUT = (
    "the stream ended before the sender's end-of-stream record "
    "(the sender went away or the connection was cut); nothing was saved"
)


@dataclass(frozen=True)
class Outcome:
    """A client's exit status, its one stderr line (after "PROG: ", a
    string to match exactly or a compiled pattern) and its bound."""

    status: int
    message: str | re.Pattern[str] | None
    bound: str


@dataclass(frozen=True)
class Expect:
    sender: Outcome | None = None
    receiver: Outcome | None = None
    #: a frozen target's possible statuses once resumed
    resumed: frozenset[int] = frozenset()
    #: "none", "part", "stored", or "if-resumed-ok": stored if the
    #: resumed target exited 0, else none
    file: str = "none"


def out(status: int, message: str | re.Pattern[str] | None = None, bound: str = "prompt") -> Outcome:
    return Outcome(status, message, bound)


OK = out(0)
DONE_BEFORE = Outcome(0, None, "before")  # exited 0 before the fault

EXPECTED: dict[tuple[str, str, str], Expect] = {
    # pairing: the sender waits with its code; the receiver's CLAIM is held.
    ("pairing", "sender", "kill"): Expect(receiver=out(4, R_UNKNOWN)),
    ("pairing", "sender", "stop"): Expect(receiver=out(12, R_STALLED, "stall"), resumed=frozenset({12})),
    ("pairing", "receiver", "kill"): Expect(sender=out(6, S_RECEIVER_GONE)),
    ("pairing", "receiver", "stop"): Expect(sender=out(12, S_STALLED, "stall"), resumed=frozenset({12})),
    ("pairing", "relay", "kill"): Expect(sender=out(6, S_RELAY_CLOSED), receiver=out(6, R_RELAY_CLOSED)),
    ("pairing", "relay", "stop"): Expect(
        sender=out(12, S_NO_RECEIVER, "wait"), receiver=out(12, R_NO_ANSWER, "stall")
    ),
    # code-check: both CONFIRMs held.
    ("code-check", "sender", "kill"): Expect(receiver=out(6, R_SENDER_GONE)),
    ("code-check", "sender", "stop"): Expect(receiver=out(12, R_STALLED, "stall"), resumed=frozenset({12})),
    ("code-check", "receiver", "kill"): Expect(sender=out(6, S_RECEIVER_GONE)),
    ("code-check", "receiver", "stop"): Expect(sender=out(12, S_STALLED, "stall"), resumed=frozenset({12})),
    ("code-check", "relay", "kill"): Expect(sender=out(6, S_RECEIVER_GONE), receiver=out(6, R_SENDER_GONE)),
    ("code-check", "relay", "stop"): Expect(
        sender=out(12, S_STALLED, "stall"), receiver=out(12, R_STALLED, "stall")
    ),
    # header: the sender's SEALED_HEADER held.
    ("header", "sender", "kill"): Expect(receiver=out(6, R_CUT)),
    ("header", "sender", "stop"): Expect(receiver=out(12, R_STALLED, "stall"), resumed=frozenset({12})),
    ("header", "receiver", "kill"): Expect(sender=out(6, S_RECEIVER_GONE)),
    ("header", "receiver", "stop"): Expect(sender=out(12, S_STALLED, "stall"), resumed=frozenset({12})),
    ("header", "relay", "kill"): Expect(sender=out(6, S_RECEIVER_GONE), receiver=out(6, R_SENDER_GONE)),
    ("header", "relay", "stop"): Expect(sender=out(12, S_STALLED, "stall"), receiver=out(12, R_STALLED, "stall")),
    # mid-stream: the sender's third SEALED_DATA held.
    ("mid-stream", "sender", "kill"): Expect(receiver=out(6, R_CUT)),
    ("mid-stream", "sender", "stop"): Expect(receiver=out(12, R_STALLED, "stall"), resumed=frozenset({12})),
    ("mid-stream", "receiver", "kill"): Expect(sender=out(6, S_RECEIVER_GONE), file="part"),
    ("mid-stream", "receiver", "stop"): Expect(sender=out(12, S_STALLED, "idle"), resumed=frozenset({6, 12})),
    ("mid-stream", "relay", "kill"): Expect(sender=out(6, S_RECEIVER_GONE), receiver=out(6, R_CUT)),
    ("mid-stream", "relay", "stop"): Expect(
        sender=out(12, S_STALLED, "grace"), receiver=out(12, R_STALLED, "stall")
    ),
    # end: the sender's SEALED_END held.
    ("end", "sender", "kill"): Expect(receiver=OK, file="stored"),
    ("end", "sender", "stop"): Expect(receiver=OK, resumed=frozenset({0}), file="stored"),
    ("end", "receiver", "kill"): Expect(sender=out(6, S_MAYBE), file="part"),
    # Resumed, the receiver usually acts on its overdue stall timer before
    # it reads the SEALED_END waiting in its socket, and gives up storing
    # nothing; if it was frozen mid-read, it may finish that read first,
    # find the end and store the file. Either way the sender said "may or
    # may not have been stored", and nothing half-written is left.
    ("end", "receiver", "stop"): Expect(
        sender=out(12, S_MAYBE, "stall"), resumed=frozenset({0, 12}), file="if-resumed-ok"
    ),
    ("end", "relay", "kill"): Expect(sender=out(6, S_MAYBE), receiver=out(6, R_CUT)),
    ("end", "relay", "stop"): Expect(sender=out(12, S_MAYBE, "stall"), receiver=out(12, R_STALLED, "stall")),
    # ack: the receiver's SEALED_ACK held; the receiver has exited 0.
    ("ack", "sender", "kill"): Expect(receiver=DONE_BEFORE, file="stored"),
    ("ack", "sender", "stop"): Expect(receiver=DONE_BEFORE, resumed=frozenset({0}), file="stored"),
    ("ack", "relay", "kill"): Expect(sender=out(6, S_MAYBE), receiver=DONE_BEFORE, file="stored"),
    ("ack", "relay", "stop"): Expect(sender=out(12, S_MAYBE, "stall"), receiver=DONE_BEFORE, file="stored"),
}

CELLS = [Cell(*key) for key in EXPECTED]
# Every stage, target and fault, but for ack x receiver (see above).
assert set(EXPECTED) == {(s, t, f) for s in STAGES for t in TARGETS for f in FAULTS} - {
    ("ack", "receiver", "kill"),
    ("ack", "receiver", "stop"),
}

# -- the proxy -------------------------------------------------------------------


class StageProxy:
    """A running L{stage_proxy} and what it has said."""

    def __init__(self, launcher: Launcher, target_port: int, holds: tuple[str, ...]) -> None:
        argv = [sys.executable, str(HERE / "stage_proxy.py"), str(target_port)]
        for hold in holds:
            argv += ["--hold", hold]
        self.holds = holds
        self.proc = launcher.start("proxy", argv)
        port = poll_until(lambda: self._field("LISTEN", 1), "the proxy to listen")
        self.address = f"127.0.0.1:{port}"

    def lines(self) -> list[list[str]]:
        return [line.split() for line in self.proc.stdout().splitlines()]

    def _field(self, event: str, index: int) -> str | None:
        if not self.proc.running():
            pytest.fail(f"the proxy died\n{self.proc.describe()}")
        for words in self.lines():
            if words and words[0] == event:
                return words[index]
        return None

    def upstream_port(self, conn: int) -> int:
        """The port the relay sees connection C{conn} come from."""
        found = poll_until(
            lambda: next((w[2] for w in self.lines() if w[:2] == ["CONN", str(conn)]), None),
            f"proxy connection {conn}",
        )
        return int(found)

    def holding(self) -> int:
        return sum(1 for words in self.lines() if words and words[0] == "HOLD")

    def release(self) -> None:
        self.proc.signal(signal.SIGUSR1)
        poll_until(lambda: any(w == ["RELEASED"] for w in self.lines()), "the proxy to release")


# -- one cell --------------------------------------------------------------------


@dataclass
class Ended:
    """How one process ended: status (None if it outlived the wait),
    seconds after the fault (or after SIGCONT, for a resumed one)."""

    status: int | None
    elapsed: float
    stderr: str
    describe: str


@dataclass
class Record:
    """Everything a cell observed, for the test to judge."""

    cell: Cell
    ended: dict[str, Ended] = field(default_factory=dict)
    resumed: Ended | None = None
    outdir_entries: list[str] = field(default_factory=list)
    stored_ok: bool = False
    part_sizes: list[int] = field(default_factory=list)
    health: str | None = None  # None: the relay carried a new transfer
    relay_stop: str | None = None  # a per-cell relay's SIGTERM, if it had one
    relay_log: str = ""
    error: BaseException | None = None
    error_text: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the observed-outcomes table."""
        said = [
            f"{role[0].upper()} {self.ended[role].status} ({self.ended[role].elapsed:.1f}s)"
            for role in ("sender", "receiver")
            if role in self.ended
        ]
        if self.resumed is not None:
            said.append(f"resumed {self.resumed.status} ({self.resumed.elapsed:.1f}s)")
        files = ",".join(self.outdir_entries) or "empty"
        return f"{self.cell.id:28} {'; '.join(said):40} {files:36} {self.seconds:.1f}s"


def source_file(folder: Path, stage: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage}.bin"
    with open(path, "wb") as f:
        if stage == "mid-stream":
            f.truncate(LARGE)
        else:
            f.write(os.urandom(SMALL))
    return path


def is_stopped(proc: Proc) -> bool:
    """Whether the kernel has actually stopped C{proc} (state T)."""
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def strike(proc: Proc, fault: str) -> None:
    if fault == "kill":
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()
    else:
        proc.popen.send_signal(signal.SIGSTOP)
        poll_until(lambda: is_stopped(proc), f"{proc.name} to stop")


def wait_all(procs: dict[str, Proc], since: float, timeout: float) -> dict[str, Ended]:
    """Wait for every process at once; kill what outlives C{timeout}."""
    ended: dict[str, Ended] = {}
    deadline = since + timeout
    while len(ended) < len(procs):
        for name, proc in procs.items():
            if name not in ended and proc.popen.poll() is not None:
                ended[name] = Ended(proc.popen.returncode, time.monotonic() - since, proc.stderr(), proc.describe())
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    for name, proc in procs.items():
        if name not in ended:
            proc.kill()
            ended[name] = Ended(None, time.monotonic() - since, proc.stderr(), proc.describe())
    return ended


def normal_transfer(relay: Relay, launcher: Launcher, folder: Path) -> str | None:
    """Run one ordinary transfer through C{relay}: C{None} if it worked,
    else what went wrong."""
    source = folder / "src" / "health.bin"
    source.parent.mkdir(parents=True)
    source.write_bytes(os.urandom(20_000))
    clients = Clients(relay, launcher)
    sender = clients.send(source)
    try:
        code = clients.code_of(sender, timeout=15)
    except BaseException:
        return f"no code\n{sender.describe()}"
    receiver = clients.receive(code, folder / "out")
    ended = wait_all({"sender": sender, "receiver": receiver}, time.monotonic(), 20)
    if ended["sender"].status != 0 or ended["receiver"].status != 0:
        return f"the new transfer failed\n{ended['sender'].describe}\n{ended['receiver'].describe}"
    if (folder / "out" / "health.bin").read_bytes() != source.read_bytes():
        return "the new transfer stored the wrong bytes"
    return None


def run_cell(cell: Cell, shared: Relay, base: Path) -> Record:
    record = Record(cell)
    launcher = Launcher(base)
    started = time.monotonic()
    try:
        _run_cell(cell, shared, base, launcher, record)
    except BaseException as e:  # pytest.fail raises a BaseException
        record.error = e
        record.error_text = traceback.format_exc() + "\n".join(p.describe() for p in launcher.procs)
    finally:
        launcher.kill_all()
        record.seconds = time.monotonic() - started
    return record


def _run_cell(cell: Cell, shared: Relay, base: Path, launcher: Launcher, record: Record) -> None:
    relay = start_relay(launcher, RELAY_ARGS, shared.forwarding) if cell.target == "relay" else shared
    holds = HOLDS[cell.stage]
    proxy = StageProxy(launcher, relay.port, holds)
    clients = Clients(SimpleNamespace(address=proxy.address), launcher)  # type: ignore[arg-type]
    source = source_file(base / "src", cell.stage)
    outdir = base / "out"
    stall = ("--stall-timeout", str(STALL))
    sender = clients.send(source, *stall, "--wait-timeout", str(SENDER_WAIT))
    receiver = clients.receive(clients.code_of(sender), outdir, *stall)
    procs = {"sender": sender, "receiver": receiver}

    def held() -> bool:
        for name, proc in procs.items():
            if not proc.running() and not (cell.stage == "ack" and name == "receiver"):
                pytest.fail(f"the {name} ended before the stage was reached\n{proc.describe()}")
        return proxy.holding() == len(holds)

    poll_until(held, f"the proxy to hold {holds}", timeout=15)
    if cell.stage == "ack":
        # The receiver stored the file and leaves without waiting for its
        # ACK to arrive: that is the stage.
        record.ended.update(wait_all({"receiver": receiver}, time.monotonic(), BOUNDS["prompt"]))
        record.ended["receiver"].elapsed = 0.0
        del procs["receiver"]

    target = relay.proc if cell.target == "relay" else procs.pop(cell.target)
    struck = time.monotonic()
    strike(target, cell.fault)
    if cell.stage == "pairing" and cell.target == "sender" and cell.fault == "kill":
        # Let the relay see the sender go before the held CLAIM reaches it:
        # two connections, no order between them otherwise.
        port = proxy.upstream_port(0)
        poll_until(lambda: f"127.0.0.1:{port} closed" in relay.log(), "the relay to see the sender go")
    proxy.release()

    record.ended.update(wait_all(procs, struck, max(BOUNDS.values())))
    if cell.fault == "stop":
        target.popen.send_signal(signal.SIGCONT)
        if target is not relay.proc:
            record.resumed = wait_all({cell.target: target}, time.monotonic(), RESUMED_BOUND)[cell.target]

    record.outdir_entries = entries(outdir) if outdir.exists() else []
    final = outdir / source.name
    record.stored_ok = final.exists() and final.read_bytes() == source.read_bytes()
    record.part_sizes = [p.stat().st_size for p in part_files(outdir)] if outdir.exists() else []

    if relay.proc.running():
        record.health = normal_transfer(relay, launcher, base / "health")
    else:
        record.health = "the relay is not running"
    if relay is not shared and relay.proc.running():
        relay.proc.signal(signal.SIGTERM)
        status = relay.proc.popen.wait(timeout=15)
        log = relay.log()
        if status != 0 or "Server Shut Down." not in log:
            record.relay_stop = f"exit {status}\n{relay.proc.describe()}"
    record.relay_log = relay.log() if relay is not shared else ""


# -- running the cells -----------------------------------------------------------


@dataclass
class Matrix:
    relay: Relay
    futures: dict[Cell, Future[Record]]


@pytest.fixture(scope="module")
def matrix(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, forwarding: str
) -> Iterator[Matrix]:
    """Start the shared relay and every selected cell, a few at a time."""
    launcher = Launcher(tmp_path_factory.mktemp("shared-relay"))
    relay = start_relay(launcher, RELAY_ARGS, forwarding)
    wanted = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None and "cell" in callspec.params:
            wanted.append(callspec.params["cell"])
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    futures = {cell: pool.submit(run_cell, cell, relay, tmp_path_factory.mktemp(cell.id)) for cell in wanted}
    try:
        yield Matrix(relay, futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        # The observed matrix, for people: shown with -s or on failure.
        for cell, future in futures.items():
            if future.done() and not future.cancelled():
                print(future.result().summary())
        relay.proc.signal(signal.SIGTERM)
        status = relay.proc.wait()
        launcher.kill_all()
        assert status == 0, relay.proc.describe()
        assert "Traceback" not in relay.log(), relay.proc.describe()
        check_forwarding(relay)


PROG = {"sender": "filerelay-send", "receiver": "filerelay-receive"}


def check_line(role: str, ended: Ended, message: str | re.Pattern[str] | None) -> None:
    """One line on stderr says why, and it is the last; no traceback."""
    assert "Traceback" not in ended.stderr, ended.describe
    lines = ended.stderr.splitlines()
    said = [line for line in lines if line.startswith(PROG[role] + ": ")]
    if ended.status == 0:
        assert said == [], ended.describe
        return
    assert len(said) == 1 and lines and lines[-1] == said[0], f"not one closing line\n{ended.describe}"
    text = said[0][len(PROG[role]) + 2 :]
    if isinstance(message, re.Pattern):
        assert message.fullmatch(text), f"{role} said {text!r}, want {message.pattern!r}\n{ended.describe}"
    elif message is not None:
        assert text == message, f"{role} said {text!r}, want {message!r}\n{ended.describe}"


def check_cell(matrix: Matrix, cell: Cell) -> None:
    record = matrix.futures[cell].result()
    if record.error is not None:
        pytest.fail(f"the cell could not run:\n{record.error_text}")
    expect = EXPECTED[(cell.stage, cell.target, cell.fault)]
    for role in ("sender", "receiver"):
        want: Outcome | None = getattr(expect, role)
        if role == cell.target:
            continue
        assert want is not None, f"no expectation for the {role}"
        ended = record.ended[role]
        assert ended.status is not None, f"the {role} did not exit within {max(BOUNDS.values())}s\n{ended.describe}"
        assert ended.status == want.status, f"the {role} exited {ended.status}, want {want.status}\n{ended.describe}"
        check_line(role, ended, want.message)
        if want.bound != "before":
            assert ended.elapsed <= BOUNDS[want.bound], (
                f"the {role} took {ended.elapsed:.1f}s, bound {want.bound} = {BOUNDS[want.bound]}s\n{ended.describe}"
            )
    if cell.fault == "stop" and cell.target != "relay":
        resumed = record.resumed
        assert resumed is not None
        assert resumed.status is not None, f"the resumed {cell.target} did not end\n{resumed.describe}"
        assert resumed.status in expect.resumed, (
            f"the resumed {cell.target} exited {resumed.status}, want one of {sorted(expect.resumed)}\n{resumed.describe}"
        )
        check_line(cell.target, resumed, None)
    name = f"{cell.stage}.bin"
    file = expect.file
    if file == "if-resumed-ok":
        assert record.resumed is not None
        file = "stored" if record.resumed.status == 0 else "none"
    if file == "stored":
        assert record.stored_ok, f"the file is not stored intact: {record.outdir_entries}"
        assert record.outdir_entries == [name], record.outdir_entries
    elif file == "part":
        # A SIGKILLed receiver cannot remove its temporary file: the one
        # documented leftover. Never anything under the final name.
        assert name not in record.outdir_entries, record.outdir_entries
        assert len(record.part_sizes) == 1 and len(record.outdir_entries) == 1, record.outdir_entries
        assert record.part_sizes[0] <= (LARGE if cell.stage == "mid-stream" else SMALL), record.part_sizes
    else:
        assert record.outdir_entries == [], f"OUTDIR should be empty: {record.outdir_entries}"
    if cell.target == "relay" and cell.fault == "kill":
        return
    assert record.health is None, f"the relay no longer carries a transfer: {record.health}"
    assert record.relay_stop is None, f"the resumed relay did not stop cleanly: {record.relay_stop}"
    relay_log = record.relay_log or matrix.relay.log()
    assert "Traceback" not in relay_log, relay_log


def cells(stage: str) -> list[object]:
    return [pytest.param(c, id=f"{c.target}-{c.fault}") for c in CELLS if c.stage == stage]


@pytest.mark.parametrize("cell", cells("pairing"))
def test_fault_before_pairing(matrix: Matrix, cell: Cell) -> None:
    """A process killed or frozen while the sender waits for its receiver leaves the others exiting with the documented status and reason, and no file."""
    check_cell(matrix, cell)


@pytest.mark.parametrize("cell", cells("code-check"))
def test_fault_during_code_check(matrix: Matrix, cell: Cell) -> None:
    """A process killed or frozen during the SPAKE2 key confirmation leaves the others exiting with the documented status and reason, and no file."""
    check_cell(matrix, cell)


@pytest.mark.parametrize("cell", cells("header"))
def test_fault_at_header(matrix: Matrix, cell: Cell) -> None:
    """A process killed or frozen when the file is being offered leaves the others exiting with the documented status and reason, and no file."""
    check_cell(matrix, cell)


@pytest.mark.parametrize("cell", cells("mid-stream"))
def test_fault_mid_stream(matrix: Matrix, cell: Cell) -> None:
    """A process killed or frozen mid-stream leaves no file under its name, only a killed receiver's temporary file, and the others exit as documented."""
    check_cell(matrix, cell)


@pytest.mark.parametrize("cell", cells("end"))
def test_fault_before_end_of_stream(matrix: Matrix, cell: Cell) -> None:
    """A process killed or frozen with every data record sent leaves either the whole correct file or none, and the others exit as documented."""
    check_cell(matrix, cell)


@pytest.mark.parametrize("cell", cells("ack"))
def test_fault_before_acknowledgement(matrix: Matrix, cell: Cell) -> None:
    """A process killed or frozen after the receiver stored the file keeps the file, and a sender without the acknowledgement says it may be stored."""
    check_cell(matrix, cell)
