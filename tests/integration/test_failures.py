"""
Transfers that cannot succeed fail with the documented exit code, a sentence
on stderr, and no stray file: wrong or unknown codes, a peer killed halfway,
a name already taken.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from twisted_relay.codes import parse_code, wordlist
from twisted_relay.errors import ExitCode
from tests.integration.processes import (
    Clients,
    Proc,
    Relay,
    entries,
    part_files,
    poll_until,
)

#: Big enough that a kill lands mid-stream, whatever the socket buffers hold;
#: sparse, so it costs no disk on the sending side.
LARGE = 200 * 1024 * 1024

#: How much the receiver's temporary file must hold before we strike.
STARTED = 1024 * 1024


def sparse_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def stderr_lines(proc: Proc) -> list[str]:
    return proc.stderr().splitlines()


def assert_says(proc: Proc, line: str) -> None:
    """C{proc} told its user C{line}, as a line of its own, with no traceback."""
    assert line in stderr_lines(proc), proc.describe()
    assert "Traceback" not in proc.stderr(), proc.describe()


def wait_until_streaming(receiver: Proc, outdir: Path) -> Path:
    """Return the receiver's temporary file once it holds some of the body."""

    def growing() -> Path | None:
        if not receiver.running():
            raise AssertionError(f"the receiver ended before we could interrupt it\n{receiver.describe()}")
        for part in part_files(outdir) if outdir.exists() else []:
            try:
                if part.stat().st_size >= STARTED:
                    return part
            except FileNotFoundError:
                pass
        return None

    return poll_until(growing, "the receiver's temporary file to grow")


def test_unknown_code(clients: Clients, tmp_path: Path) -> None:
    """A code nobody is sending with fails at once with exit 4 and says so."""
    first, second = wordlist()[:2]
    outdir = tmp_path / "out"
    receiver = clients.receive(f"7-{first}-{second}", outdir)
    assert receiver.wait() == ExitCode.UNKNOWN_CODE, receiver.describe()
    assert_says(receiver, "filerelay-receive: no sender is waiting with this code")
    assert receiver.stdout() == ""
    assert not outdir.exists() or entries(outdir) == []


def test_wrong_words(clients: Clients, tmp_path: Path) -> None:
    """A receiver with the right number but wrong words gets nothing; both sides exit 5."""
    source = tmp_path / "src" / "secret.bin"
    source.parent.mkdir()
    source.write_bytes(os.urandom(4096))
    outdir = tmp_path / "out"
    sender = clients.send(source)
    code = parse_code(clients.code_of(sender))
    wrong = tuple(w for w in wordlist() if w not in code.words)[: len(code.words)]
    receiver = clients.receive("-".join([str(code.channel), *wrong]), outdir)
    assert receiver.wait() == ExitCode.WRONG_CODE, receiver.describe()
    assert sender.wait() == ExitCode.WRONG_CODE, sender.describe()
    assert_says(receiver, "filerelay-receive: wrong code: it does not match the sender's; the sender must start again for a new code")
    assert_says(sender, "filerelay-send: the receiver used a wrong code; nothing was sent. Start again for a new code")
    assert entries(outdir) == []


def test_sender_killed_mid_stream(clients: Clients, tmp_path: Path) -> None:
    """If the sender dies halfway, the receiver exits 6 and leaves no partial file behind."""
    source = sparse_file(tmp_path / "src" / "huge.bin", LARGE)
    outdir = tmp_path / "out"
    sender = clients.send(source)
    receiver = clients.receive(clients.code_of(sender), outdir)
    wait_until_streaming(receiver, outdir)
    # Freeze the receiver so the transfer cannot finish before the kill.
    receiver.signal(signal.SIGSTOP)
    sender.kill()
    receiver.signal(signal.SIGCONT)
    assert receiver.wait() == ExitCode.PEER_GONE, receiver.describe()
    assert_says(
        receiver,
        "filerelay-receive: the stream ended before the sender's end-of-stream record "
        "(the sender went away or the connection was cut); nothing was saved",
    )
    assert entries(outdir) == [], "a partial or temporary file was left behind"


def test_receiver_killed_mid_stream(clients: Clients, relay: Relay, tmp_path: Path) -> None:
    """If the receiver dies halfway, the sender exits 6 promptly and the relay carries on."""
    source = sparse_file(tmp_path / "src" / "huge.bin", LARGE)
    outdir = tmp_path / "out"
    sender = clients.send(source)
    receiver = clients.receive(clients.code_of(sender), outdir)
    wait_until_streaming(receiver, outdir)
    # Freeze the sender so the transfer cannot finish before the kill.
    sender.signal(signal.SIGSTOP)
    receiver.kill()
    sender.signal(signal.SIGCONT)
    started = time.monotonic()
    assert sender.wait(timeout=5.0) == ExitCode.PEER_GONE, sender.describe()
    assert time.monotonic() - started < 5.0
    assert_says(sender, "filerelay-send: the receiver went away before the file was stored")

    relay.assert_alive()
    small = tmp_path / "src" / "after.bin"
    small.write_bytes(os.urandom(10_000))
    again = tmp_path / "again"
    sender2 = clients.send(small)
    receiver2 = clients.receive(clients.code_of(sender2), again)
    assert receiver2.wait() == 0, receiver2.describe()
    assert sender2.wait() == 0, sender2.describe()
    assert (again / "after.bin").read_bytes() == small.read_bytes()


def test_existing_file_is_not_overwritten(clients: Clients, tmp_path: Path) -> None:
    """A file already in OUTDIR is left alone (both sides exit 8) unless --overwrite is given."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    existing = outdir / "clash.bin"
    existing.write_bytes(b"the receiver's own precious data\n")
    source = tmp_path / "src" / "clash.bin"
    source.parent.mkdir()
    source.write_bytes(os.urandom(50_000))

    sender = clients.send(source)
    receiver = clients.receive(clients.code_of(sender), outdir)
    assert receiver.wait() == ExitCode.FILE_REFUSED, receiver.describe()
    assert sender.wait() == ExitCode.FILE_REFUSED, sender.describe()
    assert existing.read_bytes() == b"the receiver's own precious data\n"
    assert entries(outdir) == ["clash.bin"]
    assert "--overwrite" in receiver.stderr(), receiver.describe()
    assert_says(sender, "filerelay-send: the receiver already has a file named 'clash.bin' and did not overwrite it")

    sender = clients.send(source)
    receiver = clients.receive(clients.code_of(sender), outdir, "--overwrite")
    assert receiver.wait() == 0, receiver.describe()
    assert sender.wait() == 0, sender.describe()
    assert existing.read_bytes() == source.read_bytes()
    assert entries(outdir) == ["clash.bin"]
