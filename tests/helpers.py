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
    d.addBoth(results.append)
    assert not results, f"{d!r} already has {results[0]!r}"
    # Put back what we would have swallowed, should it fire later.
    d.callbacks.pop() if d.callbacks else None
