"""
The command lines' options and their mapping to the client objects; the
programs themselves run as processes in tests/integration.
"""

from __future__ import annotations

import pytest

from twisted_relay import receive, send
from twisted_relay.cli import keep_freed_memory, timeouts_from
from twisted_relay.client import Timeouts
from twisted_relay.errors import ExitCode


def test_send_timeouts() -> None:
    """--stall-timeout and --wait-timeout reach the sender; the handshake limit never exceeds the stall limit."""
    args = send.build_parser().parse_args(["relay", "f", "--stall-timeout", "5", "--wait-timeout", "60"])
    assert timeouts_from(args) == Timeouts(handshake=5, stall=5, wait=60)


def test_receive_defaults() -> None:
    """Without options the receiver uses the documented defaults."""
    args = receive.build_parser().parse_args(["relay", "7-orbit-tulip", "out"])
    assert timeouts_from(args) == Timeouts()
    assert args.overwrite is False


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_bad_timeout_is_usage_error(value: str, capsys) -> None:
    """A non-positive or non-numeric timeout exits with the usage code and says why."""
    with pytest.raises(SystemExit) as exit:
        receive.build_parser().parse_args(["relay", "7-orbit-tulip", "out", "--stall-timeout", value])
    assert exit.value.code == ExitCode.USAGE
    assert "--stall-timeout" in capsys.readouterr().err


def test_receive_has_no_wait_timeout(capsys) -> None:
    """Only the sender waits for a peer, so only it has --wait-timeout."""
    with pytest.raises(SystemExit):
        receive.build_parser().parse_args(["relay", "7-orbit-tulip", "out", "--wait-timeout", "5"])


def test_keep_freed_memory_is_harmless() -> None:
    """Tuning the allocator can be called repeatedly and never fails."""
    keep_freed_memory()
    keep_freed_memory()


def test_sender_refuses_name_receivers_refuse(tmp_path) -> None:
    """A file whose name every receiver refuses (say, a dotfile) fails before any code is spent."""
    from twisted_relay.errors import TransferFailed

    hidden = tmp_path / ".bashrc"
    hidden.write_text("x")
    with pytest.raises(TransferFailed) as failure:
        send.open_outgoing(str(hidden))
    assert failure.value.exit_code is ExitCode.FILE_REFUSED


def test_sender_refuses_non_regular_files(tmp_path) -> None:
    """A folder (or device) is not sent: the user is told it is not a regular file."""
    from twisted_relay.errors import TransferFailed

    with pytest.raises(TransferFailed) as failure:
        send.open_outgoing(str(tmp_path))
    assert failure.value.exit_code is ExitCode.INPUT_UNREADABLE


def test_sender_reports_unreadable_file(tmp_path) -> None:
    """A missing file fails at once with the input-unreadable code."""
    from twisted_relay.errors import TransferFailed

    with pytest.raises(TransferFailed) as failure:
        send.open_outgoing(str(tmp_path / "missing.bin"))
    assert failure.value.exit_code is ExitCode.INPUT_UNREADABLE
