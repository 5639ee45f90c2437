"""
C{filerelay-send} (C{python -m twisted_relay.send}): print a code, wait for
the receiver, send a file, a folder, several of them, or standard input.
Exit 0 means the receiver has stored everything.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any, NoReturn, Sequence

from twisted_relay.cli import (
    RELAY_ENV,
    ArgumentParser,
    Reporting,
    add_common_options,
    run_transfer,
    say,
    timeouts_from,
    transfer,
)
from twisted_relay.client import parse_relay_address, relay_endpoint
from twisted_relay.codes import DEFAULT_WORD_COUNT, Code
from twisted_relay.errors import ExitCode, TransferFailed
from twisted_relay.filenames import BadName
from twisted_relay.sender import SenderProtocol
from twisted_relay.sources import FileSource, Outgoing, PipeSource, TreeSource, checked_name

EXAMPLES = """examples:
  filerelay-send relay.example.org corgis.mp4        send one file (port 9021)
  filerelay-send relay.example.org:9021 photos/      send a folder, streamed as it is read
  filerelay-send relay.example.org a.txt b.jpg dir/  several things at once
  tar c big/ | filerelay-send relay.example.org - --name big.tar
  export FILERELAY_RELAY=relay.example.org; filerelay-send corgis.mp4

The code, and only the code, is printed on stdout; give it to the receiver,
who runs: filerelay-receive RELAY CODE [OUTDIR]"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="filerelay-send",
        description="Send files through a relay to whoever has the code. Prints only the code on stdout.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "items",
        nargs="+",
        metavar="[RELAY] PATH",
        help=f"the relay (HOST, HOST:PORT or [IPv6]:PORT; optional when --relay or ${RELAY_ENV} is set), "
        "then a file, a folder, several of them, or - for standard input",
    )
    parser.add_argument("--name", help="the name the receiver stores standard input (default: stdin) or a single file under")
    parser.add_argument(
        "--code-words",
        type=int,
        default=DEFAULT_WORD_COUNT,
        metavar="N",
        help=f"words in the code (default {DEFAULT_WORD_COUNT}); each adds about 10 bits",
    )
    add_common_options(parser, waits=True)
    return parser


def split_relay(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The relay and the paths: the first argument is the relay unless the
    relay comes from --relay or the environment; then it still is if it
    names a port (C{HOST:PORT}) and no such file exists, so a mistyped
    file name is reported as unreadable, not dialled."""
    relay = args.relay or os.environ.get(RELAY_ENV) or None
    items = list(args.items)
    first_is_relay = relay is None or (
        len(items) > 1 and not os.path.lexists(items[0]) and _names_a_port(items[0])
    )
    if first_is_relay:
        if len(items) < 2:
            raise TransferFailed(ExitCode.USAGE, f"give the relay address (or set {RELAY_ENV}), then what to send")
        relay, items = items[0], items[1:]
    assert relay is not None
    return relay, items


def _names_a_port(text: str) -> bool:
    try:
        host, port = parse_relay_address(text)
    except ValueError:
        return False
    return text.rstrip().endswith(f":{port}")


def open_source(items: list[str], name: str | None, reactor: Any) -> Outgoing:
    """Open what is to be sent before contacting anyone, so a typo, an
    unreadable file or a name receivers refuse fails at once."""
    try:
        if items == ["-"]:
            return _open_stdin(name or "stdin", reactor)
        if "-" in items:
            raise TransferFailed(ExitCode.USAGE, "- (standard input) cannot be sent with other things")
        if len(items) == 1 and not os.path.isdir(items[0]):
            return FileSource.open(items[0], name)
        if name is not None:
            raise TransferFailed(ExitCode.USAGE, "--name applies to a single file or standard input")
        return TreeSource.open(items, on_skip=lambda path: say(f"skipping {path}: not a regular file or folder"))
    except BadName as e:
        raise TransferFailed(ExitCode.FILE_REFUSED, str(e)) from None
    except ValueError as e:
        raise TransferFailed(ExitCode.USAGE, str(e)) from None
    except OSError as e:
        where = e.filename or " ".join(items)
        raise TransferFailed(ExitCode.INPUT_UNREADABLE, f"cannot read {where}: {e.strerror or e}") from None


def _open_stdin(name: str, reactor: Any) -> Outgoing:
    st = os.fstat(0)
    if stat.S_ISREG(st.st_mode):
        # Redirected from a file: its size is known, so show a full bar.
        # Read from where standard input stands, as any program would.
        f = os.fdopen(os.dup(0), "rb", buffering=0)
        return FileSource(checked_name(name), st.st_size - f.tell(), f)
    return PipeSource(name, 0, reactor)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    if args.code_words < 1:
        raise TransferFailed(ExitCode.USAGE, "--code-words must be at least 1")
    relay, items = split_relay(args)
    try:
        endpoint = relay_endpoint(reactor, relay)
    except ValueError as e:
        raise TransferFailed(ExitCode.USAGE, str(e)) from None
    outgoing = open_source(items, args.name, reactor)
    reporting = Reporting(args.quiet, "sending")

    def announce(code: Code) -> None:
        # stdout carries the code and nothing else; flush so scripts see it now.
        sys.stdout.write(f"{code}\n")
        sys.stdout.flush()
        if sys.stderr.isatty() and not args.quiet:
            say(f"On the other computer, run:\n    filerelay-receive {relay} {code}")

    proto = SenderProtocol(
        reactor,
        outgoing,
        announce,
        word_count=args.code_words,
        on_event=reporting.talk,
        on_progress=reporting.progress,
        timeouts=timeouts_from(args),
    )
    try:
        await transfer(reactor, endpoint, proto, reporting)
    finally:
        outgoing.close()
    reporting.talk("delivered")


def run(argv: Sequence[str] | None = None) -> NoReturn:
    run_transfer(main, build_parser(), argv)


if __name__ == "__main__":
    run()
