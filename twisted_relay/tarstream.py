"""
Folders and several files as one tar stream, made on the fly.

Nothing is archived to disk: L{TarReader} is a readable object whose bytes
are the tar archive of the given paths, produced as they are read, and
whose exact length is known before the first byte (so the receiver's
progress bar has a total). PAX headers carry long and non-ASCII names;
owners are blanked so an archive does not leak local user names.
Symbolic links, devices and other special files are skipped (the receiver
would refuse them), and the caller is told which.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from typing import IO, Callable

from twisted_relay.filenames import check_part

BLOCK = tarfile.BLOCKSIZE
_END_OF_ARCHIVE = bytes(2 * BLOCK)


class SourceChanged(Exception):
    """A file ended before its announced size: it shrank while sending."""


@dataclass
class _Member:
    header: bytes
    path: str | None  # the file to read, for a regular file
    size: int

    @property
    def length(self) -> int:
        return len(self.header) + _padded(self.size)


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _header(info: tarfile.TarInfo) -> bytes:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


class TarReader:
    """
    The tar archive of C{paths}, readable with L{readinto}. Each path is
    stored under its base name; folders recursively, in sorted order.

    @ivar size: the archive's exact length in bytes.
    @ivar entries: the top-level names, as the receiver will create them.
    @ivar skipped: paths left out (links and special files).
    @raise OSError: if a path cannot be examined.
    @raise filenames.BadName: if a name inside a folder is one receivers refuse.
    @raise ValueError: if two paths have the same base name.
    """

    def __init__(self, paths: list[str], on_skip: Callable[[str], None] = lambda path: None) -> None:
        self.entries: list[str] = []
        self.skipped: list[str] = []
        self._on_skip = on_skip
        self._members: list[_Member] = []
        for path in paths:
            top = os.path.basename(os.path.normpath(os.path.abspath(path)))
            if top in self.entries:
                raise ValueError(f"two items are both named {top!r}")
            listed = len(self._members)
            self._add(path, top)
            if len(self._members) > listed:  # a skipped link is not announced
                self.entries.append(top)
        self.size = sum(m.length for m in self._members) + len(_END_OF_ARCHIVE)
        self._index = 0
        self._offset = 0  # within the current member's header + data + padding
        self._file: IO[bytes] | None = None
        self._tail = 0  # bytes of the end-of-archive marker sent

    def _add(self, path: str, arcname: str) -> None:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            info = tarfile.TarInfo(arcname)
            info.size, info.mode, info.mtime = st.st_size, stat.S_IMODE(st.st_mode), int(st.st_mtime)
            self._members.append(_Member(_header(info), path, st.st_size))
        elif stat.S_ISDIR(st.st_mode):
            info = tarfile.TarInfo(arcname)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, stat.S_IMODE(st.st_mode), int(st.st_mtime)
            self._members.append(_Member(_header(info), None, 0))
            for name in sorted(os.listdir(path)):
                # Refused here, before a code is spent, as every receiver would.
                check_part(name)
                self._add(os.path.join(path, name), f"{arcname}/{name}")
        else:
            self.skipped.append(path)
            self._on_skip(path)

    def readinto(self, buffer: memoryview) -> int:
        """Fill C{buffer} with the next bytes of the archive; 0 at its end.

        @raise SourceChanged: a file is shorter than when it was listed.
        """
        filled = 0
        while filled < len(buffer) and self._index < len(self._members):
            filled += self._fill_member(buffer[filled:])
        if filled < len(buffer) and self._index == len(self._members):
            take = min(len(buffer) - filled, len(_END_OF_ARCHIVE) - self._tail)
            buffer[filled : filled + take] = _END_OF_ARCHIVE[:take]
            self._tail += take
            filled += take
        return filled

    def _fill_member(self, buffer: memoryview) -> int:
        member = self._members[self._index]
        header, data_end = len(member.header), len(member.header) + member.size
        if self._offset < header:
            take = min(len(buffer), header - self._offset)
            buffer[:take] = member.header[self._offset : self._offset + take]
        elif self._offset < data_end:
            if self._file is None:
                assert member.path is not None
                self._file = open(member.path, "rb", buffering=0)
            want = min(len(buffer), data_end - self._offset)
            take = self._file.readinto(buffer[:want])
            if not take:
                raise SourceChanged(member.path)
        else:
            take = min(len(buffer), member.length - self._offset)
            buffer[:take] = bytes(take)
        self._offset += take
        if self._offset == member.length:
            self.close_file()
            self._index += 1
            self._offset = 0
        return take

    def close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        self.close_file()
