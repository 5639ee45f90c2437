"""
Tests for L{twisted_relay.incoming.IncomingFile}: a received file appears
under its final name only complete, and failures leave nothing behind.
"""

from __future__ import annotations

import errno
import os

import pytest

from twisted_relay import incoming
from twisted_relay.filenames import BadName
from twisted_relay.incoming import FileExists, IncomingFile, is_disk_full


def temps(folder) -> list[str]:
    """The temporary files an IncomingFile may leave in C{folder}."""
    return [name for name in os.listdir(folder) if name.startswith(".filerelay-")]


class FailingFile:
    """Stands in for IncomingFile's internal file: delegates to the real one
    but fails writes (and optionally flush/close) with C{error}, as a full
    disk does."""

    def __init__(self, real, error: OSError, fail_write=True, fail_flush=False, fail_close=False):
        self.real = real
        self.error = error
        self.fail_write = fail_write
        self.fail_flush = fail_flush
        self.fail_close = fail_close

    def write(self, data):
        if self.fail_write:
            raise self.error
        return self.real.write(data)

    def flush(self):
        if self.fail_flush:
            raise self.error
        return self.real.flush()

    def close(self):
        self.real.close()  # release the descriptor either way
        if self.fail_close:
            raise self.error

    def __getattr__(self, name):
        return getattr(self.real, name)


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---------------------------------------------------------------------------
# the happy path


def test_writes_go_to_hidden_temp_file(tmp_path):
    """While receiving, bytes go to a hidden temporary file in the output folder, not the final name."""
    f = IncomingFile(str(tmp_path), "report.pdf", 11)
    f.write(b"hello ")
    f.write(b"world")
    f._file.flush()
    assert not (tmp_path / "report.pdf").exists()
    [temp] = temps(tmp_path)
    assert temp.startswith(".filerelay-") and temp.endswith(".part")
    assert os.path.dirname(f.temp_path) == str(tmp_path)
    assert (tmp_path / temp).read_bytes() == b"hello world"
    assert f.written == 11
    f.discard()


def test_commit_makes_final_file(tmp_path):
    """After commit the file is under its final name with exactly the bytes received, and no temp file is left."""
    f = IncomingFile(str(tmp_path), "report.pdf", 11)
    f.write(b"hello ")
    f.write(b"world")
    f.commit()
    assert (tmp_path / "report.pdf").read_bytes() == b"hello world"
    assert f.final_path == str(tmp_path / "report.pdf")
    assert temps(tmp_path) == []
    assert os.listdir(tmp_path) == ["report.pdf"]


def test_commit_empty_file(tmp_path):
    """An empty file is committed as an empty file."""
    f = IncomingFile(str(tmp_path), "empty", 0)
    f.commit()
    assert (tmp_path / "empty").read_bytes() == b""
    assert temps(tmp_path) == []


def test_commit_large_file(tmp_path):
    """A file bigger than the write buffer arrives whole and in order."""
    chunks = [bytes([i]) * 300_000 for i in range(8)]
    f = IncomingFile(str(tmp_path), "big.bin", sum(map(len, chunks)))
    for chunk in chunks:
        f.write(chunk)
    f.commit()
    assert (tmp_path / "big.bin").read_bytes() == b"".join(chunks)
    assert temps(tmp_path) == []


def test_non_ascii_name(tmp_path):
    """A non-ASCII, spaced name is stored as given."""
    f = IncomingFile(str(tmp_path), "été à la plage.txt", 3)
    f.write(b"sun")
    f.commit()
    assert (tmp_path / "été à la plage.txt").read_bytes() == b"sun"


def test_discard_removes_temp(tmp_path):
    """Discarding throws the partial file away; the final name never appears."""
    f = IncomingFile(str(tmp_path), "x.bin", 10)
    f.write(b"12345")
    f.discard()
    assert os.listdir(tmp_path) == []


def test_discard_twice_is_harmless(tmp_path):
    """Discarding twice does not raise."""
    f = IncomingFile(str(tmp_path), "x.bin", 10)
    f.discard()
    f.discard()
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# wrong sizes


@pytest.mark.parametrize("sent", [b"", b"short", b"far too many bytes"])
def test_commit_wrong_size_refused(tmp_path, sent):
    """If fewer or more bytes arrived than announced, commit refuses and the final name never appears."""
    f = IncomingFile(str(tmp_path), "x.bin", 10)
    f.write(sent)
    with pytest.raises(ValueError):
        f.commit()
    assert not (tmp_path / "x.bin").exists()
    f.discard()
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# existing files


def test_existing_file_refused_at_start(tmp_path):
    """A file already at the name is refused before anything is written, and is left untouched."""
    (tmp_path / "x.txt").write_bytes(b"precious")
    with pytest.raises(FileExists):
        IncomingFile(str(tmp_path), "x.txt", 3)
    assert (tmp_path / "x.txt").read_bytes() == b"precious"
    assert temps(tmp_path) == []


def test_existing_dangling_symlink_refused(tmp_path):
    """Even a dangling symlink at the name counts as taken (it is not followed)."""
    os.symlink(tmp_path / "nowhere", tmp_path / "x.txt")
    with pytest.raises(FileExists):
        IncomingFile(str(tmp_path), "x.txt", 3)
    assert os.path.islink(tmp_path / "x.txt")
    assert not (tmp_path / "nowhere").exists()
    assert temps(tmp_path) == []


def test_overwrite_replaces_existing(tmp_path):
    """With overwrite allowed, the old file is replaced by the received one."""
    (tmp_path / "x.txt").write_bytes(b"old contents")
    f = IncomingFile(str(tmp_path), "x.txt", 3, overwrite=True)
    assert (tmp_path / "x.txt").read_bytes() == b"old contents"  # not until commit
    f.write(b"new")
    f.commit()
    assert (tmp_path / "x.txt").read_bytes() == b"new"
    assert temps(tmp_path) == []


def test_overwrite_replaces_symlink_not_target(tmp_path):
    """With overwrite allowed, a symbolic link at the name is itself replaced; the file it points to is untouched."""
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"target")
    os.symlink(target, tmp_path / "x.txt")
    f = IncomingFile(str(tmp_path), "x.txt", 3, overwrite=True)
    f.write(b"new")
    f.commit()
    assert not os.path.islink(tmp_path / "x.txt")
    assert (tmp_path / "x.txt").read_bytes() == b"new"
    assert target.read_bytes() == b"target"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_stored_file_mode_follows_umask(tmp_path, umask):
    """The stored file gets the mode any new file would get under the user's umask, not the temp file's 0600."""
    old = os.umask(umask)
    try:
        f = IncomingFile(str(tmp_path), "x.txt", 1)
        f.write(b"1")
        f.commit()
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "x.txt").st_mode & 0o777 == 0o666 & ~umask


def test_overwrite_discard_keeps_old(tmp_path):
    """With overwrite allowed, a discarded transfer leaves the old file as it was."""
    (tmp_path / "x.txt").write_bytes(b"old contents")
    f = IncomingFile(str(tmp_path), "x.txt", 3, overwrite=True)
    f.write(b"new")
    f.discard()
    assert (tmp_path / "x.txt").read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["x.txt"]


def test_file_appearing_during_receive_not_overwritten(tmp_path):
    """A file created at the name while receiving is kept: commit raises FileExists and removes the temp."""
    f = IncomingFile(str(tmp_path), "x.txt", 3)
    f.write(b"new")
    (tmp_path / "x.txt").write_bytes(b"someone else's")
    with pytest.raises(FileExists):
        f.commit()
    assert (tmp_path / "x.txt").read_bytes() == b"someone else's"
    assert temps(tmp_path) == []
    f.discard()  # safe after a failed commit
    assert os.listdir(tmp_path) == ["x.txt"]


def test_file_appearing_without_hard_links(tmp_path, monkeypatch):
    """On a file system without hard links, a file that appeared is still not overwritten."""

    def no_link(src, dst):
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(incoming.os, "link", no_link)
    f = IncomingFile(str(tmp_path), "x.txt", 3)
    f.write(b"new")
    (tmp_path / "x.txt").write_bytes(b"theirs")
    with pytest.raises(FileExists):
        f.commit()
    assert (tmp_path / "x.txt").read_bytes() == b"theirs"
    assert temps(tmp_path) == []


def test_commit_without_hard_links(tmp_path, monkeypatch):
    """On a file system without hard links, commit falls back to a rename and leaves no temp file."""

    def no_link(src, dst):
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(incoming.os, "link", no_link)
    f = IncomingFile(str(tmp_path), "x.txt", 3)
    f.write(b"new")
    f.commit()
    assert (tmp_path / "x.txt").read_bytes() == b"new"
    assert temps(tmp_path) == []


def test_commit_link_error_propagates_and_cleans_up(tmp_path, monkeypatch):
    """An unexpected error while putting the file in place is raised, and the temp file is removed."""

    def broken_link(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(incoming.os, "link", broken_link)
    f = IncomingFile(str(tmp_path), "x.txt", 3)
    f.write(b"new")
    with pytest.raises(OSError) as info:
        f.commit()
    assert info.value.errno == errno.EIO
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# bad names


@pytest.mark.parametrize("name", ["", ".", "..", "../escape", "a/b", "/etc/passwd", "..\\x", "bad\nname", "x\u202etxt"])
def test_bad_names_refused(tmp_path, name):
    """An unsafe name from the peer is refused before any file is created, inside or outside the folder."""
    inner = tmp_path / "out"
    inner.mkdir()
    with pytest.raises(BadName):
        IncomingFile(str(inner), name, 1)
    assert os.listdir(inner) == []
    assert sorted(os.listdir(tmp_path)) == ["out"]


# ---------------------------------------------------------------------------
# full disk


def test_write_disk_full_propagates(tmp_path):
    """A full disk during a write raises OSError(ENOSPC), recognised as a full disk; discard leaves no temp file."""
    f = IncomingFile(str(tmp_path), "x.bin", 10)
    f.write(b"12345")
    f._file = FailingFile(f._file, enospc())
    with pytest.raises(OSError) as info:
        f.write(b"67890")
    assert info.value.errno == errno.ENOSPC
    assert is_disk_full(info.value)
    assert f.written == 5  # the failed chunk is not counted
    f.discard()
    assert os.listdir(tmp_path) == []


def test_disk_full_on_close_during_discard(tmp_path):
    """Discarding still removes the temp file when flushing buffered bytes fails because the disk is full."""
    f = IncomingFile(str(tmp_path), "x.bin", 10)
    f.write(b"12345")
    f._file = FailingFile(f._file, enospc(), fail_write=False, fail_close=True)
    f.discard()
    assert os.listdir(tmp_path) == []


def test_disk_full_on_commit_flush(tmp_path):
    """A full disk found when flushing at commit raises OSError, the final name never appears, and discard cleans up."""
    f = IncomingFile(str(tmp_path), "x.bin", 5)
    f.write(b"12345")
    f._file = FailingFile(f._file, enospc(), fail_write=False, fail_flush=True, fail_close=True)
    with pytest.raises(OSError) as info:
        f.commit()
    assert is_disk_full(info.value)
    assert not (tmp_path / "x.bin").exists()
    f.discard()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "code,full",
    [(errno.ENOSPC, True), (errno.EDQUOT, True), (errno.EIO, False), (errno.EACCES, False), (None, False)],
)
def test_is_disk_full(code, full):
    """Only 'no space' and 'quota exceeded' count as a full disk."""
    error = OSError(code, "x") if code is not None else OSError("no errno")
    assert is_disk_full(error) is full


def test_no_temp_left_after_any_failure(tmp_path, monkeypatch):
    """Whatever goes wrong, once the receiver gives up no .filerelay-* file remains in the folder."""
    folder = str(tmp_path)
    # wrong size
    f = IncomingFile(folder, "a", 3)
    f.write(b"x")
    with pytest.raises(ValueError):
        f.commit()
    f.discard()
    # write fails
    f = IncomingFile(folder, "b", 3)
    f._file = FailingFile(f._file, enospc())
    with pytest.raises(OSError):
        f.write(b"xyz")
    f.discard()
    # name taken during the transfer
    f = IncomingFile(folder, "c", 3)
    f.write(b"xyz")
    (tmp_path / "c").write_bytes(b"theirs")
    with pytest.raises(FileExists):
        f.commit()
    f.discard()
    # taken from the start / bad name
    with pytest.raises(FileExists):
        IncomingFile(folder, "c", 3)
    with pytest.raises(BadName):
        IncomingFile(folder, "../d", 3)
    assert temps(tmp_path) == []
    assert os.listdir(tmp_path) == ["c"]


def test_overwrite_replaces_a_folder_with_the_file(tmp_path):
    """With overwrite allowed, a folder of the same name is replaced by the file, and nothing is left aside."""
    (tmp_path / "thing").mkdir()
    (tmp_path / "thing" / "inner").write_bytes(b"old")
    f = IncomingFile(str(tmp_path), "thing", 3, overwrite=True)
    f.write(b"new")
    f.commit()
    assert (tmp_path / "thing").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["thing"]
