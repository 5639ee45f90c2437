"""
The C{twistd filerelay} command line and the service tree it builds.

Only this module knows about twistd and options; the relay itself takes
plain arguments. Used through the plugin in C{twisted/plugins/filerelay.py}.
Every default of C{twistd filerelay} is in L{Options.optParameters} (and
L{DEFAULT_PORT}); the relay's own classes default to "off".
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime, _ISupportsExitSignalCapturing
from twisted.logger import ILogObserver, Logger, LogPublisher, globalLogPublisher
from twisted.python import usage

from twisted_relay import zero_copy
from twisted_relay.errors import ErrorCode
from twisted_relay.logs import LOG_FORMATS, SHUTDOWN, json_observer
from twisted_relay.metrics import metrics_site
from twisted_relay.relay import RelayFactory, State

DEFAULT_PORT = 9021

#: What a bare --metrics-port number binds to: metrics stay on this host
#: unless an endpoint string says otherwise.
METRICS_INTERFACE = "127.0.0.1"


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


#: Listen queue for TCP ports that do not set one. Twisted's default of 50
#: overflows when a few hundred clients connect at once (measured with
#: bench/load.py: 189 dropped SYNs, each retried by the kernel after 1 s).
LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """Add C{backlog=LISTEN_BACKLOG} to a TCP endpoint that sets none."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def normalize_metrics_port(text: str) -> str:
    """
    Like L{normalize_port}, but a bare number (or C{:NUMBER}) binds to
    L{METRICS_INTERFACE} only: metrics tell a stranger how busy the relay is,
    so serving them beyond this host takes an explicit endpoint.
    """
    description = normalize_port(text)
    stripped = text.strip().lstrip(":")
    if stripped.isdigit():
        description += f":interface={METRICS_INTERFACE}"
    return description


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


_seconds.coerceDoc = "Seconds, greater than 0."  # type: ignore[attr-defined]

_OFF = ("off", "none")


def _seconds_or_off(text: str) -> float | None:
    if text.strip().lower() in _OFF:
        return None
    return _seconds(text)


_seconds_or_off.coerceDoc = "Seconds, greater than 0, or 'off'."  # type: ignore[attr-defined]


def _count_or_off(text: str) -> int | None:
    if text.strip().lower() in _OFF:
        return None
    value = int(text)
    if value <= 0:
        raise ValueError("must be a whole number above 0, or 'off'")
    return value


_count_or_off.coerceDoc = "A whole number above 0, or 'off'."  # type: ignore[attr-defined]


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"--log-format must be one of: {', '.join(LOG_FORMATS)}")
    return value


_log_format.coerceDoc = "One of: " + ", ".join(LOG_FORMATS) + "."  # type: ignore[attr-defined]


FORWARDING_MODES = ("auto", "splice", "copy")


def _forwarding(text: str) -> str:
    value = text.strip().lower()
    if value not in FORWARDING_MODES:
        raise ValueError(f"must be one of: {', '.join(FORWARDING_MODES)}")
    if value == "splice" and not zero_copy.AVAILABLE:
        raise ValueError("splice forwarding needs Linux (os.splice); use auto or copy")
    return value


_forwarding.coerceDoc = "One of: " + ", ".join(FORWARDING_MODES) + "."  # type: ignore[attr-defined]


def _socket_buffer(text: str) -> int | None:
    if text.strip().lower() in _OFF:
        return None
    value = int(text)
    if not 4096 <= value <= 64 * 1024 * 1024:
        raise ValueError("must be between 4096 and 67108864 bytes, or 'off'")
    return value


_socket_buffer.coerceDoc = "Bytes, 4096 to 67108864, or 'off'."  # type: ignore[attr-defined]


EXAMPLES = """
examples:
  twistd -n filerelay --port 9021
  twistd -n filerelay --port tcp:9021:interface=127.0.0.1 --port tcp6:9021
  twistd -n filerelay --port 9021 --max-per-ip 32 --metrics-port 9102
  twistd -n filerelay --port 9021 --log-format json --logfile=filerelay.log
"""


class Options(usage.Options):
    synopsis = "[--port PORT]... [options]"
    longdesc = (
        "Relay files between a sender and a receiver that share a short code. "
        "The relay stores nothing: it pairs the two connections and forwards "
        "bytes with backpressure. SIGTERM or SIGINT drains paired transfers, "
        "then exits 0."
    )

    def getUsage(self, width: int | None = None) -> str:
        # usage.Options word-wraps longdesc, which would run the examples
        # together; they go after it as written.
        return super().getUsage(width) + EXAMPLES

    # The one place where the relay's defaults are set. A doc with no default
    # has no final full stop: usage.Options adds ". " before the coercer's doc.
    optParameters = [
        ["handshake-timeout", None, 30.0, "Close connections that have not registered within this many seconds.", _seconds],
        ["wait-timeout", None, 3600.0, "How long a sender may wait for its receiver, in seconds.", _seconds],
        ["drain-timeout", None, 60.0, "On shutdown, how long paired transfers may go on, in seconds.", _seconds],
        [
            "idle-timeout",
            None,
            300.0,
            "Cut a paired transfer once no byte has moved either way for this many seconds.",
            _seconds_or_off,
        ],
        [
            "max-connections",
            None,
            None,
            "Refuse new connections (ERROR relay busy) while this many are open. Off unless given",
            _count_or_off,
        ],
        [
            "max-per-ip",
            None,
            None,
            "Refuse new connections (ERROR relay busy) from an address that already has this many open. "
            "Off unless given",
            _count_or_off,
        ],
        [
            "max-failed-codes",
            None,
            10,
            "After this many claims of unknown or in-use codes from one address within a minute, "
            "refuse its claims (ERROR too many attempts) until that minute is over.",
            _count_or_off,
        ],
        [
            "forwarding",
            None,
            "auto",
            "How paired transfers move bytes. splice: inside the kernel with splice(2), zero copy (Linux only); "
            "copy: through the relay's memory, with Twisted producers and consumers (any platform); "
            "auto: splice where available, else copy",
            _forwarding,
        ],
        [
            "socket-buffer",
            None,
            None,
            "Cap each client socket's kernel send and receive buffers (SO_SNDBUF, SO_RCVBUF) at this many bytes, "
            "so a stalled transfer also holds bounded kernel memory. Off (the kernel's autotuning) unless given",
            _socket_buffer,
        ],
        [
            "log-format",
            None,
            "text",
            "text: twistd's own log only; json: also one JSON object per line on standard output "
            "while the relay runs (or use twistd --logger=twisted_relay.logs.json_observer).",
            _log_format,
        ],
        [
            "metrics-port",
            None,
            None,
            "Serve Prometheus metrics at /metrics. A bare number binds to 127.0.0.1 only; give an endpoint "
            "such as tcp:9102:interface=0.0.0.0 to serve other hosts. Off unless given.",
            normalize_metrics_port,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []

    def opt_port(self, value: str) -> None:
        """Where to listen: a number, :NUMBER or an endpoint such as tcp:9021:interface=127.0.0.1 (repeatable; default tcp:9021)."""  # noqa: E501 - usage.Options prints docstrings as they are
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

    Once drained, it clears the signal twistd would otherwise re-raise
    after the reactor stops, so a relay stopped by SIGTERM or SIGINT exits
    0: the stop was asked for and carried out in order, and supervisors
    and scripts should see success. A relay killed mid-drain by a second
    signal or SIGKILL does not get here.
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
            self._clear_exit_signal()
            return succeed(None)
        self._log.info(
            "draining {transfers} transfers for up to {timeout}s",
            transfers=len(self.factory.splices),
            timeout=self.drain_timeout,
        )
        idle = self.factory.when_idle()
        cutoff = self.clock.callLater(self.drain_timeout, self._cut)
        idle.addBoth(lambda result: cutoff.cancel() if cutoff.active() else None)
        idle.addCallback(lambda result: self._clear_exit_signal())
        self._cut_on_second_signal()
        return idle

    def _cut_on_second_signal(self) -> None:
        """
        While draining, SIGINT or SIGTERM again means "stop now": cut what
        is left instead of waiting out the drain. (The reactor's own handler
        would only try to stop a reactor already stopping, and log an error.)
        """
        call_from_thread = getattr(self.clock, "callFromThread", None)
        if call_from_thread is None or threading.current_thread() is not threading.main_thread():
            return

        def again(signum: int, frame: object) -> None:
            self._log.info("signal {signum} while draining: cutting now", signum=signum)
            call_from_thread(self._cut)

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, again)

    def _clear_exit_signal(self) -> None:
        # twistd re-raises the stopping signal if the reactor recorded one
        # (twisted.application.app, _ISupportsExitSignalCapturing); there is
        # no public way to say the stop was orderly, so reset that record.
        if _ISupportsExitSignalCapturing.providedBy(self.clock):
            self.clock._exitSignal = None  # type: ignore[attr-defined]

    def _cut(self) -> None:
        self._log.info("drain over: cutting {n} connections still open", n=len(self.factory.connections))
        for splice in list(self.factory.splices):
            splice.abort(SHUTDOWN)
        for proto in list(self.factory.connections):
            proto.transport.abortConnection()


class LogObserverService(MultiService):
    """
    Runs its children with one more log observer: added before any child
    starts, removed only once every child has stopped, so the last events of
    a drain are still written. twistd has chosen its own observer before any
    service starts; this is how an option of ours adds another.
    """

    def __init__(self, observer: ILogObserver, publisher: LogPublisher = globalLogPublisher) -> None:
        super().__init__()
        self.observer = observer
        self.publisher = publisher

    def startService(self) -> None:
        self.publisher.addObserver(self.observer)
        super().startService()

    def stopService(self) -> Deferred[object]:
        d: Deferred[object] = super().stopService()

        def remove(result: object) -> object:
            self.publisher.removeObserver(self.observer)
            return result

        return d.addBoth(remove)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the relay: one listening service per --port, the drainer, the
    metrics site if asked for, all under a service that adds the JSON log
    observer if asked for.
    """
    if reactor is None:
        from twisted.internet import reactor  # noqa: the app's one entry point
    factory = RelayFactory(
        clock=reactor,
        handshake_timeout=options["handshake-timeout"],
        wait_timeout=options["wait-timeout"],
        idle_timeout=options["idle-timeout"],
        max_connections=options["max-connections"],
        max_per_ip=options["max-per-ip"],
        max_failed_codes=options["max-failed-codes"],
        kernel_forwarding=options["forwarding"] != "copy",
        socket_buffer=options["socket-buffer"],
    )
    top = LogObserverService(json_observer()) if options["log-format"] == "json" else MultiService()
    DrainingService(factory, reactor, options["drain-timeout"]).setServiceParent(top)
    for description in options["ports"]:
        strports.service(with_backlog(description), factory, reactor=reactor).setServiceParent(top)
    if options["metrics-port"] is not None:
        # Stops listening with the relay's ports; a scrape in progress then
        # ends with the reactor. Nothing in the site holds relay state.
        site = metrics_site(factory.metrics.registry)
        strports.service(options["metrics-port"], site, reactor=reactor).setServiceParent(top)
    return top
