"""
A raw sender and a raw receiver, as fast as Python gets, for ``bench/speed.py``.

They exist so that the forwarder in the middle (socat, our relay, the
transit relay) is what limits the rate, not the ends: the sender hands the
file to the kernel with ``os.sendfile``; the receiver reads with
``recv_into`` into one reused buffer and writes from a memoryview, so no
Python object is made per chunk. Before the data they do only as much of a
relay's handshake as that relay needs (none; our HELLO/REGISTER/CLAIM up to
PAIRED; the transit relay's ``please relay`` line). The peer-to-peer layer
(PAKE, sealed records) is skipped: a relay never looks at bytes after
pairing.

    python bench/rawends.py send (--connect HOST:PORT) [--relay|--transit TOKEN] FILE
    python bench/rawends.py receive (--listen | --connect HOST:PORT) [--claim CHANNEL|--transit TOKEN] OUT

Each prints one line before the data when it has something to tell
(``port N`` for a listening receiver, ``channel N`` for our sender) and one
JSON line at the end: CLOCK_MONOTONIC times, which all processes share, and
the byte count. The sender's ``start`` is taken just before the first byte
of the file goes; the receiver's ``end`` once it has read end-of-file and
written everything.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

from twisted_relay.errors import ErrorCode
from twisted_relay.wire import (
    RELAY_PROTOCOL_VERSION,
    FrameType,
    decode_channel,
    decode_error,
    encode_channel,
    encode_frame,
    encode_version,
)

BUFFER = 1024 * 1024
#: Each transit relay client says which side it is; the two must differ.
SIDES = {"send": "0123456789abcdef", "receive": "fedcba9876543210"}


class HandshakeFailed(Exception):
    pass


def connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=60)


def announce(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Reader:
    """Reads a handshake off a socket; what arrives after it is data and
    is handed on by L{leftover}."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise HandshakeFailed(f"connection closed during the handshake (had {self.buf!r})")
        self.buf += chunk

    def frame(self) -> tuple[int, bytes]:
        while len(self.buf) < 5:
            self._fill()
        length = int.from_bytes(self.buf[:4], "big")
        while len(self.buf) < 4 + length:
            self._fill()
        ftype, value = self.buf[4], self.buf[5 : 4 + length]
        self.buf = self.buf[4 + length :]
        if ftype == FrameType.ERROR:
            code, text = decode_error(value)
            raise HandshakeFailed(f"relay error {ErrorCode(code).name}: {text}")
        return ftype, value

    def expect(self, want: FrameType) -> bytes:
        ftype, value = self.frame()
        if ftype != want:
            raise HandshakeFailed(f"expected {want.name}, got frame type {ftype:#x}")
        return value

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def leftover(self) -> bytes:
        data, self.buf = self.buf, b""
        return data


def relay_hello(sock: socket.socket, then: bytes) -> Reader:
    sock.sendall(encode_frame(FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION)) + then)
    reader = Reader(sock)
    reader.expect(FrameType.WELCOME)
    return reader


def transit_hello(sock: socket.socket, token: str, role: str) -> Reader:
    sock.sendall(f"please relay {token} for side {SIDES[role]}\n".encode("ascii"))
    reader = Reader(sock)
    answer = reader.line()
    if answer != b"ok":
        raise HandshakeFailed(f"transit relay said {answer!r}")
    return reader


def send(args: argparse.Namespace) -> dict[str, float]:
    sock = connect(args.connect)
    if args.relay:
        reader = relay_hello(sock, encode_frame(FrameType.REGISTER))
        announce(f"channel {decode_channel(reader.expect(FrameType.CHANNEL))}")
        sock.settimeout(args.wait)
        reader.expect(FrameType.PAIRED)
    elif args.transit:
        sock.settimeout(args.wait)
        transit_hello(sock, args.transit, "send")
    sock.settimeout(None)
    with open(args.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        start = time.monotonic()
        while offset < size:
            sent = os.sendfile(sock.fileno(), f.fileno(), offset, size - offset)
            if sent == 0:
                raise HandshakeFailed(f"sendfile sent nothing at {offset} of {size}")
            offset += sent
        end = time.monotonic()
    # All of it is in the kernel's queue now; close() still delivers it.
    sock.close()
    return {"start": start, "end": end, "bytes": offset}


def receive(args: argparse.Namespace) -> dict[str, float]:
    if args.listen:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(args.wait)
        announce(f"port {listener.getsockname()[1]}")
        sock, _ = listener.accept()
        listener.close()
        leftover = b""
    else:
        sock = connect(args.connect)
        sock.settimeout(args.wait)
        if args.claim is not None:
            reader = relay_hello(sock, encode_frame(FrameType.CLAIM, encode_channel(args.claim)))
            reader.expect(FrameType.PAIRED)
        else:
            reader = transit_hello(sock, args.transit, "receive")
        leftover = reader.leftover()
    sock.settimeout(args.wait)  # a stall longer than this is a failure, not a figure
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    total = 0
    first = None
    with open(args.path, "wb") as out:
        fd = out.fileno()
        if leftover:
            first = time.monotonic()
            os.write(fd, leftover)
            total += len(leftover)
        while True:
            n = sock.recv_into(buffer)
            if not n:
                break
            if first is None:
                first = time.monotonic()
            written = 0
            while written < n:
                written += os.write(fd, view[written:n])
            total += n
    end = time.monotonic()
    sock.close()
    return {"first": first or end, "end": end, "bytes": total}


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/rawends.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("send")
    s.add_argument("--connect", required=True, help="HOST:PORT")
    s.add_argument("--relay", action="store_true", help="our relay's handshake: HELLO, REGISTER, wait PAIRED")
    s.add_argument("--transit", metavar="TOKEN", help="the transit relay's handshake with this 64-hex token")
    s.add_argument("path")
    r = sub.add_parser("receive")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", action="store_true", help="listen on an ephemeral 127.0.0.1 port (printed)")
    where.add_argument("--connect", help="HOST:PORT")
    r.add_argument("--claim", type=int, metavar="CHANNEL", help="our relay's handshake: HELLO, CLAIM, wait PAIRED")
    r.add_argument("--transit", metavar="TOKEN", help="the transit relay's handshake with this 64-hex token")
    r.add_argument("path")
    for q in (s, r):
        q.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the peer or for data")
    args = p.parse_args()
    try:
        report = send(args) if args.role == "send" else receive(args)
    except (OSError, HandshakeFailed) as e:
        print(f"rawends {args.role}: {e}", file=sys.stderr)
        return 1
    announce(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
