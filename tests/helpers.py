"""
Small test helpers in the style of trial's successResultOf/failureResultOf,
for checking Deferreds synchronously in in-memory tests.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def success_result_of(d: Deferred[T]) -> T:
    """The result of C{d}, which must already have succeeded."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has no result yet"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_result_of(d: Deferred[Any], *types: type[BaseException]) -> Failure:
    """The failure of C{d}, which must already have failed (with C{types})."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has no result yet"
    assert isinstance(results[0], Failure), f"{d!r} succeeded with {results[0]!r}"
    if types:
        assert results[0].check(*types), f"unexpected failure {results[0]!r}"
    return results[0]


def assert_no_result(d: Deferred[Any]) -> None:
    """C{d} has not fired yet."""
    results: list[Any] = []

    def look(result: Any) -> Any:
        results.append(result)
        return result  # pass it on, so a later check still sees it

    d.addBoth(look)
    assert not results, f"{d!r} already has {results[0]!r}"


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split bytes a protocol wrote into (type, value) frames; all complete."""
    import struct

    frames = []
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from("!I", data, offset)
        assert offset + 4 + length <= len(data), "incomplete frame written"
        frames.append((data[offset + 4], data[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return frames




def make_transport(host: str = "10.0.0.1", port: int = 4000):
    """A StringTransport that also records abortConnection calls and has a
    distinct peer address."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    class _Transport(StringTransport):
        aborted = False

        def abortConnection(self) -> None:
            self.aborted = True
            super().loseConnection()

    return _Transport(peerAddress=IPv4Address("TCP", host, port))


class MemoryNetwork:
    """
    A real L{RelayFactory} and any number of client protocols joined by
    iosim pumps on one fake clock. iosim never pauses producers, so this
    proves behaviour, not backpressure.
    """

    def __init__(self, **factory_args: Any) -> None:
        from twisted.internet.task import Clock

        from twisted_relay.relay import RelayFactory

        self.clock = Clock()
        self.factory = RelayFactory(self.clock, **factory_args)
        self.pumps: list[Any] = []

    def connect(self, client: Any) -> Any:
        from twisted.test import iosim

        server = self.factory.buildProtocol(None)
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return pump

    def flush(self) -> None:
        """Move bytes until every connection is quiet."""
        for _ in range(100_000):
            moved = False
            for pump in self.pumps:
                moved = pump.pump() or moved
            if not moved:
                return
        raise AssertionError("network never went quiet")
