"""
The command lines' options and their mapping to the client objects; the
programs themselves run as processes in tests/integration.
"""

from __future__ import annotations

import pytest

from twisted_relay import receive, send
from twisted_relay.cli import keep_freed_memory, timeouts_from
from twisted_relay.client import Timeouts
from twisted_relay.errors import ExitCode, TransferFailed


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
    hidden = tmp_path / ".bashrc"
    hidden.write_text("x")
    with pytest.raises(TransferFailed) as failure:
        send.open_source([str(hidden)], None, reactor=None)
    assert failure.value.exit_code is ExitCode.FILE_REFUSED


def test_sender_refuses_special_files() -> None:
    """A device is not sent: the user is told it is not a regular file."""
    with pytest.raises(TransferFailed) as failure:
        send.open_source(["/dev/null"], None, reactor=None)
    assert failure.value.exit_code is ExitCode.INPUT_UNREADABLE
    assert "not a regular file" in failure.value.message


def test_sender_reports_unreadable_file(tmp_path) -> None:
    """A missing file fails at once with the input-unreadable code, naming it."""
    with pytest.raises(TransferFailed) as failure:
        send.open_source([str(tmp_path / "missing.bin")], None, reactor=None)
    assert failure.value.exit_code is ExitCode.INPUT_UNREADABLE
    assert "missing.bin" in failure.value.message


def test_sender_picks_what_to_send(tmp_path) -> None:
    """One file goes as a file (renamable with --name); a folder or several paths go as one tar stream."""
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "dir").mkdir()
    single = send.open_source([str(tmp_path / "a.txt")], "renamed.txt", reactor=None)
    assert (single.kind, single.name, single.size) == ("file", "renamed.txt", 1)
    tree = send.open_source([str(tmp_path / "a.txt"), str(tmp_path / "dir")], None, reactor=None)
    assert (tree.kind, tree.entries, tree.name) == ("tar", ["a.txt", "dir"], "2 items")
    with pytest.raises(TransferFailed) as failure:
        send.open_source(["-", str(tmp_path / "a.txt")], None, reactor=None)
    assert failure.value.exit_code is ExitCode.USAGE


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        (["relay:1", "f"], None, ("relay:1", ["f"])),
        (["f"], "envrelay", ("envrelay", ["f"])),
        (["f", "g"], "envrelay", ("envrelay", ["f", "g"])),  # no port: paths, even if missing
        (["relay:1", "g"], "envrelay", ("relay:1", ["g"])),  # a port: the relay
        (["--relay", "opt:2", "f"], "envrelay", ("opt:2", ["f"])),
    ],
)
def test_sender_relay_from_argument_option_or_environment(argv, env, expected, monkeypatch, tmp_path) -> None:
    """The relay is the first argument, unless --relay or FILERELAY_RELAY gives it and the first argument is what to send."""
    monkeypatch.chdir(tmp_path)
    if env is None:
        monkeypatch.delenv("FILERELAY_RELAY", raising=False)
    else:
        monkeypatch.setenv("FILERELAY_RELAY", env)
    assert send.split_relay(send.build_parser().parse_args(argv)) == expected


def test_sender_existing_path_is_not_taken_for_a_relay(monkeypatch, tmp_path) -> None:
    """With the relay in the environment, an existing first path is sent, not dialled."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").write_text("x")
    (tmp_path / "more").write_text("y")
    monkeypatch.setenv("FILERELAY_RELAY", "envrelay")
    assert send.split_relay(send.build_parser().parse_args(["notes", "more"])) == ("envrelay", ["notes", "more"])


def test_sender_needs_a_relay(monkeypatch) -> None:
    """Without any relay address, the sender says how to give one."""
    monkeypatch.delenv("FILERELAY_RELAY", raising=False)
    with pytest.raises(TransferFailed) as failure:
        send.split_relay(send.build_parser().parse_args(["f"]))
    assert failure.value.exit_code is ExitCode.USAGE and "FILERELAY_RELAY" in failure.value.message


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        (["relay", "7-orbit-tulip", "out"], None, ("relay", "7-orbit-tulip", "out")),
        (["relay", "7-orbit-tulip"], None, ("relay", "7-orbit-tulip", ".")),
        (["7-orbit-tulip"], "envrelay", ("envrelay", "7-orbit-tulip", ".")),
        (["7 Orbit Tulip", "out"], "envrelay", ("envrelay", "7 Orbit Tulip", "out")),
        (["relay"], None, ("relay", None, ".")),
        (["out"], "envrelay", ("envrelay", None, "out")),
        (["relay", "out"], "envrelay", ("relay", None, "out")),
        ([], "envrelay", ("envrelay", None, ".")),
        (["relay", "7-orbit-tulip", "-"], None, ("relay", "7-orbit-tulip", "-")),
    ],
)
def test_receiver_arguments(argv, env, expected, monkeypatch) -> None:
    """[RELAY] [CODE] [OUTDIR]: the code is recognised by its shape; the relay may come from the environment."""
    if env is None:
        monkeypatch.delenv("FILERELAY_RELAY", raising=False)
    else:
        monkeypatch.setenv("FILERELAY_RELAY", env)
    assert receive.split_arguments(receive.build_parser().parse_args(argv)) == expected


def test_receiver_code_from_environment(monkeypatch) -> None:
    """Without a CODE argument the code comes from FILERELAY_CODE, so it stays out of the process list."""
    monkeypatch.setenv("FILERELAY_CODE", "7-orbit-tulip")
    assert receive.ask_for_code() == "7-orbit-tulip"


def test_receiver_without_code_or_terminal(monkeypatch) -> None:
    """With no code anywhere and no terminal to ask on, the receiver says how to give one."""
    import io

    monkeypatch.delenv("FILERELAY_CODE", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(TransferFailed) as failure:
        receive.ask_for_code()
    assert failure.value.exit_code is ExitCode.USAGE


def test_typo_gets_a_suggestion() -> None:
    """A misspelt word is caught before anything is sent, with the likely word suggested."""
    from twisted_relay.codes import InvalidCode, parse_code

    with pytest.raises(InvalidCode, match="did you mean 'orbit'"):
        parse_code("7-orbitt-tulip")


def test_sender_refuses_nested_names_receivers_refuse(tmp_path) -> None:
    """A folder holding a name every receiver refuses (a control character) fails before a code is spent, naming it."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "bell\x07.txt").write_text("x")
    with pytest.raises(TransferFailed) as failure:
        send.open_source([str(tmp_path / "dir")], None, reactor=None)
    assert failure.value.exit_code is ExitCode.FILE_REFUSED
    assert "bell" in failure.value.message


def test_sender_sends_dotfiles_inside_folders(tmp_path) -> None:
    """Inside a folder, names starting with a dot (.gitignore) are sent."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / ".gitignore").write_text("x")
    tree = send.open_source([str(tmp_path / "dir")], None, reactor=None)
    assert tree.entries == ["dir"]
