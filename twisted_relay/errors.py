"""
Error codes shared by the relay and both clients.

One table maps each wire error code to the human sentence a user sees and the
exit code a script sees, so the relay, the sender, the receiver, the README
and docs/protocol.rst cannot drift apart.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """The 16-bit code carried by an ERROR frame (see docs/protocol.rst)."""

    PROTOCOL_ERROR = 1
    VERSION_MISMATCH = 2
    FRAME_TOO_LARGE = 3
    UNKNOWN_CODE = 4
    CODE_IN_USE = 5
    WRONG_CODE = 6
    PEER_GONE = 7
    SHUTTING_DOWN = 8
    TIMEOUT = 9
    RELAY_BUSY = 10
    TOO_MANY_ATTEMPTS = 11
    FILE_EXISTS = 12
    BAD_NAME = 13
    DISK_FULL = 14
    WRITE_FAILED = 15
    TRANSFER_CORRUPTED = 16


class ExitCode(IntEnum):
    """Process exit codes of C{send} and C{receive}, documented in README.rst."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    RELAY_UNREACHABLE = 3
    UNKNOWN_CODE = 4
    WRONG_CODE = 5
    PEER_GONE = 6
    SHUTTING_DOWN = 7
    FILE_REFUSED = 8
    DISK_FULL = 9
    INPUT_UNREADABLE = 10
    PROTOCOL_ERROR = 11
    TIMEOUT = 12
    RELAY_BUSY = 13
    TRANSFER_CORRUPTED = 14
    INTERRUPTED = 130


# code -> (default message, exit code of the client that receives it)
_TABLE: dict[ErrorCode, tuple[str, ExitCode]] = {
    ErrorCode.PROTOCOL_ERROR: ("protocol error", ExitCode.PROTOCOL_ERROR),
    ErrorCode.VERSION_MISMATCH: (
        "incompatible protocol version",
        ExitCode.PROTOCOL_ERROR,
    ),
    ErrorCode.FRAME_TOO_LARGE: ("frame too large", ExitCode.PROTOCOL_ERROR),
    ErrorCode.UNKNOWN_CODE: (
        "no sender is waiting with this code",
        ExitCode.UNKNOWN_CODE,
    ),
    ErrorCode.CODE_IN_USE: (
        "this code is already being used by another receiver",
        ExitCode.UNKNOWN_CODE,
    ),
    ErrorCode.WRONG_CODE: (
        "wrong code: the words do not match; the sender must start again",
        ExitCode.WRONG_CODE,
    ),
    ErrorCode.PEER_GONE: ("the other side went away", ExitCode.PEER_GONE),
    ErrorCode.SHUTTING_DOWN: ("the relay is shutting down", ExitCode.SHUTTING_DOWN),
    ErrorCode.TIMEOUT: ("timed out", ExitCode.TIMEOUT),
    ErrorCode.RELAY_BUSY: ("the relay is busy, try again later", ExitCode.RELAY_BUSY),
    ErrorCode.TOO_MANY_ATTEMPTS: (
        "too many failed codes from this address; wait a minute",
        ExitCode.RELAY_BUSY,
    ),
    ErrorCode.FILE_EXISTS: (
        "the receiver already has a file of that name",
        ExitCode.FILE_REFUSED,
    ),
    ErrorCode.BAD_NAME: ("the file name was refused", ExitCode.FILE_REFUSED),
    ErrorCode.DISK_FULL: ("the receiver's disk is full", ExitCode.DISK_FULL),
    ErrorCode.WRITE_FAILED: (
        "the receiver could not write the file",
        ExitCode.DISK_FULL,
    ),
    ErrorCode.TRANSFER_CORRUPTED: (
        "transfer corrupted",
        ExitCode.TRANSFER_CORRUPTED,
    ),
}


def default_message(code: ErrorCode) -> str:
    """The sentence shown when a peer sent no message of its own."""
    return _TABLE[code][0]


def exit_code_for(code: ErrorCode) -> ExitCode:
    """The exit status a client uses after receiving C{code}."""
    return _TABLE[code][1]


class TransferFailed(Exception):
    """
    Why a send or receive did not complete: what the user is told and what
    the process exits with. Raised by client logic, caught only by the CLIs.
    """

    def __init__(self, exit_code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message

    @classmethod
    def from_wire(cls, code: int, message: str) -> "TransferFailed":
        """Turn an ERROR frame from the relay or the peer into a failure."""
        try:
            known = ErrorCode(code)
        except ValueError:
            return cls(ExitCode.FAILURE, message or f"error {code}")
        return cls(exit_code_for(known), message or default_message(known))

    def __repr__(self) -> str:
        return f"TransferFailed({self.exit_code.name}, {self.message!r})"
