"""
The receiving side: claim the channel, agree keys with the sender, check
the offered name, store the sealed data records through an L{IncomingFile},
and acknowledge only once the authenticated end-of-stream record has arrived
and the file is durably in place.

No argv and no printing here; the CLI passes callbacks for messages.
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet.interfaces import IReactorTime

from twisted_relay.client import ClientProtocol, Timeouts
from twisted_relay.codes import Code
from twisted_relay.errors import ErrorCode, ExitCode, TransferFailed, default_message
from twisted_relay.filenames import BadName
from twisted_relay.incoming import FileExists, is_disk_full
from twisted_relay.outputs import Output, open_output
from twisted_relay.untar import BadArchive
from twisted_relay.pake import RECEIVER
from twisted_relay.records import Corrupted, decode_end
from twisted_relay.wire import FrameType, decode_header, encode_channel


class ReceiverProtocol(ClientProtocol):
    """
    Phases: greeting -> claimed -> key exchange -> offered -> receiving
    sealed DATA records -> END -> stored and acknowledged.

    @ivar incoming: the file being written, once the header is accepted.
    """

    def __init__(
        self,
        clock: IReactorTime,
        code: Code,
        folder: str,
        overwrite: bool = False,
        on_event: Callable[[str], None] = lambda text: None,
        on_progress: Callable[[int, int | None], None] = lambda done, total: None,
        timeouts: Timeouts = Timeouts(),
    ) -> None:
        super().__init__(clock, timeouts)
        self.code = code
        self.folder = folder
        self.overwrite = overwrite
        self.incoming: Output | None = None
        self.saved_path: str | None = None
        self._on_event = on_event
        self._on_progress = on_progress

    def greeted(self) -> None:
        self.send_frame(FrameType.CLAIM, encode_channel(self.code.channel))
        self.expect({FrameType.PAIRED: self._on_paired})

    def _on_paired(self, value: bytes) -> None:
        self.watch(self.timeouts.stall, "the sender stopped answering")
        self.start_key_exchange(self.code, RECEIVER)

    def wrong_code(self) -> None:
        self.finish(
            TransferFailed(
                ExitCode.WRONG_CODE,
                "wrong code: it does not match the sender's; the sender must start again for a new code",
            ),
            tell_peer=ErrorCode.WRONG_CODE,
        )

    def secured(self) -> None:
        self.expect({FrameType.SEALED_HEADER: self._on_header})

    def _on_header(self, value: bytes) -> None:
        header = decode_header(value)
        what = "folder" if header.kind == "tar" else "file"
        try:
            self.incoming = open_output(header, self.folder, self.overwrite)
        except BadName as e:
            # The reason is about the name alone, so the sender may hear it.
            self._refuse(ErrorCode.BAD_NAME, f"refused the {what} name {header.name!r}: {e}", f"the receiver refused the name: {e}")
            return
        except FileExists as e:
            self._refuse(
                ErrorCode.FILE_EXISTS,
                f"{e} already exists; not overwritten (use --overwrite to replace it)",
                f"the receiver already has {'a file' if header.kind == 'file' else 'something'} named "
                f"{os.path.basename(str(e))!r} and did not overwrite it",
            )
            return
        except OSError as e:
            self._write_failed(e)
            return
        size = "size unknown" if header.size is None else f"{header.size} bytes"
        self._on_event(f"receiving {what} {header.name!r} ({size})")
        self.send_sealed(FrameType.SEALED_ACCEPT, b"")
        self.expect({FrameType.SEALED_DATA: self._on_data, FrameType.SEALED_END: self._on_end})

    def _on_data(self, value: memoryview) -> None:
        assert self.incoming is not None
        if self.incoming.size is not None and self.incoming.written + len(value) > self.incoming.size:
            raise Corrupted("the sender sent more than it announced")
        try:
            self.incoming.write(value)
        except BadArchive as e:
            self._refuse(ErrorCode.BAD_NAME, f"refused the folder: {e}", f"the receiver refused the folder: {e}")
            return
        except OSError as e:
            self._write_failed(e)
            return
        self._on_progress(self.incoming.written, self.incoming.size)

    def _on_end(self, value: bytes) -> None:
        assert self.incoming is not None
        total = decode_end(value)
        if self.incoming.written != total or self.incoming.size not in (None, total):
            raise Corrupted(f"the stream ended after {self.incoming.written} of {self.incoming.size} bytes")
        try:
            self.incoming.commit(total)
        except BadArchive as e:
            self._refuse(ErrorCode.BAD_NAME, f"refused the folder: {e}", f"the receiver refused the folder: {e}")
            return
        except FileExists as e:
            self._refuse(
                ErrorCode.FILE_EXISTS,
                f"{e} appeared while receiving; not overwritten",
                "the receiver already has something of that name and did not overwrite it",
            )
            return
        except OSError as e:
            self._write_failed(e)
            return
        self.saved_path = self.incoming.final_path
        self.incoming = None
        self.send_sealed(FrameType.SEALED_ACK, b"")
        self.finish(None)

    def _refuse(self, code: ErrorCode, message: str, peer_message: str | None = None) -> None:
        """Fail here with C{message}; the sender hears C{peer_message}, which
        must not reveal our folder."""
        self.finish(TransferFailed(ExitCode.FILE_REFUSED, message), tell_peer=code, message=peer_message)

    def _write_failed(self, error: OSError) -> None:
        if is_disk_full(error):
            code, exit_code, text = ErrorCode.DISK_FULL, ExitCode.DISK_FULL, "the disk is full"
        else:
            code, exit_code = ErrorCode.WRITE_FAILED, ExitCode.DISK_FULL
            text = f"cannot write the file: {error.strerror or error}"
        self.finish(TransferFailed(exit_code, text), tell_peer=code, message=default_message(code))

    def lost_before_end(self) -> TransferFailed:
        if not self.paired:
            return TransferFailed(ExitCode.PEER_GONE, "the relay closed the connection")
        if self.incoming is not None:
            # A sender that dies and a relay that cuts the stream look alike
            # from here; either way the end-of-stream record never came.
            return TransferFailed(
                ExitCode.PEER_GONE,
                "the stream ended before the sender's end-of-stream record "
                "(the sender went away or the connection was cut); nothing was saved",
            )
        return TransferFailed(ExitCode.PEER_GONE, "the sender went away before the file was sent")

    def cleanup(self) -> None:
        if self.incoming is not None:
            self.incoming.discard()
            self.incoming = None
