"""
The kernel forwarding path (L{twisted_relay.zero_copy}) over real loopback
sockets, in-process: it must take over once the transports have flushed,
deliver every byte in order both ways (the chunk Python already held first),
hold backpressure with the pipe as its only buffer, and end a transfer the
way the portable path does. The portable path runs the same tests, so each
behaviour is checked on both.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport

from twisted_relay import zero_copy
from twisted_relay.relay import RelayFactory
from twisted_relay.wire import RELAY_PROTOCOL_VERSION, FrameType, encode_channel, encode_frame, encode_version

PATHS = ["splice", "copy"] if zero_copy.AVAILABLE else ["copy"]

#: Payload of the big tests: many pipe-fulls and socket buffers.
SIZE = 24 * 1024 * 1024


def pattern(size: int, seed: bytes) -> bytes:
    """Bytes that differ everywhere, so a reordered or lost chunk shows."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest() * 128
        counter += 1
    return bytes(out[:size])


class Peer(Protocol):
    """A minimal client: the relay handshake, then raw bytes both ways."""

    def __init__(self, channel: int | None = None) -> None:
        self.role_channel = channel
        self.channel: Deferred[int] = Deferred()
        self.paired: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._frames = b""
        self.is_paired = False
        self.received = bytearray()

    def connectionMade(self) -> None:
        self.transport.write(encode_frame(FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION)))
        if self.role_channel is None:
            self.transport.write(encode_frame(FrameType.REGISTER))
        else:
            self.transport.write(encode_frame(FrameType.CLAIM, encode_channel(self.role_channel)))

    def dataReceived(self, data: bytes) -> None:
        if self.is_paired:
            self.received += data
            return
        self._frames += data
        while len(self._frames) >= 4:
            (length,) = struct.unpack_from("!I", self._frames)
            if len(self._frames) < 4 + length:
                return
            ftype, value = self._frames[4], self._frames[5 : 4 + length]
            self._frames = self._frames[4 + length :]
            if ftype == FrameType.CHANNEL:
                self.channel.callback(int(value))
            elif ftype == FrameType.PAIRED:
                self.is_paired = True
                self.received += self._frames
                self._frames = b""
                self.paired.callback(None)
                return

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)


async def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    """Real sockets need real time: poll C{predicate} until it holds."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


async def settle(read) -> object:
    """Wait until C{read()} stops changing for a while."""
    last = object()
    for _ in range(100):
        value = read()
        if value == last:
            return value
        last = value
        await deferLater(reactor, 0.2, lambda: None)
    raise AssertionError("never settled")


class Rig:
    """A relay on a loopback port and a paired sender and receiver."""

    def __init__(self, path: str, **factory_args: object) -> None:
        self.factory = RelayFactory(reactor, kernel_forwarding=path == "splice", **factory_args)
        self.port = None

    async def pair(self) -> tuple[Peer, Peer]:
        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self.factory)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        sender = Peer()
        await endpoint.connect(Factory.forProtocol(lambda: sender))
        receiver = Peer(await sender.channel)
        await endpoint.connect(Factory.forProtocol(lambda: receiver))
        await sender.paired
        await receiver.paired
        return sender, receiver

    @property
    def splice(self):
        [splice] = self.factory.splices
        return splice

    async def close(self) -> None:
        for proto in list(self.factory.connections):
            proto.transport.abortConnection()
        await self.port.stopListening()
        await deferLater(reactor, 0.05, lambda: None)


def write_all(peer: Peer, data: bytes, chunk: int = 256 * 1024) -> None:
    for offset in range(0, len(data), chunk):
        peer.transport.write(data[offset : offset + chunk])


def test_takes_over_only_flushed_tcp_transports() -> None:
    """In-memory transports, and a TCP transport with unsent bytes, stay
    on the portable path."""
    assert not zero_copy.can_take_over(StringTransport())
    assert not zero_copy.can_take_over(object())


@pytest.mark.parametrize("path", PATHS)
@pytest_twisted.ensureDeferred
async def test_every_byte_in_order_both_ways(path: str) -> None:
    """Both directions at once, with the sender's first bytes already
    waiting in the relay when the pair forms: all arrive, in order."""
    rig = Rig(path)
    try:
        sender, receiver = await rig.pair()
        up, down = pattern(SIZE, b"up"), pattern(SIZE // 8, b"down")
        write_all(sender, up)
        write_all(receiver, down)
        await wait_for(lambda: len(receiver.received) >= SIZE and len(sender.received) >= SIZE // 8, "the bytes")
        assert bytes(receiver.received) == up
        assert bytes(sender.received) == down
        assert rig.splice.forwarding == path
        assert (rig.splice.bytes_up, rig.splice.bytes_down) == (SIZE, SIZE // 8)
    finally:
        await rig.close()


@pytest.mark.parametrize("path", PATHS)
@pytest_twisted.ensureDeferred
async def test_sender_close_flushes_then_closes_receiver(path: str) -> None:
    """The sender writes and closes at once: the receiver still gets every
    byte, then the relay closes it, and the transfer is logged as ended by
    the sender."""
    rig = Rig(path)
    try:
        sender, receiver = await rig.pair()
        data = pattern(SIZE, b"close")
        write_all(sender, data)
        sender.transport.loseConnection()
        await wait_for(lambda: receiver.closed.called, "the receiver to be closed")
        assert bytes(receiver.received) == data
        await wait_for(lambda: not rig.factory.connections, "the relay to close both legs")
        assert not rig.factory.splices
    finally:
        await rig.close()


@pytest.mark.parametrize("path", PATHS)
@pytest_twisted.ensureDeferred
async def test_receiver_abort_closes_sender(path: str) -> None:
    """A receiver that vanishes mid-stream (RST) ends the sender's
    connection too; the relay keeps nothing."""
    rig = Rig(path)
    try:
        sender, receiver = await rig.pair()
        write_all(sender, pattern(SIZE, b"abort"))
        await wait_for(lambda: len(receiver.received) > 1024 * 1024, "some bytes")
        receiver.transport.abortConnection()
        await wait_for(lambda: sender.closed.called, "the sender to be closed")
        await wait_for(lambda: not rig.factory.connections, "the relay to close both legs")
    finally:
        await rig.close()


@pytest.mark.parametrize("path", PATHS)
@pytest_twisted.ensureDeferred
async def test_stalled_receiver_stops_reading_from_sender(path: str) -> None:
    """
    A receiver that stops reading stops the relay reading from the sender:
    the sender's bytes pile up in its own buffers, not in the relay. On the
    kernel path the relay's only buffer is the pipe, so its user-space
    buffers stay empty; on the portable path they stay under the transport
    buffer size. Resuming delivers every byte.
    """
    rig = Rig(path)
    try:
        sender, receiver = await rig.pair()
        receiver.transport.pauseProducing()  # never read: kernel buffers fill up
        data = pattern(SIZE, b"stall")
        write_all(sender, data)
        moved = await settle(lambda: rig.splice.bytes_up)
        assert moved < SIZE, "the relay read everything: no backpressure"
        splice = rig.splice
        if path == "splice":
            assert splice.forwarding == "splice"
            up = splice.kernel._up
            assert up.blocked and up.pending <= up.capacity
            assert not any(buffered(leg.transport) for leg in (splice.sender, splice.receiver))
        else:
            assert buffered(splice.receiver.transport) <= 2 * splice.receiver.transport.bufferSize
        receiver.transport.resumeProducing()
        await wait_for(lambda: len(receiver.received) >= SIZE, "the rest of the bytes")
        assert bytes(receiver.received) == data
    finally:
        await rig.close()


@pytest.mark.parametrize("path", PATHS)
@pytest_twisted.ensureDeferred
async def test_abort_cuts_both_legs(path: str) -> None:
    """What the drain timeout and the idle timeout do: both legs cut, even
    with the receiver stalled and bytes in flight."""
    rig = Rig(path)
    try:
        sender, receiver = await rig.pair()
        receiver.transport.pauseProducing()
        write_all(sender, pattern(SIZE, b"cut"))
        await settle(lambda: rig.splice.bytes_up)
        rig.splice.abort("shutdown")
        receiver.transport.resumeProducing()  # to see the reset
        await wait_for(lambda: sender.closed.called and receiver.closed.called, "both clients to see the cut")
        await wait_for(lambda: not rig.factory.connections, "the relay to forget both legs")
    finally:
        await rig.close()


@pytest.mark.parametrize("path", PATHS)
@pytest_twisted.ensureDeferred
async def test_idle_timeout_cuts_a_silent_pair(path: str) -> None:
    """No byte either way for the idle timeout: both legs cut, on the
    kernel path too (it reports moved bytes to the same clock)."""
    rig = Rig(path, idle_timeout=0.3)
    try:
        sender, receiver = await rig.pair()
        write_all(sender, pattern(1024 * 1024, b"idle"))
        await wait_for(lambda: len(receiver.received) >= 1024 * 1024, "the bytes")
        assert rig.splice.forwarding == path
        await wait_for(lambda: sender.closed.called and receiver.closed.called, "the idle cut", timeout=5)
    finally:
        await rig.close()


@pytest.mark.skipif(not zero_copy.AVAILABLE, reason="os.splice is Linux only")
@pytest_twisted.ensureDeferred
async def test_no_pipes_left_means_portable_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of file descriptors for the pipes, a transfer stays on the
    portable path and still delivers every byte."""

    def no_pipes(flags: int) -> tuple[int, int]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(zero_copy.os, "pipe2", no_pipes)
    rig = Rig("splice")
    try:
        sender, receiver = await rig.pair()
        data = pattern(SIZE // 4, b"nopipe")
        write_all(sender, data)
        await wait_for(lambda: len(receiver.received) >= len(data), "the bytes")
        assert bytes(receiver.received) == data
        assert rig.splice.forwarding == "copy"
    finally:
        await rig.close()


@pytest.mark.skipif(not zero_copy.AVAILABLE, reason="os.splice is Linux only")
@pytest_twisted.ensureDeferred
async def test_pipes_are_closed_after_the_transfer() -> None:
    """Each transfer's four pipe descriptors go when it ends."""
    rig = Rig("splice")
    try:
        before = open_pipes()
        sender, receiver = await rig.pair()
        write_all(sender, pattern(1024 * 1024, b"fds"))
        await wait_for(lambda: len(receiver.received) >= 1024 * 1024, "the bytes")
        assert rig.splice.forwarding == "splice"
        assert open_pipes() == before + 4
        sender.transport.loseConnection()
        await wait_for(lambda: receiver.closed.called, "the receiver to be closed")
        await wait_for(lambda: not rig.factory.connections, "the relay to close both legs")
        assert open_pipes() == before
    finally:
        await rig.close()


def open_pipes() -> int:
    """Pipe descriptors this process holds."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:
            pass  # closed while listing (listdir's own descriptor)
    return count


def buffered(transport) -> int:
    """Bytes a Twisted TCP transport holds in user space, not yet sent."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


@pytest.mark.skipif(not zero_copy.AVAILABLE, reason="os.splice is Linux only")
@pytest_twisted.ensureDeferred
async def test_socket_buffer_caps_sockets_and_pipes() -> None:
    """--socket-buffer bounds what a transfer holds in the kernel: both
    client sockets' buffers and both pipes."""
    rig = Rig("splice", socket_buffer=65536)
    try:
        sender, receiver = await rig.pair()
        write_all(sender, pattern(1024 * 1024, b"cap"))
        await wait_for(lambda: len(receiver.received) >= 1024 * 1024, "the bytes")
        splice = rig.splice
        assert splice.forwarding == "splice"
        assert splice.kernel._up.capacity == splice.kernel._down.capacity == 65536
        for leg in (splice.sender, splice.receiver):
            handle = leg.transport.getHandle()
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                # Linux doubles the value asked for, for its bookkeeping.
                assert handle.getsockopt(socket.SOL_SOCKET, option) <= 2 * 65536
    finally:
        await rig.close()
