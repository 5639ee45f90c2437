"""
Receiving folders and several files so that nothing half-made ever appears
under a final name.

The tar stream is extracted into a hidden temporary folder inside the
output folder; only after the whole stream has arrived and authenticated is
each announced top-level entry renamed into place. Existing entries are
refused up front (before any byte is accepted) unless overwriting was asked
for, and on any failure the temporary folder is removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted_relay.filenames import BadName, check_name
from twisted_relay.incoming import FileExists, fsync_folder, replace
from twisted_relay.untar import BadArchive, TarExtractor


class IncomingTree:
    """
    One tar stream being received into C{folder}: L{write} each chunk, then
    exactly one of L{commit} or L{discard}.

    @raise BadName: from the constructor, for an unsafe or repeated entry.
    @raise FileExists: from the constructor or L{commit}, for an entry that
        exists and may not be overwritten.
    @raise BadArchive: from L{write} or L{commit}, for an archive we refuse.
    """

    def __init__(self, folder: str, entries: list[str], size: int | None, overwrite: bool = False) -> None:
        if len(set(entries)) != len(entries):
            raise BadName("an entry is announced twice")
        for entry in entries:
            check_name(entry)
        self.folder = folder
        self.entries = list(entries)
        self.size = size
        self.overwrite = overwrite
        self.written = 0
        self.final_path = os.path.join(folder, entries[0]) if len(entries) == 1 else f"{len(entries)} items in {folder}"
        if not overwrite:
            for entry in entries:
                if os.path.lexists(os.path.join(folder, entry)):
                    raise FileExists(os.path.join(folder, entry))
        self._temp = tempfile.mkdtemp(dir=folder, prefix=".filerelay-", suffix=".partdir")
        self._extractor = TarExtractor(self._temp, set(entries))

    def write(self, data: bytes | memoryview) -> None:
        self.written += len(data)
        if self.size is not None and self.written > self.size:
            raise BadArchive("more data than announced")
        self._extractor.write(data)

    def commit(self, total: int | None = None) -> None:
        expected = self.size if self.size is not None else total
        if self.written != expected:
            raise BadArchive(f"got {self.written} bytes, expected {expected}")
        try:
            self._extractor.close()
            for entry in self.entries:
                if not os.path.lexists(os.path.join(self._temp, entry)):
                    raise BadArchive(f"the announced entry {entry!r} is missing from the archive")
            for entry in self.entries:
                self._move_into_place(entry)
            fsync_folder(self.folder)
        finally:
            self.discard()

    def _move_into_place(self, entry: str) -> None:
        source, target = os.path.join(self._temp, entry), os.path.join(self.folder, entry)
        if os.path.lexists(target):
            if not self.overwrite:
                raise FileExists(target)
            replace(source, target)
            return
        # rename(2) would silently replace an empty folder that appeared
        # since the check; that race is the only one left, and harmless.
        os.rename(source, target)

    def discard(self) -> None:
        """Remove the temporary folder and whatever it holds."""
        self._extractor.abort()
        shutil.rmtree(self._temp, ignore_errors=True)
