"""
The relay's limits as plain objects on a fake clock: connection caps in
total and per address, and failed claims per address per minute.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock

from twisted_relay.limits import (
    FAILED_CLAIMS_WINDOW,
    MAX_CONNECTIONS,
    MAX_PER_IP,
    ConnectionLimits,
    FailedClaims,
    peer_host,
)


def test_peer_host_of_ip_addresses() -> None:
    """Limits count IPv4 peers by address and IPv6 peers by /64, ignoring the port."""
    assert peer_host(IPv4Address("TCP", "192.0.2.1", 5000)) == "192.0.2.1"
    assert peer_host(IPv6Address("TCP", "2001:db8::1", 5000)) == "2001:db8::/64"
    assert peer_host(IPv6Address("TCP", "2001:db8::ffff:1", 5000)) == "2001:db8::/64"
    assert peer_host(IPv6Address("TCP", "2001:db8:0:1::1", 5000)) == "2001:db8:0:1::/64"


def test_ipv4_on_a_dual_stack_port_counts_as_ipv4() -> None:
    """An IPv4 client seen as ::ffff:a.b.c.d shares its count with the plain IPv4 address."""
    assert peer_host(IPv6Address("TCP", "::ffff:192.0.2.1", 5000)) == "192.0.2.1"


def test_one_ipv6_prefix_shares_the_per_address_limit() -> None:
    """Addresses of one /64 cannot each take a full per-address allowance."""
    limits = ConnectionLimits(max_connections=None, max_per_host=2)
    hosts = [peer_host(IPv6Address("TCP", f"2001:db8::{n}", 5000)) for n in (1, 2, 3)]
    assert limits.admit(hosts[0]) is None
    assert limits.admit(hosts[1]) is None
    assert limits.admit(hosts[2]) == "max-per-ip"


def test_peer_host_of_other_addresses() -> None:
    """A peer without a host (a UNIX socket, or none at all) has no per-address count."""
    assert peer_host(UNIXAddress(b"/tmp/sock")) is None
    assert peer_host(None) is None


# ConnectionLimits


def test_total_limit() -> None:
    """Connections are admitted up to the total cap, then refused as max-connections."""
    limits = ConnectionLimits(max_connections=2)
    assert limits.admit("a") is None
    assert limits.admit("b") is None
    assert limits.admit("c") == MAX_CONNECTIONS
    assert limits.total == 2


def test_release_makes_room() -> None:
    """A closed connection frees its place under both caps."""
    limits = ConnectionLimits(max_connections=1, max_per_host=1)
    limits.admit("a")
    limits.release("a")
    assert limits.admit("a") is None


def test_per_host_limit() -> None:
    """Each host may hold up to the per-host cap; others are still admitted."""
    limits = ConnectionLimits(max_per_host=2)
    assert [limits.admit("a") for _ in range(3)] == [None, None, MAX_PER_IP]
    assert limits.admit("b") is None
    assert limits.open_from("a") == 2


def test_total_limit_checked_first() -> None:
    """When the relay is full, a refusal names the total cap even for a host at its own cap."""
    limits = ConnectionLimits(max_connections=1, max_per_host=1)
    limits.admit("a")
    assert limits.admit("a") == MAX_CONNECTIONS


def test_refusal_counts_nothing() -> None:
    """A refused connection changes no count."""
    limits = ConnectionLimits(max_connections=3, max_per_host=1)
    limits.admit("a")
    for _ in range(5):
        assert limits.admit("a") == MAX_PER_IP
    assert limits.total == 1 and limits.open_from("a") == 1


def test_hosts_with_nothing_open_are_forgotten() -> None:
    """The per-host table only holds hosts with connections open."""
    limits = ConnectionLimits(max_per_host=5)
    for i in range(100):
        host = f"10.0.{i}.1"
        limits.admit(host)
        limits.release(host)
    assert limits._per_host == {}
    assert limits.total == 0


def test_hostless_peers_count_in_total_only() -> None:
    """Peers without a host are never refused per host but count towards the total."""
    limits = ConnectionLimits(max_connections=3, max_per_host=1)
    assert [limits.admit(None) for _ in range(4)] == [None, None, None, MAX_CONNECTIONS]
    limits.release(None)
    assert limits.total == 2


def test_no_caps() -> None:
    """With neither cap set, everything is admitted."""
    limits = ConnectionLimits()
    assert all(limits.admit("a") is None for _ in range(10_000))


# FailedClaims


def test_blocked_after_limit() -> None:
    """An address is blocked once it has failed the limit's number of times in its window."""
    clock = Clock()
    failed = FailedClaims(clock, limit=3)
    for _ in range(2):
        failed.record_failure("a")
    assert not failed.blocked("a")
    failed.record_failure("a")
    assert failed.blocked("a")
    assert not failed.blocked("b")


def test_window_is_fixed_from_first_failure() -> None:
    """The window starts at the first failure and later failures do not extend it."""
    clock = Clock()
    failed = FailedClaims(clock, limit=2)
    failed.record_failure("a")
    clock.advance(FAILED_CLAIMS_WINDOW - 1)
    failed.record_failure("a")
    assert failed.blocked("a")
    clock.advance(1)
    assert not failed.blocked("a")


def test_failures_in_separate_windows_do_not_add_up() -> None:
    """Failures spread over more than a window never block."""
    clock = Clock()
    failed = FailedClaims(clock, limit=2)
    for _ in range(10):
        failed.record_failure("a")
        clock.advance(FAILED_CLAIMS_WINDOW)
    assert not failed.blocked("a")


def test_expired_windows_are_forgotten() -> None:
    """Addresses whose window is over take no memory."""
    clock = Clock()
    failed = FailedClaims(clock, limit=5)
    for i in range(1000):
        failed.record_failure(f"10.1.{i // 256}.{i % 256}")
    assert len(failed) == 1000
    clock.advance(FAILED_CLAIMS_WINDOW)
    failed.blocked("anyone")
    assert len(failed) == 0


def test_table_is_capped() -> None:
    """However many addresses fail, the table holds at most its cap, forgetting the oldest windows first."""
    clock = Clock()
    failed = FailedClaims(clock, limit=1, max_hosts=100)
    failed.record_failure("first")
    for i in range(500):
        clock.advance(0.01)
        failed.record_failure(f"host-{i}")
    assert len(failed) == 100
    assert not failed.blocked("first")
    assert failed.blocked("host-499")


def test_no_limit_keeps_nothing() -> None:
    """With the limit off, nobody is blocked and nothing is remembered."""
    failed = FailedClaims(Clock(), limit=None)
    for _ in range(100):
        failed.record_failure("a")
    assert not failed.blocked("a")
    assert len(failed) == 0


def test_hostless_peers_are_never_blocked() -> None:
    """Failures from peers without a host are not counted."""
    failed = FailedClaims(Clock(), limit=1)
    failed.record_failure(None)
    assert not failed.blocked(None)
    assert len(failed) == 0
