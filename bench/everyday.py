"""
Everyday transfers with the real command lines, through one relay.

In one run, each repeat moves, back to back (interleaved, so drift in
machine load affects all alike):

tree   a folder of many small files (default 10,000 of 1 KiB) in nested
       subfolders: ``send RELAY tree/`` -> ``receive RELAY CODE OUTDIR``,
       which streams it as a tar made on the fly and unpacks it;
file   one big file (default 1 GiB): ``send RELAY big.bin`` ->
       ``receive RELAY CODE OUTDIR``;
pipe   the same big file through standard input and output:
       ``cat big.bin | send RELAY -`` -> ``receive RELAY CODE - > out``
       (``--no-pipe`` leaves it out).

Each transfer is timed from starting the receiver (the sender is already
waiting with its code) to the receiver's exit, as in throughput.py.
Throughput counts payload bytes only (file contents, not tar headers or
encryption). Every output is checked: the tree file by file (SHA-256 of
each, and no file or folder missing or extra), the big file and the piped
output by size and SHA-256.

    python bench/everyday.py [--files 10000] [--file-size 1K] [--size 1G] [-r 3] [--no-pipe]

Prints a Markdown table on stdout; progress goes to stderr. Exit status 0
when every transfer arrived intact, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    add_scratch_options,
    run_main,
    GiB,
    MiB,
    BenchError,
    Harness,
    Relay,
    child_env,
    cpu_seconds,
    describe_tree,
    human_size,
    machine_line,
    make_file,
    markdown_table,
    parse_size,
    prime_bytecode,
    random_pool,
    read_code,
    say,
    set_tree,
    sha256_file,
    start_receiver,
    start_relay,
    start_sender,
    wait_exit,
)

#: The folder layout: a root, 4 folders in it, 4 in each of those, and one
#: more level below each of those: 37 folders, up to 4 deep. Files are dealt
#: round-robin over all of them.
TOP, MIDDLE = 4, 4

KINDS = ("tree", "file", "pipe")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bench/everyday.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=10_000, help="small files in the folder (default 10000)")
    p.add_argument("--file-size", type=parse_size, default=parse_size("1K"), help="size of each small file (default 1K)")
    p.add_argument("--size", type=parse_size, default=parse_size("1G"), help="the big file's size (default 1G)")
    p.add_argument("-r", "--repeats", type=int, default=3, help="runs of each transfer (default 3)")
    p.add_argument("--no-pipe", action="store_true", help="leave out the big file through stdin and stdout")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one transfer may take (default 300)")
    add_scratch_options(p)
    return p


# -- the small-file tree -------------------------------------------------------------


@dataclass
class Manifest:
    """What a received tree must hold, exactly: folders, and each file's
    SHA-256, by path relative to the output folder."""

    folders: set[str]
    files: dict[str, str]
    payload: int  # sum of the files' sizes


def make_tree(root: str, count: int, size: int, pool: bytes | None, seed: int = 7) -> Manifest:
    """Write C{count} files of C{size} bytes, each different, under C{root}
    (whose base name is the entry the receiver creates)."""
    top = os.path.basename(root)
    folders = [top]
    for i in range(TOP):
        folders.append(f"{top}/dir-{i}")
        for j in range(MIDDLE):
            folders.append(f"{top}/dir-{i}/sub-{j}")
            folders.append(f"{top}/dir-{i}/sub-{j}/deeper")
    parent = os.path.dirname(root)
    for rel in folders:
        os.makedirs(os.path.join(parent, rel))
    rng = random.Random(seed)
    files: dict[str, str] = {}
    for n in range(count):
        rel = f"{folders[n % len(folders)]}/file-{n:05d}.dat"
        if pool is None:
            data = os.urandom(size)
        else:
            off = rng.randrange(len(pool) - size)
            data = pool[off : off + size]
        with open(os.path.join(parent, rel), "wb") as f:
            f.write(data)
        files[rel] = hashlib.sha256(data).hexdigest()
    return Manifest(set(folders), files, count * size)


def check_tree(outdir: str, want: Manifest) -> list[str]:
    """Compare what the receiver made in C{outdir} with C{want}, file by
    file; return the differences (empty: intact)."""
    problems: list[str] = []
    folders: set[str] = set()
    got: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(outdir):
        rel_dir = os.path.relpath(dirpath, outdir)
        if rel_dir != ".":
            folders.add(rel_dir)
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                problems.append(f"{rel} is a link")
                continue
            with open(path, "rb") as f:
                got[rel] = hashlib.sha256(f.read()).hexdigest()
    if folders != want.folders:
        problems.append(f"folders missing {sorted(want.folders - folders)[:5]}, extra {sorted(folders - want.folders)[:5]}")
    missing = want.files.keys() - got.keys()
    extra = got.keys() - want.files.keys()
    wrong = [rel for rel in want.files.keys() & got.keys() if got[rel] != want.files[rel]]
    if missing:
        problems.append(f"{len(missing)} files missing, e.g. {sorted(missing)[:3]}")
    if extra:
        problems.append(f"{len(extra)} extra files, e.g. {sorted(extra)[:3]}")
    if wrong:
        problems.append(f"{len(wrong)} files with the wrong SHA-256, e.g. {sorted(wrong)[:3]}")
    return problems


def tar_stream_size(path: str) -> int | None:
    """The bytes the sender streams for C{path} (tar headers, padding, end
    marker), as the measured tree's own TarReader computes them."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from twisted_relay.tarstream import TarReader; print(TarReader([sys.argv[1]]).size)", path],
        env=child_env(), capture_output=True, text=True, cwd="/",
    )
    try:
        return int(out.stdout.strip())
    except ValueError:
        return None


# -- one transfer --------------------------------------------------------------------


@dataclass
class Run:
    kind: str
    seconds: float  # receiver start -> receiver exit
    to_code: float  # sender start -> code on its stdout
    end_to_end: float  # sender start -> sender and receiver both exited
    sender_cpu: float
    receiver_cpu: float
    relay_cpu: float
    cat_cpu: float | None
    intact: bool
    problems: list[str] = field(default_factory=list)


def check_file(path: str, size: int, digest: str) -> list[str]:
    try:
        got = os.path.getsize(path)
        if got != size:
            return [f"size {got}, expected {size}"]
        if sha256_file(path) != digest:
            return ["wrong SHA-256"]
        return []
    except OSError as e:
        return [f"no output: {e}"]


def transfer(
    h: Harness,
    relay: Relay,
    kind: str,
    tag: str,
    src: str,
    timeout: float,
    verify: Callable[[str], list[str]],
) -> Run:
    """One transfer of C{kind} with the real CLIs; C{verify(outdir)}
    checks what arrived. Outputs are deleted afterwards."""
    outdir = h.path(f"out-{tag}")
    os.makedirs(outdir)
    relay_before = cpu_seconds(relay.pid)
    t_start = time.monotonic()
    cat = None
    out_file = None
    if kind == "pipe":
        cat = h.spawn(["cat", src], f"cat-{tag}", stdout_pipe=True)
        sender = h.spawn([sys.executable, "-m", "twisted_relay.send", relay.address, "-"], f"send-{tag}",
                         stdout_pipe=True, stdin=cat.stdout)
        assert cat.stdout is not None
        cat.stdout.close()  # the sender holds the read end now
        code = read_code(h, sender, tag)
    else:
        sender, code = start_sender(h, relay, src, tag)
    t_code = time.monotonic()
    if kind == "pipe":
        out_path = os.path.join(outdir, "stdout.bin")
        out_file = open(out_path, "wb")
        receiver = h.spawn([sys.executable, "-m", "twisted_relay.receive", relay.address, code, "-"],
                           f"receive-{tag}", stdout=out_file)
        out_file.close()  # the receiver has its own copy
    else:
        receiver = start_receiver(h, relay, code, outdir, tag)
    try:
        rc_r, cpu_r = wait_exit(receiver, timeout)
        t_received = time.monotonic()
        rc_s, cpu_s = wait_exit(sender, 30)
        rc_c, cpu_c = wait_exit(cat, 30) if cat is not None else (0, None)
    except BenchError as e:
        raise BenchError(f"{e}\nreceiver:\n{h.log_tail(f'receive-{tag}', 5)}\n"
                         f"sender:\n{h.log_tail(f'send-{tag}', 5)}\nrelay:\n{h.log_tail('relay', 5)}") from None
    t_end = time.monotonic()
    relay_after = cpu_seconds(relay.pid)
    problems = []
    if rc_r != 0 or rc_s != 0 or rc_c != 0:
        problems.append(f"exit status: receiver {rc_r}, sender {rc_s}" + (f", cat {rc_c}" if cat else ""))
    problems += verify(outdir)
    shutil.rmtree(outdir, ignore_errors=True)  # give tmpfs its memory back before the next run
    if problems:
        say(f"[everyday] {tag} failed: {'; '.join(problems)}")
        say(f"receiver:\n{h.log_tail(f'receive-{tag}', 5)}\nsender:\n{h.log_tail(f'send-{tag}', 5)}")
    return Run(kind, t_received - t_code, t_code - t_start, t_end - t_start, cpu_s, cpu_r,
               relay_after - relay_before, cpu_c, not problems, problems)


# -- the benchmark -------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.size < 1 or args.files < 1 or args.file_size < 1:
        raise BenchError("--repeats, --size, --files and --file-size must be positive")
    if args.tree:
        set_tree(args.tree)
    tree_line = describe_tree()
    kinds = [k for k in KINDS if not (k == "pipe" and args.no_pipe)]
    size = args.size
    # tmpfs charges at least a page per small file.
    tree_bytes = args.files * max(args.file_size, 4096)
    need = 2 * size + 2 * tree_bytes + 64 * MiB
    runs: dict[str, list[Run]] = {k: [] for k in kinds}
    with Harness("everyday", need_bytes=need, keep=args.keep) as h:
        pool = None if args.urandom else random_pool()
        os.makedirs(h.path("in"))
        say(f"[everyday] writing {args.files} files of {human_size(args.file_size)} and one of {human_size(size)}")
        tree = h.path("in", "tree")
        manifest = make_tree(tree, args.files, args.file_size, pool)
        stream_size = tar_stream_size(tree)
        big = h.path("in", "big.bin")
        digest = make_file(big, size, seed=1, pool=pool)
        warm = h.path("in", "warmup.bin")
        warm_digest = make_file(warm, MiB, seed=2, pool=pool)
        warm_tree = h.path("in", "small-tree")
        warm_manifest = make_tree(warm_tree, 50, args.file_size, pool, seed=8)

        sources = {"tree": tree, "file": big, "pipe": big}
        checks: dict[str, Callable[[str], list[str]]] = {
            "tree": lambda out: check_tree(out, manifest),
            "file": lambda out: check_file(os.path.join(out, "big.bin"), size, digest),
            "pipe": lambda out: check_file(os.path.join(out, "stdout.bin"), size, digest),
        }

        say(f"[{h.name}] priming the bytecode cache with a throwaway relay and transfer")
        prime_bytecode(h, warm)
        relay = start_relay(h)
        say(f"[everyday] relay pid {relay.pid} on {relay.address}")
        # One small transfer of each kind first: one-time costs (imports,
        # first allocations in the relay) stay out of the first repeat, and
        # a broken path fails in seconds rather than after gigabytes.
        warm_checks: dict[str, Callable[[str], list[str]]] = {
            "tree": lambda out: check_tree(out, warm_manifest),
            "file": lambda out: check_file(os.path.join(out, "warmup.bin"), MiB, warm_digest),
            "pipe": lambda out: check_file(os.path.join(out, "stdout.bin"), MiB, warm_digest),
        }
        warm_sources = {"tree": warm_tree, "file": warm, "pipe": warm}
        for kind in kinds:
            r = transfer(h, relay, kind, f"warmup-{kind}", warm_sources[kind], 60, warm_checks[kind])
            if not r.intact:
                raise BenchError(f"warm-up {kind} transfer failed: {'; '.join(r.problems)}\n{h.log_tail('relay')}")

        for rep in range(args.repeats):
            for kind in kinds:
                r = transfer(h, relay, kind, f"{kind}-{rep}", sources[kind], args.timeout, checks[kind])
                runs[kind].append(r)
                payload = manifest.payload if kind == "tree" else size
                extra = f", {args.files / r.seconds:,.0f} files/s" if kind == "tree" else ""
                say(f"[everyday] run {rep + 1}/{args.repeats} {kind:4}: {payload / r.seconds / 1e6:7.1f} MB/s{extra}"
                    f"{'' if r.intact else '  (NOT INTACT)'}")
        if relay.proc.poll() is not None:
            raise BenchError(f"the relay died:\n{h.log_tail('relay')}")

    folders = len(manifest.folders)
    print(f"### Everyday transfers through one relay, CLI to CLI ({args.repeats} interleaved runs each)\n")
    print(f"{machine_line()}  \n{tree_line}\n")
    headers = ["measurement",
               f"(a) folder: {args.files:,} × {human_size(args.file_size)} files in {folders} folders",
               f"(b) one {human_size(size)} file"]
    if "pipe" in kinds:
        headers.append(f"(c) the {human_size(size)} file by pipes: cat → send -, receive - → file")
    print(markdown_table(headers, table_rows(kinds, runs, manifest, size, stream_size)))
    return 0 if all(r.intact for rs in runs.values() for r in rs) else 1


def table_rows(kinds: list[str], runs: dict[str, list[Run]], manifest: Manifest, size: int,
               stream_size: int | None) -> list[list[str]]:
    def payload(kind: str) -> int:
        return manifest.payload if kind == "tree" else size

    def spread(values: list[float], fmt: str = ".2f") -> str:
        return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}–{max(values):{fmt}}]"

    def row(label: str, cell: Callable[[str], str]) -> list[str]:
        return [label] + [cell(k) for k in kinds]

    rows = []
    rows.append(row("payload (file contents), bytes",
                    lambda k: f"{payload(k):,} ({payload(k) / 1e6:,.1f} MB)"))
    rows.append(row("stream through the relay before encryption, bytes",
                    lambda k: (f"{stream_size:,} (tar: +{stream_size / manifest.payload - 1:.0%})" if stream_size else "n/a")
                    if k == "tree" else f"{size:,}" if k == "file" else f"{size:,} (size not announced)"))
    rates = {k: [payload(k) / r.seconds / 1e6 for r in runs[k]] for k in kinds}
    for name, fn in (("median", statistics.median), ("min", min), ("max", max)):
        rows.append(row(f"throughput, payload MB/s (10^6 B/s), {name}", lambda k: f"{fn(rates[k]):.1f}"))
    rows.append(row("throughput, every run, MB/s", lambda k: ", ".join(f"{v:.1f}" for v in rates[k])))
    files = len(manifest.files)
    rows.append(row("files per second, median [min–max]",
                    lambda k: spread([files / r.seconds for r in runs[k]], ",.0f") if k == "tree" else "—"))
    rows.append(row("wall time, s: receiver start → exit, median [min–max]",
                    lambda k: spread([r.seconds for r in runs[k]])))
    rows.append(row("sender start → code printed, s, median (includes scanning the folder)",
                    lambda k: f"{statistics.median(r.to_code for r in runs[k]):.2f}"))
    rows.append(row("sender start → both ends exited, s, median",
                    lambda k: f"{statistics.median(r.end_to_end for r in runs[k]):.2f}"))
    rows.append(row("sender CPU, s (whole life), median [min–max]", lambda k: spread([r.sender_cpu for r in runs[k]])))
    rows.append(row("receiver CPU, s (whole life), median [min–max]", lambda k: spread([r.receiver_cpu for r in runs[k]])))
    rows.append(row("relay CPU, s (sender start → both exited), median [min–max]",
                    lambda k: spread([r.relay_cpu for r in runs[k]])))
    if "pipe" in kinds:
        rows.append(row("cat CPU, s (feeding the sender's stdin), median",
                        lambda k: f"{statistics.median(r.cat_cpu or 0.0 for r in runs[k]):.2f}" if k == "pipe" else "—"))
    def cpu_per(k: str, unit: float) -> str:
        return " / ".join(f"{statistics.median(getattr(r, a) for r in runs[k]) / unit:.2f}"
                          for a in ("sender_cpu", "receiver_cpu", "relay_cpu"))

    rows.append(row("CPU, s per GiB of payload (per 1,000 files for the folder): sender / receiver / relay, medians",
                    lambda k: cpu_per(k, files / 1000) if k == "tree" else cpu_per(k, payload(k) / GiB)))
    checks = {"tree": "exit 0, every file's SHA-256, no file or folder missing or extra",
              "file": "exit 0, size and SHA-256", "pipe": "exit 0, size and SHA-256"}
    rows.append(row("intact", lambda k: f"{sum(r.intact for r in runs[k])}/{len(runs[k])} ({checks[k]})"))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("bench/everyday.py", run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
