"""
C{filerelay-receive} (C{python -m twisted_relay.receive}): fetch what the
code stands for into OUTDIR (default: the current folder), or to standard
output with C{-}. Prints nothing else on stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, NoReturn, Sequence

from twisted_relay.cli import (
    RELAY_ENV,
    ArgumentParser,
    Reporting,
    add_common_options,
    run_transfer,
    timeouts_from,
    transfer,
)
from twisted_relay.client import relay_endpoint
from twisted_relay.codes import Code, InvalidCode, parse_code
from twisted_relay.errors import ExitCode, TransferFailed
from twisted_relay.outputs import STDOUT
from twisted_relay.receiver import ReceiverProtocol

CODE_ENV = "FILERELAY_CODE"

EXAMPLES = f"""examples:
  filerelay-receive relay.example.org 7-orbit-tulip          into the current folder
  filerelay-receive relay.example.org:9021 7-orbit-tulip out/
  filerelay-receive relay.example.org 7-orbit-tulip - | tar x   to standard output
  export {RELAY_ENV}=relay.example.org; filerelay-receive 7-orbit-tulip
  filerelay-receive relay.example.org                         asks for the code

Without a CODE argument the code is read from ${CODE_ENV} or asked for on the
terminal, so it need not appear in the process list. Codes may be typed in
any case, with spaces or extra hyphens."""

#: What a code looks like, as opposed to a relay address or a folder: a
#: number, then a space or hyphen, then a letter.
_CODE_SHAPE = re.compile(r"^\s*\d+[\s-]+[A-Za-z]")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="filerelay-receive",
        description="Receive files through a relay, given the sender's code.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "positionals",
        nargs="*",
        metavar="[RELAY] [CODE] [OUTDIR]",
        help=f"the relay (optional when --relay or ${RELAY_ENV} is set), the code, and the folder "
        "to write into (default: the current folder; created if missing; - for standard output)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing files or folders of the same names")
    add_common_options(parser, waits=False)
    return parser


def split_arguments(args: argparse.Namespace) -> tuple[str, str | None, str]:
    """Relay, code (None: to be asked for) and output folder."""
    known = args.relay or os.environ.get(RELAY_ENV) or None
    pos = list(args.positionals)
    if len(pos) > 3:
        raise TransferFailed(ExitCode.USAGE, "too many arguments: [RELAY] [CODE] [OUTDIR]")
    at = next((i for i, p in enumerate(pos) if _CODE_SHAPE.match(p)), None)
    if at is not None:
        before, code, after = pos[:at], pos[at], pos[at + 1 :]
    elif len(pos) == 2 or (len(pos) == 1 and known is None):
        before, code, after = pos[:1], None, pos[1:]
    else:
        before, code, after = [], None, pos
    if len(before) > 1 or len(after) > 1:
        raise TransferFailed(ExitCode.USAGE, "arguments are [RELAY] [CODE] [OUTDIR]")
    relay = before[0] if before else known
    if relay is None:
        raise TransferFailed(ExitCode.USAGE, f"give the relay address (or set {RELAY_ENV})")
    return relay, code, after[0] if after else "."


def ask_for_code() -> str:
    """The code from the environment, or typed at the terminal."""
    code = os.environ.get(CODE_ENV)
    if code:
        return code
    if not sys.stdin.isatty():
        raise TransferFailed(ExitCode.USAGE, f"no code: give it as an argument, set {CODE_ENV}, or run in a terminal")
    sys.stderr.write("Code (for example 7-orbit-tulip): ")
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line.strip():
        raise TransferFailed(ExitCode.USAGE, "no code given")
    return line


def prepare_folder(path: str) -> str:
    if path == STDOUT:
        return path
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise TransferFailed(ExitCode.DISK_FULL, f"cannot create {path}: {e.strerror}") from None
    if not os.path.isdir(path):
        raise TransferFailed(ExitCode.USAGE, f"{path} is not a folder")
    return path


async def main(reactor: Any, args: argparse.Namespace) -> None:
    relay, code_text, outdir = split_arguments(args)
    try:
        endpoint = relay_endpoint(reactor, relay)
        code: Code = parse_code(code_text if code_text is not None else ask_for_code())
    except (InvalidCode, ValueError) as e:
        raise TransferFailed(ExitCode.USAGE, str(e)) from None
    folder = prepare_folder(outdir)
    reporting = Reporting(args.quiet, "receiving")
    proto = ReceiverProtocol(
        reactor,
        code,
        folder,
        overwrite=args.overwrite,
        on_event=reporting.talk,
        on_progress=reporting.progress,
        timeouts=timeouts_from(args),
    )
    await transfer(reactor, endpoint, proto, reporting)
    reporting.talk(f"saved {proto.saved_path}")


def run(argv: Sequence[str] | None = None) -> NoReturn:
    run_transfer(main, build_parser(), argv)


if __name__ == "__main__":
    run()
