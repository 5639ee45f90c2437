"""
Where a receiver puts what it is sent: one file, a tree of folders and
files, or standard output. One call picks by what the header announces and
what the user asked for; every output is written to, then either committed
or discarded.
"""

from __future__ import annotations

import os
from typing import Protocol

from twisted_relay.incoming import IncomingFile
from twisted_relay.incoming_tree import IncomingTree
from twisted_relay.untar import BadArchive
from twisted_relay.wire import Header

#: The OUTDIR that means standard output.
STDOUT = "-"


class Output(Protocol):
    final_path: str
    size: int | None
    written: int

    def write(self, data: bytes | memoryview) -> None: ...

    def commit(self, total: int | None = None) -> None: ...

    def discard(self) -> None: ...


def open_output(header: Header, folder: str, overwrite: bool) -> Output:
    """
    @raise filenames.BadName, incoming.FileExists, OSError: as the chosen
        output's constructor does.
    """
    if folder == STDOUT:
        return StandardOutput(header.size)
    if header.kind == "tar":
        return IncomingTree(folder, list(header.entries), header.size, overwrite)
    return IncomingFile(folder, header.name, header.size, overwrite)


class StandardOutput:
    """
    The bytes of any transfer, written to standard output as they arrive
    (C{receive CODE -}). Nothing can be taken back once written, so a
    failed transfer is signalled by the exit status alone.
    """

    final_path = "standard output"

    def __init__(self, size: int | None, fd: int = 1) -> None:
        self.size = size
        self.written = 0
        self._fd = fd
        os.set_blocking(fd, True)  # a full pipe downstream pauses us: backpressure

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.written += len(data)

    def commit(self, total: int | None = None) -> None:
        expected = self.size if self.size is not None else total
        if self.written != expected:
            raise BadArchive(f"got {self.written} bytes, expected {expected}")

    def discard(self) -> None:
        """Nothing to undo: what was written has been read downstream."""
