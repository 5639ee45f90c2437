"""
C{python -m twisted_relay.send RELAY FILE}: print a code, wait for the
receiver, send the file. Exit 0 means the receiver has stored it.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any, NoReturn, Sequence

from twisted_relay.cli import ArgumentParser, add_timeout_options, run_transfer, say, timeouts_from
from twisted_relay.client import connect, relay_endpoint
from twisted_relay.codes import DEFAULT_WORD_COUNT, Code
from twisted_relay.errors import ExitCode, TransferFailed
from twisted_relay.filenames import BadName, check_name
from twisted_relay.sender import Outgoing, SenderProtocol


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="filerelay-send",
        description="Send a file through a relay. Prints only the code on stdout.",
        epilog="example: filerelay-send relay.example.org:9021 corgis.mp4",
    )
    parser.add_argument("relay", help="relay address: HOST, HOST:PORT or [IPv6]:PORT (port 9021 by default)")
    parser.add_argument("file", help="the file to send")
    parser.add_argument(
        "--code-words",
        type=int,
        default=DEFAULT_WORD_COUNT,
        metavar="N",
        help=f"words in the code (default {DEFAULT_WORD_COUNT}); more words, harder to guess",
    )
    add_timeout_options(parser, waits=True)
    return parser


def open_outgoing(path: str) -> Outgoing:
    """
    Open the file before contacting anyone, so a typo fails at once, and
    check its name as the receiver will, so a name it must refuse does not
    spend a code.
    """
    name = os.path.basename(os.path.abspath(path))
    try:
        check_name(name)
    except BadName as e:
        raise TransferFailed(ExitCode.FILE_REFUSED, f"receivers refuse this file name: {e}; rename the file") from None
    try:
        f = open(path, "rb", buffering=0)  # large readinto calls go straight to the kernel
    except OSError as e:
        raise TransferFailed(ExitCode.INPUT_UNREADABLE, f"cannot read {path}: {e.strerror}") from None
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):  # the opened file, not whatever the path names now
        f.close()
        raise TransferFailed(ExitCode.INPUT_UNREADABLE, f"{path} is not a regular file")
    return Outgoing(f, name, st.st_size)


def print_code(code: Code) -> None:
    """stdout carries the code and nothing else; flush so scripts see it now."""
    sys.stdout.write(f"{code}\n")
    sys.stdout.flush()
    say(f"On the other machine, run: filerelay-receive RELAY {code} OUTDIR")


async def main(reactor: Any, args: argparse.Namespace) -> None:
    if args.code_words < 1:
        raise TransferFailed(ExitCode.USAGE, "--code-words must be at least 1")
    try:
        endpoint = relay_endpoint(reactor, args.relay)
    except ValueError as e:
        raise TransferFailed(ExitCode.USAGE, str(e)) from None
    outgoing = open_outgoing(args.file)
    proto = SenderProtocol(
        reactor, outgoing, print_code, word_count=args.code_words, on_event=say, timeouts=timeouts_from(args)
    )
    reactor.addSystemEventTrigger("before", "shutdown", proto.interrupt)
    try:
        await connect(endpoint, proto)
    finally:
        outgoing.file.close()
    say("file delivered")


def run(argv: Sequence[str] | None = None) -> NoReturn:
    run_transfer(main, build_parser(), argv)


if __name__ == "__main__":
    run()
