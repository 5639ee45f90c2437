"""
Senders that have registered and wait for a receiver that never comes: what
each one costs the relay. Used by bench/memory.py.

The senders are plain blocking sockets in the benchmark's own process (no
interpreter per sender), opened in batches: each sends HELLO, reads
WELCOME, sends REGISTER and reads CHANNEL, as the sender CLI does, then
stays connected and silent. Frames are built here from docs/protocol.rst
(section 2: a 4-byte big-endian length covering the type byte and the
value) rather than imported, so that the benchmark's process does not need
the measured tree's package.
"""

from __future__ import annotations

import os
import socket
import struct
import time

from _common import BenchError

_HELLO, _WELCOME, _REGISTER, _CHANNEL, _ERROR = 0x01, 0x02, 0x03, 0x04, 0x07
_RELAY_PROTOCOL_VERSION = 1


def _frame(ftype: int, value: bytes = b"") -> bytes:
    return struct.pack("!IB", len(value) + 1, ftype) + value


def _read_frame(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    def read_exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(n - len(data))
            except socket.timeout:
                raise BenchError("the relay did not answer a waiting sender in time") from None
            if not chunk:
                raise BenchError("the relay closed a waiting sender's connection")
            data += chunk
        return data

    (length,) = struct.unpack("!I", read_exactly(4))
    body = read_exactly(length)
    return body[0], body[1:]


def _expect(sock: socket.socket, want: int, deadline: float) -> bytes:
    ftype, value = _read_frame(sock, deadline)
    if ftype == _ERROR:
        code, text = struct.unpack_from("!H", value)[0], value[2:].decode("utf-8", "replace")
        raise BenchError(f"the relay refused a waiting sender: ERROR {code} {text}")
    if ftype != want:
        raise BenchError(f"a waiting sender got frame type {ftype}, expected {want}")
    return value


def open_waiting_senders(port: int, count: int, timeout: float = 60.0, batch: int = 100) -> list[socket.socket]:
    """C{count} connections to 127.0.0.1:C{port}, each registered and
    holding a channel. The caller closes them (L{close_all}).

    @raise BenchError: if any is refused, or the channels are not distinct.
    """
    deadline = time.monotonic() + timeout
    socks: list[socket.socket] = []
    channels: set[bytes] = set()
    try:
        while len(socks) < count:
            group = []
            for _ in range(min(batch, count - len(socks))):
                s = socket.create_connection(("127.0.0.1", port), timeout=max(0.01, deadline - time.monotonic()))
                socks.append(s)
                group.append(s)
                s.sendall(_frame(_HELLO, struct.pack("!H", _RELAY_PROTOCOL_VERSION)))
            for s in group:
                _expect(s, _WELCOME, deadline)
                s.sendall(_frame(_REGISTER))
            for s in group:
                channels.add(_expect(s, _CHANNEL, deadline))
    except BaseException:
        close_all(socks)
        raise
    if len(channels) != count:
        close_all(socks)
        raise BenchError(f"{count} senders registered but got only {len(channels)} distinct channels")
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
