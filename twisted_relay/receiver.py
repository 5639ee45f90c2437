"""
The receiving side: claim the channel, prove the code's words, check the
offered name, store the body through an L{IncomingFile}, and acknowledge
only once the file is durably in place.

No argv and no printing here; the CLI passes callbacks for messages.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime

from twisted_relay import auth
from twisted_relay.client import ClientProtocol
from twisted_relay.codes import Code
from twisted_relay.errors import ErrorCode, ExitCode, TransferFailed, default_message
from twisted_relay.filenames import BadName
from twisted_relay.incoming import FileExists, IncomingFile, is_disk_full
from twisted_relay.wire import (
    PEER_PROTOCOL_VERSION,
    FrameType,
    decode_header,
    encode_channel,
    encode_version,
)


class ReceiverProtocol(ClientProtocol):
    """
    Phases: greeting -> claimed -> authenticating -> offered -> receiving
    the body (raw mode for exactly the announced size) -> done.

    @ivar incoming: the file being written, once the header is accepted.
    """

    def __init__(
        self,
        clock: IReactorTime,
        code: Code,
        folder: str,
        overwrite: bool = False,
        on_event: Callable[[str], None] = lambda text: None,
        on_progress: Callable[[int, int], None] = lambda done, total: None,
    ) -> None:
        super().__init__(clock)
        self.code = code
        self.folder = folder
        self.overwrite = overwrite
        self.incoming: IncomingFile | None = None
        self.saved_path: str | None = None
        self._on_event = on_event
        self._on_progress = on_progress

    def greeted(self) -> None:
        self.send_frame(FrameType.CLAIM, encode_channel(self.code.channel))
        self.expect({FrameType.PAIRED: self._on_paired})

    def _on_paired(self, value: bytes) -> None:
        self.paired = True
        self.watch(self.stall_timeout, "the sender stopped answering")
        self.send_frame(FrameType.PEER_HELLO, encode_version(PEER_PROTOCOL_VERSION))
        self.expect({FrameType.PEER_HELLO: self._on_peer_hello})

    def _on_peer_hello(self, value: bytes) -> None:
        if self.check_peer_hello(value):
            self.expect({FrameType.CHALLENGE: self._on_challenge})

    def _on_challenge(self, value: bytes) -> None:
        if len(value) != auth.CHALLENGE_SIZE:
            self.protocol_error("bad challenge")
            return
        self.send_frame(FrameType.PROOF, auth.prove(self.code, value))
        self.expect({FrameType.HEADER: self._on_header})

    def _on_header(self, value: bytes) -> None:
        name, size = decode_header(value)
        try:
            self.incoming = IncomingFile(self.folder, name, size, self.overwrite)
        except BadName as e:
            self._refuse(ErrorCode.BAD_NAME, f"refused the file name {name!r}: {e}")
            return
        except FileExists as e:
            self._refuse(
                ErrorCode.FILE_EXISTS,
                f"{e} already exists; not overwritten (use --overwrite to replace it)",
                f"the receiver already has a file named {name!r} and did not overwrite it",
            )
            return
        except OSError as e:
            self._write_failed(e)
            return
        self._on_event(f"receiving {name!r} ({size} bytes)")
        self.send_frame(FrameType.ACCEPT)
        self.expect({})
        if size == 0:
            self._store()
        else:
            self.set_raw_mode(size)

    def raw_data_received(self, data: bytes) -> None:
        assert self.incoming is not None
        try:
            self.incoming.write(data)
        except OSError as e:
            self._write_failed(e)
            return
        self._on_progress(self.incoming.written, self.incoming.size)

    def raw_finished(self) -> None:
        self._store()

    def _store(self) -> None:
        assert self.incoming is not None
        try:
            self.incoming.commit()
        except FileExists as e:
            self._refuse(
                ErrorCode.FILE_EXISTS,
                f"{e} appeared while receiving; not overwritten",
                "the receiver already has a file of that name and did not overwrite it",
            )
            return
        except OSError as e:
            self._write_failed(e)
            return
        self.saved_path = self.incoming.final_path
        self.incoming = None
        self.send_frame(FrameType.ACK)
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
        return TransferFailed(ExitCode.PEER_GONE, "the sender went away before the whole file arrived")

    def cleanup(self) -> None:
        if self.incoming is not None:
            self.incoming.discard()
            self.incoming = None
