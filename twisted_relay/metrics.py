"""
The relay's Prometheus metrics, and the web site that serves them.

Each L{RelayFactory} has a L{RelayMetrics} with a L{CollectorRegistry} of its
own (never prometheus_client's global one), so two relays in one process, or
two tests, never share a number.

Nothing here runs per chunk. Gauges are read from the factory when scraped;
counters move on events (a pairing, a transfer's end, a refusal); bytes
relayed are the bytes of finished transfers plus those of running ones,
summed when scraped.

Hazard: L{prometheus_client.twisted.MetricsResource} is a C{WSGIResource}
on the global reactor's thread pool, so collection runs in a pool thread,
while the reactor thread changes what is being read. Everything collected
is therefore either a prometheus_client metric (which locks), or read with
one atomic operation (C{len()} of a container, an C{int} attribute), or a
copy of the set of running transfers taken in a retry loop.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from twisted_relay.limits import MAX_CONNECTIONS, MAX_FAILED_CODES, MAX_PER_IP
from twisted_relay.logs import TRANSFER_OUTCOMES

if TYPE_CHECKING:
    from twisted_relay.relay import RelayFactory
    from twisted_relay.splice import Splice

#: Where the metrics are served on the metrics port.
METRICS_PATH = b"metrics"

LIMITS = (MAX_CONNECTIONS, MAX_PER_IP, MAX_FAILED_CODES)


class RelayMetrics:
    """
    The metrics of one relay factory, in L{registry}.

    @ivar registry: the registry to scrape; nothing else is in it.
    """

    def __init__(self, factory: "RelayFactory") -> None:
        self.registry = CollectorRegistry()
        Gauge(
            "filerelay_open_connections",
            "Client connections open now, including those being refused.",
            registry=self.registry,
        ).set_function(lambda: len(factory.connections))
        Gauge(
            "filerelay_waiting_senders",
            "Senders holding a channel and waiting for their receiver.",
            registry=self.registry,
        ).set_function(lambda: factory.registry.waiting_count)
        Gauge(
            "filerelay_active_transfers",
            "Paired transfers running now.",
            registry=self.registry,
        ).set_function(lambda: len(factory.splices))
        self._pairings = Counter(
            "filerelay_pairings",
            "Receivers paired with a waiting sender.",
            registry=self.registry,
        )
        self._finished = Counter(
            "filerelay_transfers_finished",
            "Paired transfers ended, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self._refused = Counter(
            "filerelay_connections_refused",
            "Connections or claims refused by a limit, by the limit's option name.",
            ["limit"],
            registry=self.registry,
        )
        # Every label value from the start, so dashboards see zeros, not gaps.
        for outcome in TRANSFER_OUTCOMES:
            self._finished.labels(outcome=outcome)
        for limit in LIMITS:
            self._refused.labels(limit=limit)
        self._bytes = _BytesRelayed(factory)
        self.registry.register(self._bytes)

    def paired(self) -> None:
        """A receiver was paired with a waiting sender."""
        self._pairings.inc()

    def transfer_finished(self, splice: "Splice") -> None:
        """C{splice} has ended (both legs gone) and left the factory's set."""
        self._bytes.add_finished(splice.bytes_up + splice.bytes_down)
        self._finished.labels(outcome=splice.outcome or "unknown").inc()

    def refused(self, limit: str) -> None:
        """A connection or a claim was refused because of C{limit}."""
        self._refused.labels(limit=limit).inc()


class _BytesRelayed(Collector):
    """Bytes relayed both ways, counted without touching the hot path."""

    def __init__(self, factory: "RelayFactory") -> None:
        self._factory = factory
        self._finished = 0
        self._lock = threading.Lock()
        self._reported = 0

    def add_finished(self, n: int) -> None:
        self._finished += n  # reactor thread only

    def collect(self) -> Iterable[Metric]:
        total = self._finished + self._running()
        with self._lock:
            # A transfer ending between the two reads above is counted in
            # neither or in both; never let the counter appear to go back.
            total = self._reported = max(total, self._reported)
        yield CounterMetricFamily(
            "filerelay_bytes_relayed", "Bytes forwarded between senders and receivers, both ways.", value=total
        )

    def _running(self) -> int:
        for _ in range(10):
            try:
                # The reactor thread may add or remove a transfer during the
                # copy, which then raises; copy again.
                splices = tuple(self._factory.splices)
            except RuntimeError:
                continue
            return sum(s.bytes_up + s.bytes_down for s in splices)
        return 0


class _Root(Resource):
    """Nothing but L{METRICS_PATH}."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class MetricsSite(Site):
    """A site that does not log each request: a scrape every few seconds
    would otherwise drown the relay's own log."""

    def log(self, request: object) -> None:
        pass


def metrics_site(registry: CollectorRegistry) -> Site:
    """
    A web site serving C{registry} at C{/metrics} through prometheus_client's
    Twisted resource; every other path is not found.
    """
    # Imported here, not at module level: prometheus_client.twisted imports
    # the global reactor, which must not happen before twistd installs one.
    from prometheus_client.twisted import MetricsResource

    root = _Root()
    root.putChild(METRICS_PATH, MetricsResource(registry=registry))
    return MetricsSite(root)
