"""
Fixtures for the end-to-end tests: one real relay per test and the two CLIs
run against it. The helpers behind them live in L{processes}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from twisted_relay import zero_copy

from tests.integration.processes import Clients, Launcher, Relay, start_relay, stop_relay


#: Where os.splice exists, both paths; elsewhere only the portable one.
FORWARDING_PATHS = ("splice", "copy") if zero_copy.AVAILABLE else ("copy",)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """Starts processes under C{tmp_path}; kills any left at the end."""
    launch = Launcher(tmp_path)
    try:
        yield launch
    finally:
        launch.kill_all()


@pytest.fixture(scope="module", params=FORWARDING_PATHS)
def forwarding(request: pytest.FixtureRequest) -> str:
    """Every test that runs a relay runs once per forwarding path, so the
    portable path stays covered where the kernel path is the default."""
    return request.param


@pytest.fixture
def relay(launcher: Launcher, forwarding: str) -> Iterator[Relay]:
    """A real C{twistd -n filerelay} on a kernel-chosen 127.0.0.1 port,
    stopped with SIGTERM and required to exit cleanly."""
    running = start_relay(launcher, forwarding=forwarding)
    yield running
    stop_relay(running)


@pytest.fixture
def clients(relay: Relay, launcher: Launcher) -> Iterator[Clients]:
    """Run C{send} and C{receive} against L{relay}."""
    yield Clients(relay, launcher)
    # Kill client leftovers before the relay is stopped, so its graceful
    # drain has no transfer to wait for.
    for proc in launcher.procs:
        if proc is not relay.proc:
            proc.kill()
