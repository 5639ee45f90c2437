"""
How much the relay lets one address, and everyone together, ask of it.

Two plain objects the factory owns, with no transports inside, so they are
tested without a protocol:

  - L{ConnectionLimits} caps open connections, in total and per address;
  - L{FailedClaims} counts failed channel claims per address in a fixed
    window on an injected clock, and says when an address must wait.

Addresses are counted by their C{host} (C{addr.host} of an L{IPv4Address} or
L{IPv6Address}), never by C{addr[0]}: that is what breaks
L{twisted.protocols.policies.LimitConnectionsByPeer} on modern addresses. A
peer without a host (a UNIX socket) is counted in the total only.
"""

from __future__ import annotations

import ipaddress

from collections import OrderedDict

from twisted.internet.interfaces import IAddress, IReactorTime

#: Label values naming each limit, in logs and metrics; the option names.
MAX_CONNECTIONS = "max-connections"
MAX_PER_IP = "max-per-ip"
MAX_FAILED_CODES = "max-failed-codes"

#: The window, in seconds, over which failed claims are counted.
FAILED_CLAIMS_WINDOW = 60.0

#: Most addresses whose failed claims are remembered at once. Beyond it the
#: oldest windows are forgotten first, so memory stays bounded whatever the
#: number of addresses an attacker has.
MAX_TRACKED_ADDRESSES = 10_000


def peer_host(addr: IAddress | None) -> str | None:
    """
    The key limits count C{addr} under, or C{None} if it has none. An IPv6
    client counts by its /64, since one user usually holds a whole /64 and
    could otherwise open a fresh address per attempt; an IPv4 client
    reaching a dual-stack port (C{::ffff:a.b.c.d}) counts as itself.
    """
    host = getattr(addr, "host", None)
    if not isinstance(host, str):
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class ConnectionLimits:
    """
    Open connections, in total and per host. L{admit} counts a connection
    or names the limit it would break; L{release} uncounts an admitted one.
    A refused connection is never counted, so refusals cannot lock anyone
    out for longer than the connections already open.

    @ivar max_connections: open connections allowed at once; C{None}: no cap.
    @ivar max_per_host: open connections allowed per host; C{None}: no cap.
    """

    def __init__(self, max_connections: int | None = None, max_per_host: int | None = None) -> None:
        self.max_connections = max_connections
        self.max_per_host = max_per_host
        self.total = 0
        self._per_host: dict[str, int] = {}

    def admit(self, host: str | None) -> str | None:
        """
        Count a new connection from C{host}, or return the name of the limit
        it would exceed (L{MAX_CONNECTIONS} or L{MAX_PER_IP}) without
        counting it.
        """
        if self.max_connections is not None and self.total >= self.max_connections:
            return MAX_CONNECTIONS
        if host is not None:
            count = self._per_host.get(host, 0)
            if self.max_per_host is not None and count >= self.max_per_host:
                return MAX_PER_IP
            self._per_host[host] = count + 1
        self.total += 1
        return None

    def release(self, host: str | None) -> None:
        """An admitted connection from C{host} has closed."""
        self.total -= 1
        if host is not None:
            count = self._per_host.pop(host) - 1
            if count:
                self._per_host[host] = count

    def open_from(self, host: str) -> int:
        """How many admitted connections C{host} has open."""
        return self._per_host.get(host, 0)


class FailedClaims:
    """
    Failed claims (unknown channel, channel in use) per host, in a fixed
    window of L{window} seconds that starts with the host's first failure.
    Once a host has failed L{limit} times in its window it is L{blocked}
    until the window ends; blocked claims are not counted, so waiting out
    the window always works.

    No timers: windows are kept in the order they started, so expired ones
    are dropped from the front whenever the table is used, and the table
    never holds more than L{max_hosts} hosts.

    @ivar limit: failures allowed per window; C{None}: no limit, nothing kept.
    """

    def __init__(
        self,
        clock: IReactorTime,
        limit: int | None = 10,
        window: float = FAILED_CLAIMS_WINDOW,
        max_hosts: int = MAX_TRACKED_ADDRESSES,
    ) -> None:
        self._clock = clock
        self.limit = limit
        self.window = window
        self.max_hosts = max_hosts
        # host -> [window start, failures], oldest window first
        self._windows: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def blocked(self, host: str | None) -> bool:
        """May C{host} not claim a channel now?"""
        if self.limit is None or host is None:
            return False
        self._forget_expired(self._clock.seconds())
        entry = self._windows.get(host)
        return entry is not None and entry[1] >= self.limit

    def record_failure(self, host: str | None) -> None:
        """C{host} claimed a channel that was unknown or in use."""
        if self.limit is None or host is None:
            return
        now = self._clock.seconds()
        self._forget_expired(now)
        entry = self._windows.get(host)
        if entry is not None:
            entry[1] += 1
            return
        self._windows[host] = [now, 1]
        if len(self._windows) > self.max_hosts:
            self._windows.popitem(last=False)

    def _forget_expired(self, now: float) -> None:
        windows = self._windows
        while windows:
            start = next(iter(windows.values()))[0]
            if now - start < self.window:
                return
            windows.popitem(last=False)
