"""
One entry point for the benchmarks (not tests: nothing here runs in CI).

    python bench/run.py memory [options]       # relay RSS under stalled receivers
    python bench/run.py throughput [options]   # one big file: ours vs a socat forwarder
    python bench/run.py load [options]         # many concurrent transfers through one relay
    python bench/run.py hardening [options]    # handshake timeout and SIGTERM drain
    python bench/run.py everyday [options]     # a folder of small files, a big file, a pipe: CLI to CLI
    python bench/run.py encryption [options]   # encrypted vs a null-cipher build vs the previous release
    python bench/run.py pairing [options]      # pairs per second: ours vs magic-wormhole's transit relay
    python bench/run.py speed [options]        # 1 GiB through every peer: iperf3, socat, transit, piping, wormhole
    python bench/run.py all                    # the first five, with their defaults (encryption has
                                               # no --tree: it builds its own trees)
    python bench/run.py targets                # everything issue 6 (Speed) measures: speed, memory with
                                               # --socket-buffer, load -n 1000 (splice, then copy), pairing

``python bench/run.py SUBCOMMAND --help`` lists each one's options; the same
options work on ``python bench/memory.py``, ``python bench/throughput.py``,
``python bench/load.py``, ``python bench/hardening.py``,
``python bench/everyday.py``, ``python bench/encryption.py``,
``python bench/pairing.py`` and ``python bench/speed.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import encryption  # noqa: E402
import everyday  # noqa: E402
import hardening  # noqa: E402
import load  # noqa: E402
import memory  # noqa: E402
import pairing  # noqa: E402
import speed  # noqa: E402
import throughput  # noqa: E402
from _common import BenchError, say  # noqa: E402


#: Each benchmark: its subcommand, its module (build_parser and run) and
#: its one-line help.
BENCHES = {
    "memory": (memory, "relay RSS growth per transfer under stalled receivers"),
    "throughput": (throughput, "one big file through our relay and through socat"),
    "load": (load, "many concurrent transfers through one relay"),
    "hardening": (hardening, "silent connections vs the handshake timeout; SIGTERM drain"),
    "everyday": (everyday, "a folder of small files, a big file and a pipe, CLI to CLI"),
    "encryption": (encryption, "what end-to-end encryption costs, same run"),
    "pairing": (pairing, "senders and receivers paired per second, ours vs the transit relay"),
    "speed": (speed, "one big file through our relay and every peer, with the Speed targets"),
}

#: What ``all`` runs: the first five, each with its defaults.
ALL = tuple((bench, []) for bench in (memory, throughput, load, hardening, everyday))

#: What ``targets`` runs: each benchmark with the options the Speed issue's
#: targets call for, one table each.
TARGETS = (
    (speed, []),
    (memory, ["--socket-buffer", "64K"]),
    (load, ["-n", "1000", "--size", "1M", "--forwarding", "splice"]),
    (load, ["-n", "1000", "--size", "1M", "--forwarding", "copy"]),
    (pairing, []),
)

#: Several benchmarks run in turn: what each runs, and its help.
SUITES = {
    "all": (ALL, "memory, throughput, load, hardening, then everyday, each with its defaults"),
    "targets": (TARGETS, "speed, memory, load -n 1000 on both paths, pairing: every Speed target"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, (bench, text) in BENCHES.items():
        bench.build_parser(sub.add_parser(name, help=text))
    for name, (_, text) in SUITES.items():
        suite = sub.add_parser(name, help=text)
        suite.add_argument("--tree", help="source tree to measure (default: the checkout holding this bench/)")
        suite.add_argument("--keep", action="store_true", help="keep the scratch folders")
    return parser


def run_in_turn(benches: Sequence[tuple[object, list[str]]], common: list[str]) -> int:
    """Run each benchmark in turn, even after one fails; 1 if any did."""
    status = 0
    for bench, options in benches:
        try:
            status = bench.run(bench.build_parser().parse_args(options + common)) or status  # type: ignore[attr-defined]
        except BenchError as e:
            say(f"bench/run.py: {bench.__name__}: {e}")  # type: ignore[attr-defined]
            status = 1
        print(flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.bench in BENCHES:
            return BENCHES[args.bench][0].run(args)
        common = (["--tree", args.tree] if args.tree else []) + (["--keep"] if args.keep else [])
        return run_in_turn(SUITES[args.bench][0], common)
    except BenchError as e:
        say(f"bench/run.py: {e}")
        return 1
    except KeyboardInterrupt:
        say("bench/run.py: interrupted; cleaned up")
        return 130


if __name__ == "__main__":
    sys.exit(main())
