"""
Writing a received file so that the final name only ever holds a complete,
flushed file.

Bytes go to a hidden temporary file in the output folder; once the announced
size has arrived they are fsynced and the file is linked into place (which
fails rather than overwrite) or, with overwrite allowed, renamed over the old
one. Any failure removes the temporary file.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

from twisted_relay.filenames import check_name


class FileExists(Exception):
    """The final name is taken and overwriting was not allowed."""


class IncomingFile:
    """
    One file being received into C{folder}. Not thread-safe; the receiver
    calls L{write} for each chunk, then exactly one of L{commit} or
    L{discard}.

    C{size} may be C{None} (a pipe): then L{commit} takes the total.

    @raise filenames.BadName: from the constructor, for an unsafe name.
    @raise FileExists: from the constructor (early, cheap) or from
        L{commit} (another process got there first).
    @raise OSError: from any step; ENOSPC and EDQUOT mean a full disk.
    """

    def __init__(self, folder: str, name: str, size: int | None, overwrite: bool = False) -> None:
        self.final_path = os.path.join(folder, check_name(name))
        self.size = size
        self.overwrite = overwrite
        self.written = 0
        if not overwrite and os.path.lexists(self.final_path):
            raise FileExists(self.final_path)
        fd, self.temp_path = tempfile.mkstemp(dir=folder, prefix=".filerelay-", suffix=".part")
        # Unbuffered: records arrive in large pieces, and a buffer would
        # only copy them once more.
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._open = True

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[self._file.write(view) :]
        self.written += len(data)

    def commit(self, total: int | None = None) -> None:
        """
        Make the file visible under its final name, durably. C{total} is
        the sender's final count, for a size not known in advance.
        """
        expected = self.size if self.size is not None else total
        if self.written != expected:
            raise ValueError(f"got {self.written} bytes, expected {expected}")
        self._file.flush()
        # mkstemp made it private (0600); give it the mode any new file
        # would get from the user's umask.
        os.fchmod(self._file.fileno(), 0o666 & ~umask())
        os.fsync(self._file.fileno())
        self._file.close()
        self._open = False
        try:
            if self.overwrite:
                replace(self.temp_path, self.final_path)
            else:
                _link_into_place(self.temp_path, self.final_path)
        except BaseException:
            self._remove_temp()
            raise
        fsync_folder(os.path.dirname(self.final_path))

    def discard(self) -> None:
        """Throw away what was written. Safe to call after a failed commit."""
        if self._open:
            self._open = False
            try:
                self._file.close()
            except OSError:
                pass  # a full disk fails the flush too; the file goes anyway
        self._remove_temp()

    def _remove_temp(self) -> None:
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass


def replace(source: str, final: str) -> None:
    """
    Rename C{source} (a file or a folder) over whatever is at C{final}.
    File over file is one atomic rename; where a folder is involved on
    either side, which rename cannot swap, the old one is moved aside
    first and removed after.
    """
    folder_involved = os.path.isdir(source) or (os.path.isdir(final) and not os.path.islink(final))
    if folder_involved and os.path.lexists(final):
        aside = tempfile.mkdtemp(dir=os.path.dirname(final) or ".", prefix=".filerelay-", suffix=".old")
        os.rename(final, os.path.join(aside, "old"))
        try:
            os.rename(source, final)
        finally:
            shutil.rmtree(aside, ignore_errors=True)
        return
    os.replace(source, final)


def _link_into_place(temp: str, final: str) -> None:
    """Rename C{temp} to C{final} unless C{final} exists, atomically where
    the file system has hard links."""
    try:
        os.link(temp, final)
    except FileExistsError:
        raise FileExists(final) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # No hard links here (FAT, some network shares): check, then rename.
        # A file created in between would be replaced: the best we can do.
        if os.path.lexists(final):
            raise FileExists(final) from None
        os.rename(temp, final)
        return
    os.unlink(temp)


def is_disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def umask() -> int:
    """The process umask, read without changing it where Linux allows
    (os.umask can only be read by setting it, a race in threaded code)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_folder(path: str) -> None:
    """Make the rename durable. Best effort: the file is already complete
    under its final name, and some file systems cannot fsync a folder, so
    a failure here must not turn a stored file into a reported failure."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
