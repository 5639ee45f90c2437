"""
Backpressure over real loopback sockets: when a receiver stops reading, the
relay stops reading from the sender, and what the relay holds for that
transfer stays bounded. iosim cannot show this (it never pauses producers).
"""

from __future__ import annotations

import struct

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from zope.interface import implementer

from twisted_relay.relay import RelayFactory
from twisted_relay.wire import (
    RELAY_PROTOCOL_VERSION,
    FrameType,
    encode_channel,
    encode_frame,
    encode_version,
)

from tests.helpers import parse_frames

CHUNK = 256 * 1024
#: What the relay may hold for one transfer: each transport's write buffer
#: stops its producer past 64 KiB, plus one read and one chunk in flight.
BOUND = 512 * 1024
#: The sender stops after this much: far more than kernel buffers can hold.
LIMIT = 64 * 1024 * 1024


@implementer(IPushProducer)
class Blaster(Protocol):
    """A sender that, once paired, writes as fast as its transport allows."""

    def __init__(self) -> None:
        self.channel: Deferred[int] = Deferred()
        self.sent = 0
        self._paused = False
        self._blasting = False
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(encode_frame(FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION)))
        self.transport.write(encode_frame(FrameType.REGISTER))

    def dataReceived(self, data: bytes) -> None:
        if self._blasting:
            return
        self._buffer += data
        try:
            frames = parse_frames(self._buffer)
        except (AssertionError, struct.error):
            return  # a frame is still incomplete
        for ftype, value in frames:
            if ftype == FrameType.CHANNEL and not self.channel.called:
                self.channel.callback(int(value))
            elif ftype == FrameType.PAIRED:
                self._blasting = True
                self.transport.registerProducer(self, True)
                self.resumeProducing()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        block = b"\xab" * CHUNK
        for _ in range(64):
            if self._paused or self.sent >= LIMIT:
                return
            self.transport.write(block)
            self.sent += CHUNK
        reactor.callLater(0, self.resumeProducing)

    def stopProducing(self) -> None:
        self._paused = True


class Sink(Protocol):
    """A receiver that can stop reading altogether."""

    def __init__(self, channel: int) -> None:
        self.channel = channel
        self.received = 0

    def connectionMade(self) -> None:
        self.transport.write(encode_frame(FrameType.HELLO, encode_version(RELAY_PROTOCOL_VERSION)))
        self.transport.write(encode_frame(FrameType.CLAIM, encode_channel(self.channel)))

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)


def buffered(transport) -> int:
    """Bytes a Twisted TCP transport holds in user space, not yet sent."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


async def settle(read) -> int:
    """Wait until C{read()} stops changing; real sockets need real time."""
    last = -1
    for _ in range(100):
        value = read()
        if value == last:
            return value
        last = value
        await deferLater(reactor, 0.2, lambda: None)
    raise AssertionError("never settled")


@pytest_twisted.ensureDeferred
async def test_stalled_receiver_pauses_sender() -> None:
    """A receiver that stops reading stalls the sender; the relay's buffers stay bounded; resuming delivers every byte."""
    factory = RelayFactory(reactor)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    try:
        blaster = Blaster()
        await endpoint.connect(Factory.forProtocol(lambda: blaster))
        channel = await blaster.channel
        sink = Sink(channel)
        await endpoint.connect(Factory.forProtocol(lambda: sink))
        sink.transport.pauseProducing()  # never read: kernel buffers fill up
        await settle(lambda: len(factory.splices))

        sent = await settle(lambda: blaster.sent)
        assert sent < LIMIT, "the sender was never paused"
        [splice] = factory.splices
        held = buffered(splice.sender.transport) + buffered(splice.receiver.transport)
        assert held <= BOUND, f"relay holds {held} bytes for one stalled transfer"
        assert splice.receiver.transport.producerPaused

        sink.transport.resumeProducing()
        await settle(lambda: (blaster.sent, sink.received))
        control = len(encode_frame(FrameType.WELCOME, encode_version(1))) + len(encode_frame(FrameType.PAIRED))
        assert sink.received - control == blaster.sent
    finally:
        for proto in list(factory.connections):
            proto.transport.abortConnection()
        await port.stopListening()
        await deferLater(reactor, 0.05, lambda: None)
