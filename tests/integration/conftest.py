"""
Fixtures for the end-to-end tests: one real relay per test and the two CLIs
run against it. The helpers behind them live in L{processes}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.processes import Clients, Launcher, Relay, start_relay, stop_relay


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """Starts processes under C{tmp_path}; kills any left at the end."""
    launch = Launcher(tmp_path)
    try:
        yield launch
    finally:
        launch.kill_all()


@pytest.fixture
def relay(launcher: Launcher) -> Iterator[Relay]:
    """A real C{twistd -n filerelay} on a kernel-chosen 127.0.0.1 port,
    stopped with SIGTERM and required to exit cleanly."""
    running = start_relay(launcher)
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
