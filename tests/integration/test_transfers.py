"""
Files that should arrive do arrive, byte for byte, through a real relay and
real client processes over loopback.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.processes import (
    CODE_LINE,
    TWISTD,
    WAIT,
    Clients,
    Proc,
    Relay,
    console_script,
    entries,
)


def write_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def assert_delivered(sender: Proc, receiver: Proc, source: Path, outdir: Path) -> None:
    """Both exit 0, the sender printed only its code, the receiver printed
    nothing, and OUTDIR holds exactly the file, identical to the source."""
    receiver_status = receiver.wait()
    # If the receiver failed, the sender may wait for it forever: don't.
    assert receiver_status == 0, f"\n{receiver.describe()}\n{sender.describe()}"
    sender_status = sender.wait()
    story = f"\n{sender.describe()}\n{receiver.describe()}"
    assert sender_status == 0, story
    out = sender.stdout()
    assert out.endswith("\n") and out.count("\n") == 1, f"sender stdout is not one line: {out!r}"
    assert CODE_LINE.match(out[:-1]), f"sender stdout is not a code: {out!r}"
    assert receiver.stdout() == "", story
    assert entries(outdir) == [source.name], story
    assert (outdir / source.name).read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("empty.bin", 0),
        ("one.bin", 1),
        ("big.bin", 8 * 1024 * 1024),
        ("corgis vidéo été.bin", 4096),
    ],
    ids=["0B", "1B", "8MiB", "non-ascii-name"],
)
def test_file_arrives_identical(clients: Clients, tmp_path: Path, name: str, size: int) -> None:
    """A file of any size or name arrives byte-identical under its own name."""
    source = write_file(tmp_path / "src" / name, os.urandom(size))
    outdir = tmp_path / "out"
    sender = clients.send(source)
    receiver = clients.receive(clients.code_of(sender), outdir)
    assert_delivered(sender, receiver, source, outdir)


def test_receiver_starting_later_still_gets_the_file(clients: Clients, tmp_path: Path) -> None:
    """A receiver who types the code a while after it was printed still gets the file."""
    source = write_file(tmp_path / "src" / "later.bin", os.urandom(64 * 1024))
    outdir = tmp_path / "out"
    sender = clients.send(source)
    code = clients.code_of(sender)  # printed while no receiver exists
    time.sleep(2.0)
    assert sender.running(), f"the sender gave up while waiting\n{sender.describe()}"
    receiver = clients.receive(code, outdir)
    assert_delivered(sender, receiver, source, outdir)


def test_twenty_concurrent_transfers(clients: Clients, relay: Relay, tmp_path: Path) -> None:
    """Twenty people sending at once through one relay each get their own file intact."""
    rng = random.Random(20)
    sources = [
        write_file(tmp_path / "src" / f"file-{i:02d}.bin", os.urandom(rng.randint(256 * 1024, 1024 * 1024)))
        for i in range(20)
    ]
    senders = [clients.send(source) for source in sources]
    codes = [clients.code_of(sender) for sender in senders]
    assert len({code.split("-")[0] for code in codes}) == 20, f"channels were shared: {codes}"
    outdirs = [tmp_path / f"out-{i:02d}" for i in range(20)]
    receivers = [clients.receive(code, outdir) for code, outdir in zip(codes, outdirs)]
    for sender, receiver, source, outdir in zip(senders, receivers, sources, outdirs):
        assert_delivered(sender, receiver, source, outdir)
    relay.assert_alive()


@pytest.mark.parametrize("name", ["filerelay-send", "filerelay-receive"])
def test_console_script_help(name: str, tmp_path: Path) -> None:
    """The installed filerelay-send and filerelay-receive commands show their help."""
    result = subprocess.run(
        [console_script(name), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=WAIT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {name}"), result.stdout


def test_twistd_lists_the_plugin(tmp_path: Path) -> None:
    """`twistd --help` offers filerelay among its commands."""
    result = subprocess.run([*TWISTD, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 0, result.stderr
    commands = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ") and line.split()]
    assert "filerelay" in commands, result.stdout
