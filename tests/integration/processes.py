"""
Real processes for end-to-end tests: the C{twistd filerelay} relay and the
C{send} / C{receive} programs, run with the interpreter under test.

Every process writes stdout and stderr to files under the test's
C{tmp_path}, never to pipes: nothing can block on a full pipe, the sender's
code can be polled for, and a failing test shows exactly what each process
said. Every wait has a deadline, so a hang fails the test instead of
stalling CI.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import pytest

T = TypeVar("T")

#: Seconds any single wait may take before the test fails.
WAIT = 30.0

#: Seconds between polls of a file or a process.
POLL = 0.01

#: The sender's whole stdout: the code (channel, two words), one newline.
CODE_LINE = re.compile(r"^\d+(-[a-z]+){2}$")

#: Twisted's standard log line once a factory's listening port is up.
LISTENING = re.compile(r"RelayFactory starting on (\d+)")

#: C{python -m twisted} is C{twist}, not C{twistd}, and
#: C{twisted.scripts.twistd} has no C{__main__} guard; this runs the real
#: twistd under the interpreter being tested, whatever is on PATH.
TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
]


def poll_until(check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Call C{check} until it returns something other than C{None} or
    C{False}; fail the test after C{timeout} seconds."""
    end = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL)


@dataclass
class Proc:
    """One child process whose output goes to files."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_bytes().decode("utf-8", "replace")

    def stderr(self) -> str:
        return self.stderr_path.read_bytes().decode("utf-8", "replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float = WAIT) -> int:
        """The exit status; the test fails if the process outlives C{timeout}."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running after {timeout}s\n{self.describe()}")

    def signal(self, signum: int) -> None:
        if self.running():
            self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap; a no-op once it has exited."""
        if self.running():
            self.popen.send_signal(signal.SIGCONT)  # a stopped process must die too
            self.popen.kill()
        try:
            self.popen.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:  # pragma: no cover - only if the kernel is stuck
            pass

    def describe(self) -> str:
        """Everything a failure message needs about this process."""
        return (
            f"--- {self.name} (pid {self.pid}, exit {self.popen.returncode}) {self.argv!r}\n"
            f"--- stdout:\n{self.stdout()}\n--- stderr:\n{self.stderr()}"
        )


class Launcher:
    """Starts child processes in C{tmp_path}; L{kill_all} reaps the rest."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.logs = tmp_path / "logs"
        self.logs.mkdir(exist_ok=True)
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str]) -> Proc:
        n = len(list(self.logs.iterdir()))
        out = self.logs / f"{n:03d}-{name}.out"
        err = self.logs / f"{n:03d}-{name}.err"
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        with open(out, "wb") as o, open(err, "wb") as e:
            popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=o, stderr=e, cwd=self.tmp_path, env=env
            )
        proc = Proc(name, list(argv), popen, out, err)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            proc.kill()


@dataclass
class Relay:
    """A running C{twistd -n filerelay} and the address clients use."""

    proc: Proc
    port: int
    forwarding: str = "auto"
    address: str = field(init=False)

    def __post_init__(self) -> None:
        self.address = f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.proc.stdout() + self.proc.stderr()

    def assert_alive(self) -> None:
        assert self.proc.running(), f"the relay died\n{self.proc.describe()}"


def start_relay(launcher: Launcher, extra_args: Sequence[str] = (), forwarding: str = "auto") -> Relay:
    """Start the relay on a kernel-chosen loopback port and learn the port
    from Twisted's "RelayFactory starting on N" log line.

    @param extra_args: more C{twistd filerelay} options, such as
        C{("--idle-timeout", "3")}.
    @param forwarding: its C{--forwarding}; L{stop_relay} checks that every
        transfer that moved bytes used it (C{auto} is not checked)."""
    proc = launcher.start(
        "relay",
        [
            *TWISTD, "-n", "--pidfile=", "filerelay", "--port", "tcp:0:interface=127.0.0.1",
            "--forwarding", forwarding, *extra_args,
        ],
    )  # fmt: skip

    def listening() -> int | None:
        found = LISTENING.search(proc.stdout())
        if found:
            return int(found.group(1))
        if not proc.running():
            pytest.fail(f"the relay exited before listening\n{proc.describe()}")
        return None

    return Relay(proc, poll_until(listening, "the relay to listen"), forwarding)


def stop_relay(relay: Relay) -> None:
    """SIGTERM, wait, and insist on a clean shutdown with no traceback logged.

    The relay's drain clears the signal twistd would re-raise, so an orderly
    stop exits 0; "Server Shut Down." in the log confirms it ran to the end."""
    relay.proc.signal(signal.SIGTERM)
    status = relay.proc.wait()
    assert status == 0, f"the relay exited {status} on SIGTERM\n{relay.proc.describe()}"
    assert "Server Shut Down." in relay.log(), f"the relay did not shut down cleanly\n{relay.proc.describe()}"
    assert "Traceback" not in relay.log(), f"the relay logged a traceback\n{relay.proc.describe()}"
    check_forwarding(relay)


def check_forwarding(relay: Relay) -> None:
    """A transfer that ran on the other path would let a test pass without
    covering the path it claims to. With C{copy} no transfer may splice;
    with C{splice} every one that moved a megabyte must have (a transfer
    cut right after pairing may end before the kernel takes over)."""
    ended = re.findall(r"(\d+) bytes up, \d+ down by (\w+)", relay.log())
    if relay.forwarding == "copy":
        assert all(path == "copy" for _, path in ended), f"a transfer spliced\n{relay.proc.describe()}"
    elif relay.forwarding == "splice":
        big = [path for up, path in ended if int(up) >= 1 << 20]
        assert all(path == "splice" for path in big), f"a big transfer copied\n{relay.proc.describe()}"


class Clients:
    """Runs the two CLIs against one relay, as C{python -m ...}."""

    def __init__(self, relay: Relay, launcher: Launcher) -> None:
        self.relay = relay
        self.launcher = launcher

    def send(self, path: Path, *extra: str) -> Proc:
        argv = [sys.executable, "-m", "twisted_relay.send", self.relay.address, str(path), *extra]
        return self.launcher.start("send", argv)

    def receive(self, code: str, outdir: Path, *extra: str) -> Proc:
        argv = [sys.executable, "-m", "twisted_relay.receive", self.relay.address, code, str(outdir), *extra]
        return self.launcher.start("receive", argv)

    def code_of(self, sender: Proc, timeout: float = WAIT) -> str:
        """Wait for the sender's first stdout line, its code, and return it."""

        def first_line() -> str | None:
            text = sender.stdout()
            if "\n" in text:
                return text.split("\n", 1)[0]
            if not sender.running():
                pytest.fail(f"the sender exited without printing a code\n{sender.describe()}")
            return None

        code = poll_until(first_line, "the sender's code", timeout)
        # Fail here, not 30 s later when a receiver given garbage never comes.
        assert CODE_LINE.match(code), f"the sender's first line is not a code: {code!r}\n{sender.describe()}"
        return code


def console_script(name: str) -> str:
    """The installed console script C{name}: the one beside the interpreter
    under test, else whatever PATH has."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"console script {name} is not installed")
    return found


def entries(folder: Path) -> list[str]:
    """Every name in C{folder}, hidden ones included, sorted."""
    return sorted(os.listdir(folder))


def part_files(folder: Path) -> list[Path]:
    """The receiver's temporary files in C{folder}."""
    return sorted(folder.glob(".filerelay-*.part"))
