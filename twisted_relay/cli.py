"""
What both command-line programs share: running a transfer under the
reactor and turning its outcome into one line on stderr and an exit code.

stdout is data (the sender's code); everything for people goes to stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from typing import Any, Callable, Coroutine, NoReturn, Sequence

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react

from twisted.internet.interfaces import IStreamClientEndpoint

from twisted_relay.client import ClientProtocol, Timeouts, connect
from twisted_relay.errors import ExitCode, TransferFailed
from twisted_relay.progress import progress_bar


def say(text: str) -> None:
    """One line for the person at the keyboard."""
    print(text, file=sys.stderr, flush=True)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors exiting with our documented code."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        say(f"{self.prog}: error: {message}")
        raise SystemExit(ExitCode.USAGE)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


#: Where the relay address comes from when not given on the command line.
RELAY_ENV = "FILERELAY_RELAY"


def add_common_options(parser: argparse.ArgumentParser, waits: bool) -> None:
    """The options both programs share (and the sender's wait)."""
    parser.add_argument("--relay", metavar="ADDRESS", help=f"the relay's address (default: ${RELAY_ENV})")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no messages, only errors")
    defaults = Timeouts()
    parser.add_argument(
        "--stall-timeout",
        type=positive_seconds,
        default=defaults.stall,
        metavar="SECONDS",
        help=f"give up when nothing moves for this long during a transfer (default {defaults.stall:g})",
    )
    if waits:
        parser.add_argument(
            "--wait-timeout",
            type=positive_seconds,
            default=defaults.wait,
            metavar="SECONDS",
            help=f"give up if no receiver comes within this long (default {defaults.wait:g}; "
            "the relay usually ends the wait first)",
        )


def timeouts_from(args: argparse.Namespace) -> Timeouts:
    defaults = Timeouts()
    stall = args.stall_timeout
    return Timeouts(
        handshake=min(defaults.handshake, stall),
        stall=stall,
        wait=getattr(args, "wait_timeout", defaults.wait),
    )


class Reporting:
    """What the user sees while a transfer runs: messages unless --quiet,
    and a progress bar when stderr is a terminal."""

    def __init__(self, quiet: bool, label: str) -> None:
        self.bar = progress_bar(label, quiet)
        self.progress: Callable[[int, int | None], None] = self.bar or (lambda done, total: None)
        self.talk: Callable[[str], None]
        if quiet:
            self.talk = lambda text: None
        else:
            self.talk = self.bar.say if self.bar is not None else say

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def transfer(reactor: Any, endpoint: IStreamClientEndpoint, proto: ClientProtocol, reporting: Reporting) -> None:
    """Run C{proto} over C{endpoint}; a signal stopping the reactor first
    interrupts it, so the peer is told and local files are cleaned up."""
    reactor.addSystemEventTrigger("before", "shutdown", proto.interrupt)
    try:
        await connect(endpoint, proto)
    finally:
        reporting.close()


def keep_freed_memory() -> None:
    """
    Ask glibc to keep freed memory for reuse instead of returning it to the
    kernel after every large buffer. Each record is a quarter-megabyte
    buffer; by default glibc maps and unmaps (or trims) that memory each
    time, and the page faults cost more CPU than the encryption (measured:
    165,000 faults per 256 MiB). Only the command-line programs do this,
    and only where glibc is the allocator.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 16 * 1024 * 1024)
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024)


def run_transfer(
    main: Callable[[Any, argparse.Namespace], Coroutine[Any, Any, None]],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> NoReturn:
    """Parse C{argv}, run C{main(reactor, args)} and exit with its outcome."""
    args = parser.parse_args(argv)
    keep_freed_memory()
    finished = []

    def start(reactor: Any) -> Deferred[None]:
        d = ensureDeferred(main(reactor, args)).addErrback(_explain, parser.prog)
        return d.addBoth(lambda result: (finished.append(True), result)[1])

    try:
        react(start)
    except SystemExit:
        if not finished:
            # A signal stopped the reactor before the transfer ended: react()
            # would report that as success.
            say(f"{parser.prog}: interrupted")
            raise SystemExit(ExitCode.INTERRUPTED) from None
        raise
    raise SystemExit(0)  # react() always exits; never reached


def _explain(failure: Any, prog: str) -> None:
    if failure.check(TransferFailed):
        say(f"{prog}: {failure.value.message}")
        raise SystemExit(failure.value.exit_code)
    if failure.check(SystemExit):
        raise failure.value
    say(f"{prog}: unexpected error: {failure.getErrorMessage()}")
    failure.printTraceback(file=sys.stderr)
    raise SystemExit(ExitCode.FAILURE)
