"""
C{python -m twisted_relay.receive RELAY CODE OUTDIR}: fetch the file the
code stands for into OUTDIR. Prints nothing on stdout.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, NoReturn, Sequence

from twisted_relay.cli import ArgumentParser, add_timeout_options, run_transfer, say, timeouts_from
from twisted_relay.client import connect, relay_endpoint
from twisted_relay.codes import InvalidCode, parse_code
from twisted_relay.errors import ExitCode, TransferFailed
from twisted_relay.receiver import ReceiverProtocol


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="filerelay-receive",
        description="Receive a file through a relay, given the sender's code.",
        epilog="example: filerelay-receive relay.example.org:9021 7-orbit-tulip out/",
    )
    parser.add_argument("relay", help="relay address: HOST, HOST:PORT or [IPv6]:PORT (port 9021 by default)")
    parser.add_argument("code", help="the code the sender printed, e.g. 7-orbit-tulip")
    parser.add_argument("outdir", help="folder to write the file into (created if missing)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing file of the same name (default: refuse)",
    )
    add_timeout_options(parser, waits=False)
    return parser


def prepare_folder(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise TransferFailed(ExitCode.DISK_FULL, f"cannot create {path}: {e.strerror}") from None
    if not os.path.isdir(path):
        raise TransferFailed(ExitCode.USAGE, f"{path} is not a folder")
    return path


async def main(reactor: Any, args: argparse.Namespace) -> None:
    try:
        code = parse_code(args.code)
        endpoint = relay_endpoint(reactor, args.relay)
    except (InvalidCode, ValueError) as e:
        raise TransferFailed(ExitCode.USAGE, str(e)) from None
    folder = prepare_folder(args.outdir)
    proto = ReceiverProtocol(
        reactor, code, folder, overwrite=args.overwrite, on_event=say, timeouts=timeouts_from(args)
    )
    reactor.addSystemEventTrigger("before", "shutdown", proto.interrupt)
    await connect(endpoint, proto)
    say(f"saved {proto.saved_path}")


def run(argv: Sequence[str] | None = None) -> NoReturn:
    run_transfer(main, build_parser(), argv)


if __name__ == "__main__":
    run()
