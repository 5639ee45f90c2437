"""
A stage-aware TCP proxy, run as its own process by the fault-matrix tests:

    python stage_proxy.py TARGET_PORT [--hold CONN:DIR:TYPE[:NTH]]...

Listens on a kernel-chosen 127.0.0.1 port and forwards each connection it
accepts to 127.0.0.1:TARGET_PORT, like L{recording_proxy}. Connections are
numbered from 0 in the order they are accepted (the tests connect the sender
first, then the receiver). Every byte on these connections is framed (a
4-byte big-endian length covering a type byte and the value), so the proxy
follows the frame boundaries of each direction.

A hold names a connection, a direction (C{up}: client to relay, C{down}:
relay to client), a frame type (decimal or C{0x..}) and which occurrence of
that type (default the first). When that frame's header arrives, the proxy
forwards everything before it, stops there, stops reading from that source
(so the sender of the frame feels backpressure, as from a slow network) and
reports the hold. A SIGUSR1 releases every hold at once: held frames and
whatever followed them, end of stream included, then flow on, and no later
hold stops anything. Nothing is dropped, reordered or altered.

Events go to stdout, one line each, flushed:

    LISTEN <port>
    CONN <n> <local port of the proxy's connection to the target>
    HOLD <n> <dir> <type> <nth>
    RELEASED
    EOF <n> <dir>

The relay logs each connection by its peer address, which is
C{127.0.0.1:<the CONN port>}. A source that ends, or resets, ends its
direction: the proxy shuts down writing on the other socket (a reset is
passed on as an orderly end). Bytes that cannot be written because the
sink has gone are discarded; the direction still ends only with its source.
"""

from __future__ import annotations

import asyncio
import signal
import struct
import sys
from dataclasses import dataclass


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class Hold:
    conn: int
    direction: str
    ftype: int
    nth: int

    @classmethod
    def parse(cls, text: str) -> "Hold":
        parts = text.split(":")
        if len(parts) not in (3, 4) or parts[1] not in ("up", "down"):
            raise SystemExit(f"bad --hold {text!r}: want CONN:up|down:TYPE[:NTH]")
        nth = int(parts[3]) if len(parts) == 4 else 1
        return cls(int(parts[0]), parts[1], int(parts[2], 0), nth)


class Proxy:
    def __init__(self, target: int, holds: list[Hold]) -> None:
        self.target = target
        self.holds = holds
        self.released = asyncio.Event()
        self.count = 0

    def release(self) -> None:
        if not self.released.is_set():
            self.released.set()
            say("RELEASED")

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        n = self.count
        self.count += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_writer.close()
            return
        say(f"CONN {n} {up_writer.get_extra_info('sockname')[1]}")
        await asyncio.gather(
            self.pump(n, "up", client_reader, up_writer),
            self.pump(n, "down", up_reader, client_writer),
        )
        for writer in (client_writer, up_writer):
            writer.close()

    async def pump(self, n: int, direction: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        holds = {(h.ftype, h.nth): h for h in self.holds if h.conn == n and h.direction == direction}
        seen: dict[int, int] = {}
        pending = bytearray()
        in_frame = 0  # bytes of the current, already inspected frame still to pass on
        sink_alive = True

        def forward(data: bytes) -> None:
            nonlocal sink_alive
            if sink_alive and data:
                try:
                    writer.write(data)
                except (OSError, RuntimeError):
                    sink_alive = False

        while True:
            while pending:
                if in_frame:
                    chunk = bytes(pending[:in_frame])
                    del pending[: len(chunk)]
                    in_frame -= len(chunk)
                    forward(chunk)
                    continue
                if len(pending) < 5:
                    break
                (length,) = struct.unpack_from("!I", pending)
                ftype = pending[4]
                seen[ftype] = seen.get(ftype, 0) + 1
                if (ftype, seen[ftype]) in holds and not self.released.is_set():
                    await self.drain(writer)
                    say(f"HOLD {n} {direction} {ftype:#04x} {seen[ftype]}")
                    await self.released.wait()
                in_frame = 4 + length
            if sink_alive:
                sink_alive = await self.drain(writer)
            try:
                data = await reader.read(65536)
            except OSError:
                data = b""
            if not data:
                break
            pending += data
        forward(bytes(pending))  # a trailing partial frame, if any
        say(f"EOF {n} {direction}")
        if sink_alive and await self.drain(writer):
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                pass

    @staticmethod
    async def drain(writer: asyncio.StreamWriter) -> bool:
        """Wait until the sink has taken what we wrote; C{False} if it is gone."""
        try:
            await writer.drain()
        except (OSError, RuntimeError):
            return False
        return not writer.is_closing()


async def main(argv: list[str]) -> None:
    target = int(argv[0])
    holds: list[Hold] = []
    rest = argv[1:]
    while rest:
        if rest[0] != "--hold" or len(rest) < 2:
            raise SystemExit(f"usage: stage_proxy.py TARGET_PORT [--hold CONN:DIR:TYPE[:NTH]]...")
        holds.append(Hold.parse(rest[1]))
        rest = rest[2:]
    proxy = Proxy(target, holds)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, proxy.release)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    say(f"LISTEN {server.sockets[0].getsockname()[1]}")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
