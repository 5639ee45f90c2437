"""
The C{twistd filerelay} command line and the service tree it builds.

Only this module knows about twistd and options; the relay itself takes
plain arguments. Used through the plugin in C{twisted/plugins/filerelay.py}.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from twisted_relay.errors import ErrorCode
from twisted_relay.relay import RelayFactory, State

DEFAULT_PORT = 9021


def normalize_port(text: str) -> str:
    """
    Accept C{9021}, C{:9021} or a Twisted endpoint description. A bare
    number is what people type, but L{serverFromString} rejects it.
    """
    text = text.strip()
    if text.startswith(":"):
        text = text[1:]
    if text.isdigit():
        port = int(text)
        if not 0 <= port <= 65535:
            raise usage.UsageError(f"port {port} is out of range")
        return f"tcp:{port}"
    if not text:
        raise usage.UsageError("--port needs a value")
    return text


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


_seconds.coerceDoc = "Seconds, greater than 0."  # type: ignore[attr-defined]


class Options(usage.Options):
    synopsis = "[--port PORT]... [options]"
    longdesc = (
        "Relay files between a sender and a receiver that share a short code. "
        "The relay stores nothing: it pairs the two connections and forwards "
        "bytes with backpressure."
    )

    optParameters = [
        ["handshake-timeout", None, 30.0, "Close connections that have not registered within this many seconds.", _seconds],
        ["wait-timeout", None, 3600.0, "How long a sender may wait for its receiver, in seconds.", _seconds],
        ["drain-timeout", None, 60.0, "On shutdown, how long paired transfers may go on, in seconds.", _seconds],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []

    def opt_port(self, value: str) -> None:
        """Where to listen: a number, :NUMBER or an endpoint such as
        tcp:9021:interface=127.0.0.1 (repeatable; default tcp:9021)."""
        self["ports"].append(normalize_port(value))

    opt_p = opt_port

    def postOptions(self) -> None:
        if not self["ports"]:
            self["ports"] = [f"tcp:{DEFAULT_PORT}"]


class DrainingService(Service):
    """
    Stops the relay gracefully. It is the first child of the service tree,
    so it stops last, after the listening ports: no new connection arrives
    while it tells waiting senders and half-open clients that the relay is
    going away and lets paired transfers finish for up to C{drain_timeout}
    seconds, then cuts whatever is left. Stopping a port alone would leave
    every open connection open.
    """

    _log = Logger()

    def __init__(self, factory: RelayFactory, clock: IReactorTime, drain_timeout: float) -> None:
        self.factory = factory
        self.clock = clock
        self.drain_timeout = drain_timeout

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for proto in list(self.factory.connections):
            if proto.state is not State.PAIRED:
                proto.close_with_error(ErrorCode.SHUTTING_DOWN, "the relay is shutting down")
        if not self.factory.connections:
            return succeed(None)
        self._log.info(
            "draining {transfers} transfers for up to {timeout}s",
            transfers=len(self.factory.splices),
            timeout=self.drain_timeout,
        )
        idle = self.factory.when_idle()
        cutoff = self.clock.callLater(self.drain_timeout, self._cut, idle)
        idle.addBoth(lambda result: cutoff.cancel() if cutoff.active() else None)
        return idle

    def _cut(self, idle: Deferred[None]) -> None:
        self._log.info("drain timeout: cutting {n} connections", n=len(self.factory.connections))
        for splice in list(self.factory.splices):
            splice.abort("shutdown")
        for proto in list(self.factory.connections):
            proto.transport.abortConnection()


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the relay: one listening service per --port, plus the drainer."""
    if reactor is None:
        from twisted.internet import reactor  # noqa: the app's one entry point
    factory = RelayFactory(
        clock=reactor,
        handshake_timeout=options["handshake-timeout"],
        wait_timeout=options["wait-timeout"],
    )
    top = MultiService()
    DrainingService(factory, reactor, options["drain-timeout"]).setServiceParent(top)
    for description in options["ports"]:
        strports.service(description, factory, reactor=reactor).setServiceParent(top)
    return top
