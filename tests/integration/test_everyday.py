"""
Everyday use of peer protocol 3 through a real relay and real client
processes: folders, several paths at once, pipes in and out, the relay and
the code from the environment, and progress bars on a terminal only.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import random
import stat
import struct
import subprocess
import sys
import tarfile
import termios
import threading
from pathlib import Path
from typing import IO, Any

import pytest

from tests.integration.processes import CODE_LINE, WAIT, Clients, Launcher, Proc, Relay, entries, poll_until

#: What tqdm draws and nothing else prints: "sending:  42%|####  | 1.2M/3M [00:01<00:01, 1.1MB/s]".
BAR_MARKS = ("%|", "B/s")


# ---------------------------------------------------------------------------
# helpers


class Capture:
    """A child's stderr through a pseudo-terminal or a pipe, copied by a
    thread into the child's log file as it comes, so nothing blocks and a
    failing test still shows what was said."""

    def __init__(self, kind: str, log: Path) -> None:
        self.kind = kind
        self.log = log
        if kind == "pty":
            self.ours, self.theirs = pty.openpty()
            # A real terminal has a size; tqdm asks for it.
            fcntl.ioctl(self.theirs, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        elif kind == "pipe":
            self.ours, self.theirs = os.pipe()
        else:  # pragma: no cover
            raise AssertionError(kind)
        self._thread = threading.Thread(target=self._copy, daemon=True)

    def started(self) -> None:
        """The child has its end: close ours of it and start copying."""
        os.close(self.theirs)
        self._thread.start()

    def _copy(self) -> None:
        with open(self.log, "ab") as out:
            while True:
                try:
                    chunk = os.read(self.ours, 65536)
                except OSError:  # EIO: the terminal's last writer has gone
                    break
                if not chunk:
                    break
                out.write(chunk)
                out.flush()
        os.close(self.ours)

    def output(self, timeout: float = WAIT) -> str:
        """Everything the child wrote, once it has closed its end."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self.log} still open after {timeout}s"
        return self.log.read_bytes().decode("utf-8", "replace")


def launch(
    launcher: Launcher,
    name: str,
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: Any = subprocess.DEVNULL,
    stderr: str = "file",
) -> tuple[Proc, Capture | None]:
    """Like L{Launcher.start}, with a working folder, environment, stdin
    and a pty or pipe for stderr as asked (C{stdin="pty"}: the same
    terminal as stderr). The process is registered with the launcher, so
    the fixtures kill it if the test fails."""
    n = len(list(launcher.logs.iterdir()))
    out = launcher.logs / f"{n:03d}-{name}.out"
    err = launcher.logs / f"{n:03d}-{name}.err"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FILERELAY_")}
    full_env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    capture = None if stderr == "file" else Capture(stderr, err)
    if stdin == "pty":
        assert capture is not None and capture.kind == "pty"
        stdin = capture.theirs
    with open(out, "wb") as o, open(err, "wb") as e:
        popen = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=o,
            stderr=e if capture is None else capture.theirs,
            cwd=cwd or launcher.tmp_path,
            env=full_env,
        )
    if capture is not None:
        capture.started()
    proc = Proc(name, argv, popen, out, err)
    launcher.procs.append(proc)
    return proc, capture


def send_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "twisted_relay.send", *args]


def receive_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "twisted_relay.receive", *args]


def write(path: Path, data: bytes, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    return path


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under C{root}, relative, with its bytes (None: a folder)."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            assert stat.S_ISREG(os.lstat(path).st_mode), path
            found[os.path.relpath(path, root)] = Path(path).read_bytes()
    return found


def make_folder(root: Path, seed: int = 0) -> Path:
    """A folder with nested and empty subfolders, empty files, non-ASCII,
    hidden and long names, an executable and a multi-record file."""
    rng = random.Random(seed)
    write(root / "a.txt", b"hello\n")
    write(root / "empty.txt", b"")
    write(root / ".hidden", b"hidden files inside a folder are fine\n")
    write(root / "run.sh", b"#!/bin/sh\necho hi\n", mode=0o755)
    write(root / "big.bin", rng.randbytes(700 * 1024 + 3))  # several 256 KiB records
    write(root / "sub" / "deeper" / "deepest" / "leaf.bin", rng.randbytes(5000))
    write(root / "sub" / "deeper" / "empty", b"")
    write(root / "été" / "naïve 日本語 ✓.txt", "unicode ✓\n".encode())
    write(root / ("l" * 120) / ("n" * 140 + ".txt"), b"a long path\n")
    for rel in ["vide", "sub/empty-inside", "été/rien/encore rien"]:
        (root / rel).mkdir(parents=True)
    return root


def code_line(sender: Proc) -> str:
    """The sender's whole stdout, checked to be one line holding a code."""
    out = sender.stdout()
    assert out.endswith("\n") and out.count("\n") == 1, f"sender stdout is not one line: {out!r}\n{sender.describe()}"
    assert CODE_LINE.match(out[:-1]), f"sender stdout is not a code: {out!r}"
    return out[:-1]


def finished(sender: Proc, receiver: Proc) -> None:
    """Both exit 0 and the sender printed only its code."""
    receiver_status = receiver.wait()
    story = f"\n{receiver.describe()}\n{sender.describe()}"
    assert receiver_status == 0, story
    assert sender.wait() == 0, story
    code_line(sender)


def no_bar(text: str) -> None:
    """No trace of a progress bar in C{text}."""
    for mark in BAR_MARKS:
        assert mark not in text, f"progress bar output {mark!r} in {text!r}"
    assert "\r" not in text, f"carriage return in {text!r}"


def no_leftovers(folder: Path) -> None:
    assert [name for name in os.listdir(folder) if name.startswith(".filerelay-")] == []


# ---------------------------------------------------------------------------
# folders and several paths


def test_folder_round_trips_identical(clients: Clients, tmp_path: Path) -> None:
    """A folder with nested and empty folders, empty files and non-ASCII names arrives as the same tree."""
    source = make_folder(tmp_path / "src" / "photos")
    outdir = tmp_path / "out"
    sender = clients.send(source)
    receiver = clients.receive(clients.code_of(sender), outdir)
    finished(sender, receiver)
    assert entries(outdir) == ["photos"]
    got, want = tree(outdir / "photos"), tree(source)
    assert sorted(got) == sorted(want)
    assert got == want
    for empty in ["vide", "sub/empty-inside", "été/rien/encore rien"]:
        assert (outdir / "photos" / empty).is_dir() and not os.listdir(outdir / "photos" / empty)
    assert os.access(outdir / "photos" / "run.sh", os.X_OK)
    assert receiver.stdout() == ""
    no_bar(sender.stderr() + receiver.stderr())


def test_several_paths_into_outdir(clients: Clients, tmp_path: Path) -> None:
    """Several files and a folder sent at once each arrive in OUTDIR under their own names."""
    src = tmp_path / "src"
    rng = random.Random(2)
    a = write(src / "a.txt", b"alpha\n")
    b = write(src / "pics" / "b.jpg", rng.randbytes(300 * 1024))
    folder = make_folder(src / "dir", seed=3)
    outdir = tmp_path / "out"
    sender = clients.send(a, str(b), f"{folder}/")
    receiver = clients.receive(clients.code_of(sender), outdir)
    finished(sender, receiver)
    assert entries(outdir) == ["a.txt", "b.jpg", "dir"]
    assert (outdir / "a.txt").read_bytes() == a.read_bytes()
    assert (outdir / "b.jpg").read_bytes() == b.read_bytes()
    assert tree(outdir / "dir") == tree(folder)
    assert receiver.stdout() == ""


def test_existing_folder_refused_then_overwritten(clients: Clients, tmp_path: Path) -> None:
    """A folder the receiver already has is refused and left untouched; with --overwrite it is replaced whole."""
    source = make_folder(tmp_path / "src" / "dir", seed=4)
    outdir = tmp_path / "out"
    write(outdir / "dir" / "old.txt", b"mine, keep it")
    write(outdir / "dir" / "a.txt", b"my own a.txt")
    (outdir / "dir" / "my-empty").mkdir()
    before = tree(outdir)

    sender = clients.send(source)
    receiver = clients.receive(clients.code_of(sender), outdir)
    story = lambda: f"\n{receiver.describe()}\n{sender.describe()}"  # noqa: E731
    assert receiver.wait() == 8, story()
    assert sender.wait() == 8, story()
    assert "--overwrite" in receiver.stderr(), story()
    assert tree(outdir) == before
    no_leftovers(outdir)

    sender = clients.send(source)
    receiver = clients.receive(clients.code_of(sender), outdir, "--overwrite")
    finished(sender, receiver)
    assert entries(outdir) == ["dir"]
    assert tree(outdir / "dir") == tree(source)  # old.txt and my-empty are gone: replaced, not merged


def test_skipped_top_level_link_does_not_spoil_the_rest(clients: Clients, tmp_path: Path) -> None:
    """A symbolic link among the paths is skipped with a message, and the other paths still arrive."""
    src = tmp_path / "src"
    a = write(src / "a.txt", b"alpha\n")
    (src / "link").symlink_to("a.txt")
    folder = make_folder(src / "dir", seed=5)
    outdir = tmp_path / "out"
    sender = clients.send(a, str(src / "link"), str(folder))
    receiver = clients.receive(clients.code_of(sender), outdir)
    finished(sender, receiver)
    assert "skipping" in sender.stderr() and "link" in sender.stderr(), sender.describe()
    assert entries(outdir) == ["a.txt", "dir"]
    assert tree(outdir / "dir") == tree(folder)


# ---------------------------------------------------------------------------
# pipes


def feed(stdin: IO[bytes], data: bytes) -> threading.Thread:
    """Write C{data} into a child's stdin pipe from a thread, then close it:
    the sender reads only once paired, and the pipe holds less than that."""

    def run() -> None:
        try:
            stdin.write(data)
        except BrokenPipeError:
            pass
        finally:
            stdin.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_stdin_to_stdout_round_trip(launcher: Launcher, relay: Relay, clients: Clients, tmp_path: Path) -> None:
    """Bytes piped into the sender come out of the receiver's stdout identical, and nothing else does."""
    data = random.Random(6).randbytes(3 * 1024 * 1024 + 11)
    sender, _ = launch(launcher, "send", send_argv(relay.address, "-"), stdin=subprocess.PIPE)
    writer = feed(sender.popen.stdin, data)
    receiver, _ = launch(launcher, "receive", receive_argv(relay.address, clients.code_of(sender), "-"))
    finished(sender, receiver)
    writer.join(WAIT)
    got = receiver.stdout_path.read_bytes()
    assert len(got) == len(data) and got == data
    no_bar(sender.stderr() + receiver.stderr())
    assert sorted(os.listdir(tmp_path)) == ["logs"], "a file was written where the receiver ran"


def test_stdin_into_outdir_under_its_name(launcher: Launcher, relay: Relay, clients: Clients, tmp_path: Path) -> None:
    """Piped input sent with --name is stored in OUTDIR under that name."""
    data = random.Random(7).randbytes(600 * 1024)
    sender, _ = launch(
        launcher, "send", send_argv(relay.address, "-", "--name", "dump é.sql"), stdin=subprocess.PIPE
    )
    writer = feed(sender.popen.stdin, data)
    outdir = tmp_path / "out"
    receiver = clients.receive(clients.code_of(sender), outdir)
    finished(sender, receiver)
    writer.join(WAIT)
    assert entries(outdir) == ["dump é.sql"]
    assert (outdir / "dump é.sql").read_bytes() == data


def test_folder_to_stdout_is_a_tar_stream(launcher: Launcher, relay: Relay, clients: Clients, tmp_path: Path) -> None:
    """A folder received with `-` comes out on stdout as a tar stream that unpacks to the same tree."""
    source = make_folder(tmp_path / "src" / "photos", seed=9)
    sender = clients.send(source)
    receiver, _ = launch(launcher, "receive", receive_argv(relay.address, clients.code_of(sender), "-"))
    finished(sender, receiver)
    unpacked = tmp_path / "unpacked"
    with tarfile.open(fileobj=io.BytesIO(receiver.stdout_path.read_bytes()), mode="r:") as tar:
        tar.extractall(unpacked, filter="data")
    assert entries(unpacked) == ["photos"]
    assert tree(unpacked / "photos") == tree(source)


# ---------------------------------------------------------------------------
# the relay and the code from the environment


def test_relay_from_environment(launcher: Launcher, relay: Relay, clients: Clients, tmp_path: Path) -> None:
    """With FILERELAY_RELAY set, `send FILE` and `receive CODE` work, storing into the current folder."""
    source = write(tmp_path / "src" / "note.txt", b"relay from the environment\n")
    here = tmp_path / "here"
    here.mkdir()
    env = {"FILERELAY_RELAY": relay.address}
    sender, _ = launch(launcher, "send", send_argv(str(source)), env=env)
    code = clients.code_of(sender)
    receiver, _ = launch(launcher, "receive", receive_argv(code), env=env, cwd=here)
    finished(sender, receiver)
    assert entries(here) == ["note.txt"]
    assert (here / "note.txt").read_bytes() == source.read_bytes()


def test_code_from_environment(launcher: Launcher, relay: Relay, clients: Clients, tmp_path: Path) -> None:
    """With FILERELAY_CODE set, the receiver needs no CODE argument."""
    source = write(tmp_path / "src" / "secret.bin", os.urandom(4096))
    sender = clients.send(source)
    code = clients.code_of(sender)
    outdir = tmp_path / "out"
    receiver, _ = launch(
        launcher, "receive", receive_argv(relay.address, str(outdir)), env={"FILERELAY_CODE": code}
    )
    assert code not in " ".join(receiver.argv)
    finished(sender, receiver)
    assert entries(outdir) == ["secret.bin"]
    assert (outdir / "secret.bin").read_bytes() == source.read_bytes()


def test_code_typed_at_the_terminal(launcher: Launcher, relay: Relay, clients: Clients, tmp_path: Path) -> None:
    """Without a CODE argument or FILERELAY_CODE the receiver asks on the terminal, and a code typed loosely works."""
    source = write(tmp_path / "src" / "typed.txt", b"typed by hand\n")
    sender = clients.send(source)
    code = clients.code_of(sender)
    outdir = tmp_path / "out"
    receiver, terminal = launch(
        launcher, "receive", receive_argv(relay.address, str(outdir)), stdin="pty", stderr="pty"
    )
    assert terminal is not None
    poll_until(lambda: "Code" in receiver.stderr() or not receiver.running(), "the code prompt")
    assert receiver.running(), receiver.describe()
    os.write(terminal.ours, code.upper().replace("-", " ").encode() + b"\n")
    finished(sender, receiver)
    assert (outdir / "typed.txt").read_bytes() == source.read_bytes()
    assert code not in " ".join(receiver.argv)


def test_no_code_and_no_terminal_is_a_usage_error(
    launcher: Launcher, relay: Relay, clients: Clients, tmp_path: Path
) -> None:
    """Without a code from anywhere and no terminal to ask on, the receiver stops at once with exit 2."""
    outdir = tmp_path / "out"
    receiver, _ = launch(launcher, "receive", receive_argv(relay.address, str(outdir)))
    assert receiver.wait() == 2, receiver.describe()
    assert "FILERELAY_CODE" in receiver.stderr(), receiver.describe()
    assert receiver.stdout() == ""


# ---------------------------------------------------------------------------
# progress bars


def bar_transfer(
    launcher: Launcher, relay: Relay, tmp_path: Path, stderr: str, *extra: str
) -> tuple[str, str, Path]:
    """Send a 4 MiB file with both clients' stderr on C{stderr} ("pty" or
    "pipe"); return what each wrote there and the output folder."""
    source = write(tmp_path / "src" / "movie.bin", random.Random(8).randbytes(4 * 1024 * 1024))
    outdir = tmp_path / "out"
    sender, sender_err = launch(launcher, "send", send_argv(relay.address, str(source), *extra), stderr=stderr)
    code = Clients(relay, launcher).code_of(sender)
    receiver, receiver_err = launch(
        launcher, "receive", receive_argv(relay.address, code, str(outdir), *extra), stderr=stderr
    )
    finished(sender, receiver)
    assert sender_err is not None and receiver_err is not None
    assert (outdir / "movie.bin").read_bytes() == source.read_bytes()
    assert receiver.stdout() == ""
    return sender_err.output(), receiver_err.output(), outdir


def test_progress_bars_on_a_terminal(launcher: Launcher, relay: Relay, clients: Clients, tmp_path: Path) -> None:
    """On a terminal both programs draw a labelled progress bar on stderr."""
    sent, received, _ = bar_transfer(launcher, relay, tmp_path, "pty")
    for label, text in [("sending", sent), ("receiving", received)]:
        assert f"{label}:" in text, text
        for mark in BAR_MARKS:
            assert mark in text, f"no {mark!r} in the {label} terminal: {text!r}"
        assert "100%" in text, text


def test_progress_of_a_pipe_on_a_terminal(launcher: Launcher, relay: Relay, clients: Clients, tmp_path: Path) -> None:
    """Piped input of unknown size still shows bytes and rate on both terminals, and stdout carries only the data."""
    data = random.Random(10).randbytes(2 * 1024 * 1024)
    sender, sender_err = launch(launcher, "send", send_argv(relay.address, "-"), stdin=subprocess.PIPE, stderr="pty")
    writer = feed(sender.popen.stdin, data)
    receiver, receiver_err = launch(
        launcher, "receive", receive_argv(relay.address, clients.code_of(sender), "-"), stderr="pty"
    )
    finished(sender, receiver)
    writer.join(WAIT)
    assert receiver.stdout_path.read_bytes() == data
    assert sender_err is not None and receiver_err is not None
    for label, text in [("sending", sender_err.output()), ("receiving", receiver_err.output())]:
        assert f"{label}:" in text and "B/s" in text, f"no {label} bar: {text!r}"


def test_no_progress_bar_when_stderr_is_a_pipe(
    launcher: Launcher, relay: Relay, clients: Clients, tmp_path: Path
) -> None:
    """With stderr piped to another program there is no bar and no carriage return."""
    sent, received, _ = bar_transfer(launcher, relay, tmp_path, "pipe")
    no_bar(sent)
    no_bar(received)
    assert "sending:" not in sent and "receiving:" not in received


def test_quiet_on_a_terminal_prints_nothing(launcher: Launcher, relay: Relay, clients: Clients, tmp_path: Path) -> None:
    """With --quiet, even on a terminal, a successful transfer prints nothing on stderr."""
    sent, received, _ = bar_transfer(launcher, relay, tmp_path, "pty", "--quiet")
    assert sent == "" and received == "", (sent, received)


# ---------------------------------------------------------------------------
# known problems


def test_overwrite_replaces_a_folder_with_a_file(clients: Clients, tmp_path: Path) -> None:
    """With --overwrite a file replaces a folder of the same name, as a folder replaces a file."""
    source = write(tmp_path / "src" / "thing", b"now a file\n")
    outdir = tmp_path / "out"
    write(outdir / "thing" / "inside.txt", b"was a folder")
    sender = clients.send(source)
    receiver = clients.receive(clients.code_of(sender), outdir, "--overwrite")
    finished(sender, receiver)
    assert entries(outdir) == ["thing"]
    assert (outdir / "thing").read_bytes() == source.read_bytes()
