"""
The programs ``bench/speed.py`` compares our relay with, installed on first
use and started on 127.0.0.1.

Kept apart from the measuring code because installing is slow, needs the
network once, and must never touch the project's own venv: the Python peers
(magic-wormhole, its mailbox server and its transit relay) go into a venv of
their own under a cache folder, piping-server into an npm prefix there, and
socat, iperf3 and curl come from apt. Later runs find them and install
nothing. Set ``FILERELAY_BENCH_CACHE`` to use another cache folder.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import BenchError, Harness, free_port, say, wait_listening  # noqa: E402

CACHE = os.environ.get("FILERELAY_BENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "filerelay-bench")
PEERS_VENV = os.path.join(CACHE, "peers-venv")
NPM_PREFIX = os.path.join(CACHE, "npm")
PYTHON_PEERS = ("magic-wormhole", "magic-wormhole-mailbox-server", "magic-wormhole-transit-relay")


def _run_install(cmd: Sequence[str], timeout: float = 900) -> None:
    say(f"[peers] $ {' '.join(cmd)}")
    try:
        done = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd)} took more than {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")


_apt_updated = False


def ensure_apt(binary: str, package: str | None = None) -> str:
    """The path of C{binary}, apt-get installing C{package} first if it is
    missing (as root only; otherwise say what to install)."""
    global _apt_updated
    path = shutil.which(binary)
    if path:
        return path
    package = package or binary
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(f"{binary} is not installed; install it (apt-get install {package}) and run again")
    say(f"[peers] {binary} is missing: installing the Debian package {package} with apt-get")
    env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive"]
    if not _apt_updated:
        _run_install([*env_cmd, "apt-get", "update"])
        _apt_updated = True
    _run_install([*env_cmd, "apt-get", "install", "-y", "--no-install-recommends", package])
    path = shutil.which(binary)
    if not path:
        raise BenchError(f"apt-get install {package} succeeded but {binary} is not on PATH")
    return path


def peers_bin(name: str) -> str:
    return os.path.join(PEERS_VENV, "bin", name)


def ensure_python_peers() -> str:
    """The peers venv's bin folder, with ``wormhole`` and ``twistd`` (whose
    plugins include ``transitrelay`` and ``wormhole-mailbox``)."""
    bindir = os.path.join(PEERS_VENV, "bin")
    if os.path.exists(peers_bin("wormhole")) and _has_plugins():
        return bindir
    say(f"[peers] installing {', '.join(PYTHON_PEERS)} into {PEERS_VENV} (once; not the project venv)")
    os.makedirs(CACHE, exist_ok=True)
    if not os.path.exists(peers_bin("python")):
        # The base interpreter, not the project venv's: its packages must
        # not leak into the peers' venv, nor the peers' into ours.
        _run_install([getattr(sys, "_base_executable", sys.executable), "-m", "venv", PEERS_VENV])
    _run_install([peers_bin("python"), "-m", "pip", "install", "--quiet", *PYTHON_PEERS])
    if not (os.path.exists(peers_bin("wormhole")) and _has_plugins()):
        raise BenchError(f"installed {PYTHON_PEERS} but wormhole or the twistd plugins are missing in {PEERS_VENV}")
    return bindir


def _has_plugins() -> bool:
    out = subprocess.run([peers_bin("twistd"), "--help"], capture_output=True, text=True, timeout=60) \
        if os.path.exists(peers_bin("twistd")) else None
    return out is not None and "transitrelay" in out.stdout and "wormhole-mailbox" in out.stdout


def peer_versions() -> str:
    """Installed versions, for the table's header line."""
    out = subprocess.run([peers_bin("python"), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                         timeout=60)
    try:
        have = {p["name"].lower(): p["version"] for p in json.loads(out.stdout)}
    except ValueError:
        return "(pip list failed)"
    return ", ".join(f"{n} {have.get(n, '?')}" for n in PYTHON_PEERS)


def ensure_piping_server() -> str:
    """The JavaScript entry point of piping-server, installed with npm into
    the cache folder; run it with ``node``."""
    entry = _piping_entry()
    if entry:
        return entry
    ensure_apt("node", "nodejs")
    ensure_apt("npm")
    say(f"[peers] installing piping-server from npm into {NPM_PREFIX} (once)")
    os.makedirs(NPM_PREFIX, exist_ok=True)
    _run_install(["npm", "install", "--prefix", NPM_PREFIX, "--no-audit", "--no-fund", "piping-server"])
    entry = _piping_entry()
    if not entry:
        raise BenchError(f"npm installed piping-server but its entry point is not under {NPM_PREFIX}")
    return entry


def _piping_entry() -> str | None:
    pkg = os.path.join(NPM_PREFIX, "node_modules", "piping-server")
    try:
        with open(os.path.join(pkg, "package.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    bin_field = meta.get("bin")
    rel = bin_field if isinstance(bin_field, str) else (bin_field or {}).get("piping-server")
    if rel and os.path.exists(os.path.join(pkg, rel)):
        return os.path.join(pkg, rel)
    found = glob.glob(os.path.join(pkg, "dist", "**", "index.js"), recursive=True)
    return found[0] if found else None


def piping_version() -> str:
    try:
        with open(os.path.join(NPM_PREFIX, "node_modules", "piping-server", "package.json")) as f:
            return f"piping-server {json.load(f).get('version', '?')}"
    except (OSError, ValueError):
        return "piping-server ?"


# -- starting them -------------------------------------------------------------------


def start_listener(h: Harness, argv: Sequence[str], port: int, log_name: str, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """Start a server that listens on 127.0.0.1:C{port} and wait until it does."""
    proc = h.spawn(argv, log_name)
    try:
        wait_listening(port, proc, timeout)
    except BenchError as e:
        raise BenchError(f"{e}\n{h.log_tail(log_name)}") from None
    return proc


def start_transit_relay(h: Harness, log_name: str = "transit") -> tuple[subprocess.Popen[bytes], int]:
    """magic-wormhole's transit relay (``twistd -n transitrelay``)."""
    port = free_port()
    proc = start_listener(h, [peers_bin("twistd"), "-n", "--pidfile=", "transitrelay",
                              f"--port=tcp:{port}:interface=127.0.0.1"], port, log_name)
    return proc, port


def start_mailbox(h: Harness, log_name: str = "mailbox") -> tuple[subprocess.Popen[bytes], int]:
    """magic-wormhole's mailbox (rendezvous) server, ``twistd -n wormhole-mailbox``,
    with its database in the scratch folder."""
    port = free_port()
    proc = start_listener(h, [peers_bin("twistd"), "-n", "--pidfile=", "wormhole-mailbox",
                              f"--port=tcp:{port}:interface=127.0.0.1",
                              f"--channel-db={h.path('mailbox-channel.sqlite')}",
                              f"--usage-db={h.path('mailbox-usage.sqlite')}"], port, log_name)
    return proc, port


def start_piping_server(h: Harness, entry: str, log_name: str = "piping") -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = start_listener(h, ["node", entry, "--host", "127.0.0.1", "--http-port", str(port)], port, log_name)
    return proc, port


def start_iperf3_server(h: Harness, iperf3: str, log_name: str = "iperf3-server") -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = start_listener(h, [iperf3, "-s", "-B", "127.0.0.1", "-p", str(port)], port, log_name)
    return proc, port
