"""
What end-to-end encryption costs: one file, CLI to CLI through one relay,
three ways in the same run.

encrypted    this tree: SPAKE2, then AES-256-GCM sealed records.
null cipher  a benchmark build of this tree in which the record layer's
             AES-GCM is replaced by a cipher that only copies (and appends a
             zero tag): every frame, buffer and copy is the same, only the
             cryptography is gone. Never shipped; made in the scratch folder.
previous     the last release before encryption (peer protocol 1: clear
             text body), checked out from git into the scratch folder.

The relay is this tree's for all three (it forwards opaque bytes and speaks
relay protocol 1 with every client). Runs are interleaved so that drifting
machine load hits all rows alike; each output's SHA-256 is checked.

    python bench/encryption.py [--size 1G] [--repeats 3] [--previous REV]

Prints a Markdown table on stdout; progress on stderr. Exit status 0 when
every transfer arrived intact.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    add_scratch_options,
    run_main,
    GiB,
    MiB,
    BenchError,
    Harness,
    human_size,
    machine_line,
    make_file,
    markdown_table,
    parse_size,
    prime_bytecode,
    random_pool,
    say,
    set_tree,
    start_relay,
)
from throughput import Run, run_ours  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

#: The last commit before end-to-end encryption (peer protocol version 1).
PREVIOUS_RELEASE = "0b83ab2"

_NULL_CIPHER = '''

# --- benchmark build only: the record layer without cryptography ---------
class _CopyOnlyAEAD:
    """Same interface and copies as AESGCM; no encryption, a zero tag."""

    def __init__(self, key):
        pass

    def encrypt(self, nonce, data, associated_data):
        return bytes(data) + bytes(TAG_SIZE)

    def decrypt(self, nonce, data, associated_data):
        return bytes(data[:-TAG_SIZE])

    def encrypt_into(self, nonce, data, associated_data, buf):
        n = len(data)
        buf[:n] = data
        buf[n:] = bytes(TAG_SIZE)

    def decrypt_into(self, nonce, data, associated_data, buf):
        buf[:] = data[: len(data) - TAG_SIZE]


AESGCM = _CopyOnlyAEAD
'''


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bench/encryption.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=parse_size("1G"), help="file size, e.g. 1G (default)")
    p.add_argument("-r", "--repeats", type=int, default=3, help="runs of each variant (default 3)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one transfer may take (default 300)")
    p.add_argument("--previous", default=PREVIOUS_RELEASE, help=f"git revision of the previous release (default {PREVIOUS_RELEASE})")
    add_scratch_options(p, urandom=False, tree=False)
    return p


def export_tree(rev: str | None, dest: str) -> str:
    """This checkout's files (C{rev} None) or a git revision's, in C{dest}."""
    os.makedirs(dest)
    if rev is None:
        files = subprocess.run(["git", "-C", REPO, "ls-files", "-co", "--exclude-standard", "twisted_relay", "twisted"],
                               capture_output=True, text=True, check=True).stdout.split()
        subprocess.run(["tar", "-c", "-C", REPO, *files], check=True, stdout=open(os.path.join(dest, ".tar"), "wb"))
        subprocess.run(["tar", "-x", "-f", ".tar"], cwd=dest, check=True)
        os.unlink(os.path.join(dest, ".tar"))
    else:
        archive = subprocess.run(["git", "-C", REPO, "archive", rev, "twisted_relay", "twisted"], capture_output=True)
        if archive.returncode != 0:
            raise BenchError(f"cannot export {rev}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x"], input=archive.stdout, cwd=dest, check=True)
    return dest


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.size < 1:
        raise BenchError("--repeats and --size must be positive")
    size = args.size
    results: dict[str, list[Run]] = {"encrypted": [], "null cipher": [], "previous": []}
    with Harness("encryption", need_bytes=2 * size + 64 * MiB, keep=args.keep) as h:
        trees = {
            "encrypted": export_tree(None, h.path("tree-encrypted")),
            "null cipher": export_tree(None, h.path("tree-null")),
            "previous": export_tree(args.previous, h.path("tree-previous")),
        }
        with open(os.path.join(trees["null cipher"], "twisted_relay", "records.py"), "a") as f:
            f.write(_NULL_CIPHER)
        src = h.path("file.bin")
        say(f"[encryption] writing {human_size(size)}")
        pool = random_pool()
        digest = make_file(src, size, seed=1, pool=pool)
        warm = h.path("warmup.bin")
        warm_digest = make_file(warm, MiB, seed=2, pool=pool)
        for name, tree in trees.items():
            set_tree(tree)
            say(f"[encryption] priming bytecode for {name}")
            prime_bytecode(h, warm)
        set_tree(trees["encrypted"])
        relay = start_relay(h)
        for name, tree in trees.items():
            set_tree(tree)
            if not run_ours(h, relay, warm, MiB, warm_digest, -1, 60).intact:
                raise BenchError(f"warm-up transfer for {name} failed:\n{h.log_tail('relay')}")
        for rep in range(args.repeats):
            for name, tree in trees.items():
                set_tree(tree)
                results[name].append(run_ours(h, relay, src, size, digest, rep, args.timeout))
                say(f"[encryption] run {rep + 1}/{args.repeats} {name:12s} {size / results[name][-1].seconds / 1e6:7.1f} MB/s")
        if relay.proc.poll() is not None:
            raise BenchError(f"the relay died:\n{h.log_tail('relay')}")

    print(f"### Encryption cost: one {human_size(size)} file, CLI to CLI ({args.repeats} runs each, interleaved)\n")
    print(f"{machine_line()}  \nprevious release: {args.previous}\n")
    print(markdown_table(["measurement", *results, "encrypted / null cipher", "encrypted / previous"], table_rows(results, size)))
    return 0 if all(r.intact for runs in results.values() for r in runs) else 1


def table_rows(results: dict[str, list[Run]], size: int) -> list[list[str]]:
    def summary(values: list[float], fmt: str) -> str:
        return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}–{max(values):{fmt}}]"

    rates = {name: [size / r.seconds / 1e6 for r in runs] for name, runs in results.items()}
    med = {name: statistics.median(v) for name, v in rates.items()}
    rows = [["throughput, MB/s, median [min–max]", *(summary(rates[n], ".1f") for n in results),
             f"{med['encrypted'] / med['null cipher']:.2f}", f"{med['encrypted'] / med['previous']:.2f}"]]
    for label, attr in (("sender CPU, s per GiB", "sending_cpu"), ("receiver CPU, s per GiB", "receiving_cpu"),
                        ("relay CPU, s per GiB", "forwarder_cpu")):
        per_gib = {n: [getattr(r, attr) * GiB / size for r in runs] for n, runs in results.items()}
        m = {n: statistics.median(v) for n, v in per_gib.items()}
        rows.append([label, *(summary(per_gib[n], ".2f") for n in results),
                     f"{m['encrypted'] / m['null cipher']:.2f}", f"{m['encrypted'] / m['previous']:.2f}"])
    rows.append(["intact (exit 0, size and SHA-256)", *(f"{sum(r.intact for r in runs)}/{len(runs)}" for runs in results.values()), "", ""])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("bench/encryption.py", run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
