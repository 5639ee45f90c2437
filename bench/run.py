"""
One entry point for the benchmarks (not tests: nothing here runs in CI).

    python bench/run.py memory [options]       # relay RSS under stalled receivers
    python bench/run.py throughput [options]   # one big file: ours vs a socat forwarder
    python bench/run.py load [options]         # many concurrent transfers through one relay
    python bench/run.py hardening [options]    # handshake timeout and SIGTERM drain
    python bench/run.py everyday [options]     # a folder of small files, a big file, a pipe: CLI to CLI
    python bench/run.py encryption [options]   # encrypted vs a null-cipher build vs the previous release
    python bench/run.py all                    # the first five, with their defaults (encryption has
                                               # no --tree: it builds its own trees)

``python bench/run.py SUBCOMMAND --help`` lists each one's options; the same
options work on ``python bench/memory.py``, ``python bench/throughput.py``,
``python bench/load.py``, ``python bench/hardening.py``,
``python bench/everyday.py`` and ``python bench/encryption.py``.
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
import throughput  # noqa: E402
from _common import BenchError, say  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    memory.build_parser(sub.add_parser("memory", help="relay RSS growth per transfer under stalled receivers"))
    throughput.build_parser(sub.add_parser("throughput", help="one big file through our relay and through socat"))
    load.build_parser(sub.add_parser("load", help="many concurrent transfers through one relay"))
    hardening.build_parser(sub.add_parser("hardening", help="silent connections vs the handshake timeout; SIGTERM drain"))
    everyday.build_parser(sub.add_parser("everyday", help="a folder of small files, a big file and a pipe, CLI to CLI"))
    encryption.build_parser(sub.add_parser("encryption", help="what end-to-end encryption costs, same run"))
    both = sub.add_parser("all", help="memory, throughput, load, hardening, then everyday, each with its defaults")
    both.add_argument("--tree", help="source tree to measure (default: the checkout holding this bench/)")
    both.add_argument("--keep", action="store_true", help="keep the scratch folders")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.bench == "memory":
            return memory.run(args)
        if args.bench == "throughput":
            return throughput.run(args)
        if args.bench == "load":
            return load.run(args)
        if args.bench == "hardening":
            return hardening.run(args)
        if args.bench == "everyday":
            return everyday.run(args)
        if args.bench == "encryption":
            return encryption.run(args)
        common = (["--tree", args.tree] if args.tree else []) + (["--keep"] if args.keep else [])
        status = 0
        for bench in (memory, throughput, load, hardening, everyday):
            try:
                status = bench.run(bench.build_parser().parse_args(common)) or status
            except BenchError as e:
                say(f"bench/run.py: {bench.__name__}: {e}")
                status = 1
            print(flush=True)
        return status
    except BenchError as e:
        say(f"bench/run.py: {e}")
        return 1
    except KeyboardInterrupt:
        say("bench/run.py: interrupted; cleaned up")
        return 130


if __name__ == "__main__":
    sys.exit(main())
