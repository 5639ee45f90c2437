"""
Extracting a tar stream that arrives in pieces, safely.

The archive comes from the other end of the internet, so it is read with
suspicion: only regular files and folders are accepted (no links, devices or
other special files), every name goes through L{tarfile.data_filter} (no
absolute paths, nothing outside the destination) and stricter checks of our
own (every part a plain name, under one of the top-level entries the sender
announced), files are created with C{O_EXCL | O_NOFOLLOW}, and metadata
blocks are bounded. Headers are parsed by L{tarfile} itself; this module
only drives it push-style, so extraction runs on the reactor thread as the
records arrive, with no archive on disk and no thread.
"""

from __future__ import annotations

import os
import tarfile

from twisted_relay.filenames import BadName, check_part
from twisted_relay.incoming import umask

BLOCK = tarfile.BLOCKSIZE

#: Largest PAX or long-name block accepted: names are short; anything
#: larger is an attempt to make us buffer.
MAX_METADATA = 64 * 1024


class BadArchive(ValueError):
    """The stream is not an archive we accept; the message says why."""


def _check_part(part: str) -> None:
    try:
        check_part(part)
    except BadName as e:
        raise BadArchive(str(e)) from None


def _set_mtime(path: str, mtime: float) -> None:
    """Keep the sender's modification time when it is one the system can
    store; an absurd one (a hostile header) leaves the file's own."""
    try:
        os.utime(path, (mtime, mtime))
    except (OverflowError, ValueError, OSError):
        pass


def _parse_pax(data: bytes) -> dict[str, str]:
    """PAX records: C{"<length> <key>=<value>\\n"}, lengths counting all."""
    records: dict[str, str] = {}
    offset = 0
    while offset < len(data):
        if data[offset] == 0:
            break  # padding
        space = data.find(b" ", offset)
        if space < 0 or not data[offset:space].isdigit():
            raise BadArchive("malformed PAX header")
        length = int(data[offset:space])
        record = data[space + 1 : offset + length]
        if length <= space - offset + 1 or offset + length > len(data) or not record.endswith(b"\n"):
            raise BadArchive("malformed PAX record")
        key, sep, value = record[:-1].partition(b"=")
        if not sep:
            raise BadArchive("malformed PAX record")
        try:
            records[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadArchive("PAX record is not UTF-8") from None
        offset += length
    return records


class TarExtractor:
    """
    Feed it the archive with L{write}, in pieces of any size; call L{close}
    at the end. Files and folders appear under C{dest}, which must be an
    empty folder of ours. Folder modes are applied at L{close}, so a
    read-only folder can still be filled first.

    @raise BadArchive: from L{write} or L{close}; C{dest} then holds a
        partial tree for the caller to remove.
    """

    def __init__(self, dest: str, entries: set[str]) -> None:
        self._dest = os.path.realpath(dest)
        self._entries = entries
        self._pending = bytearray()  # an incomplete block or metadata body
        self._need = BLOCK
        self._state = "header"
        self._member: tarfile.TarInfo | None = None
        self._fd: int | None = None
        self._left = 0  # data bytes left in the current member
        self._skip = 0  # padding bytes left after it
        self._pax: dict[str, str] = {}
        self._long_name: str | None = None
        self._ended = False
        self._folders: list[tuple[str, int, float]] = []
        self._umask = umask()
        self.files = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._state == "data":
                view = self._write_data(view)
            elif self._skip:
                take = min(self._skip, len(view))
                self._skip -= take
                view = view[take:]
            else:
                take = min(self._need - len(self._pending), len(view))
                self._pending += view[:take]
                view = view[take:]
                if len(self._pending) == self._need:
                    block, self._pending = bytes(self._pending), bytearray()
                    self._need = BLOCK
                    self._dispatch(block)

    def close(self) -> None:
        """The stream ended: it must have ended with the end-of-archive mark."""
        self._close_file()
        if not self._ended or self._state != "header" or self._pending:
            raise BadArchive("the archive ended early")
        for path, mode, mtime in reversed(self._folders):
            os.chmod(path, mode)
            _set_mtime(path, mtime)

    def abort(self) -> None:
        self._close_file()

    def _dispatch(self, block: bytes) -> None:
        if self._state == "pax":
            self._pax = _parse_pax(block[: self._meta_size])
            self._state = "header"
        elif self._state == "longname":
            self._long_name = block[: self._meta_size].rstrip(b"\0").decode("utf-8", "surrogateescape")
            self._state = "header"
        elif self._ended:
            if block.count(0) != BLOCK:
                raise BadArchive("data after the end of the archive")
        elif block.count(0) == BLOCK:
            self._ended = True
        else:
            self._header(block)

    def _header(self, block: bytes) -> None:
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.TarError as e:
            raise BadArchive(f"bad header: {e}") from None
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
            if info.size > MAX_METADATA:
                raise BadArchive("metadata block too large")
            self._meta_size = info.size
            padded = -(-info.size // BLOCK) * BLOCK
            if padded == 0:
                return
            self._need = padded
            self._state = {tarfile.XHDTYPE: "pax", tarfile.GNUTYPE_LONGNAME: "longname"}.get(info.type, "pax-global")
            if self._state == "pax-global":  # global PAX settings: read and ignore
                self._state = "header"
                self._need = BLOCK
                self._skip = padded
            return
        if "path" in self._pax:
            info.name = self._pax["path"]
        elif self._long_name is not None:
            info.name = self._long_name
        if "size" in self._pax:
            if not (self._pax["size"].isascii() and self._pax["size"].isdigit()):
                raise BadArchive("bad PAX size")
            info.size = int(self._pax["size"])
        self._pax, self._long_name = {}, None
        self._begin(info)

    def _begin(self, info: tarfile.TarInfo) -> None:
        name = info.name.rstrip("/") if info.isdir() else info.name
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
            # isreg() would also pass contiguous and sparse members.
            raise BadArchive(f"refusing {name!r}: only files and folders are accepted, not links or special files")
        if name.startswith("/"):
            raise BadArchive(f"refusing {name!r}: absolute path")
        parts = name.split("/")
        for part in parts:
            _check_part(part)
        if parts[0] not in self._entries:
            raise BadArchive(f"refusing {name!r}: not under an announced entry")
        info.name = name
        try:
            info = tarfile.data_filter(info, self._dest)
        except tarfile.FilterError as e:
            raise BadArchive(f"refusing {name!r}: {e}") from None
        path = os.path.join(self._dest, *parts)
        try:
            # A file where a folder is needed ("f", then "f/g") shows up as
            # one of these: the archive's fault, not the disk's.
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise BadArchive(f"refusing {name!r}: a file stands where its folder should be") from None
        if info.isdir():
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                if not os.path.isdir(path) or os.path.islink(path):
                    raise BadArchive(f"refusing {name!r}: it is both a file and a folder") from None
            # data_filter drops folder modes: a folder gets what any new
            # folder would under the receiver's umask.
            self._folders.append((path, 0o777 & ~self._umask, info.mtime))
            return
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise BadArchive(f"refusing {name!r}: it appears twice") from None
        except NotADirectoryError:
            raise BadArchive(f"refusing {name!r}: a file stands where its folder should be") from None
        self._member = info
        self._path = path
        self._left = info.size
        self._skip_after = -(-info.size // BLOCK) * BLOCK - info.size
        self._state = "data"
        self.files += 1
        if self._left == 0:
            self._end_file()

    def _write_data(self, view: memoryview) -> memoryview:
        take = min(self._left, len(view))
        chunk = view[:take]
        assert self._fd is not None
        while chunk:
            chunk = chunk[os.write(self._fd, chunk) :]
        self._left -= take
        if self._left == 0:
            self._end_file()
        return view[take:]

    def _end_file(self) -> None:
        assert self._member is not None and self._fd is not None
        mode = self._member.mode if self._member.mode is not None else 0o666
        os.fchmod(self._fd, mode & ~self._umask)
        os.fsync(self._fd)
        self._close_file()
        _set_mtime(self._path, self._member.mtime)
        self._member = None
        self._state = "header"
        self._skip = self._skip_after

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
