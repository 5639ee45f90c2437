"""
What the relay logs, and the observer that writes it as JSON.

Each connection logs one event per step of its life through
L{twisted.logger}: opened, registered or claimed, paired, refused, closed.
Every such event carries the same fields, named here so the relay, the
metrics, the tests and the README use one vocabulary; the text of the event
is for people, the fields are the data. The code's words never reach the
relay, and no log event carries a code: only its channel number, which is
not secret.

With C{--log-format json} the service adds L{json_observer} while it runs;
C{twistd --logger=twisted_relay.logs.json_observer} uses it from the first
line twistd writes to the last.
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.internet.interfaces import IAddress
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
)

# Fields of every lifecycle event.

#: Which step: one of L{LIFECYCLE_EVENTS}.
EVENT = "event"
#: The client's address as C{host:port} (C{[host]:port} for IPv6).
PEER = "peer"
#: C{"sender"}, C{"receiver"}, or C{None} before the client chose.
ROLE = "role"
#: The channel registered or claimed, or C{None}. Never the code's words.
CHANNEL = "channel"
#: Bytes relayed sender -> receiver in this connection's transfer.
BYTES_UP = "bytes_up"
#: Bytes relayed receiver -> sender in this connection's transfer.
BYTES_DOWN = "bytes_down"
#: Seconds since the connection was opened.
DURATION = "duration"
#: How it ended (L{REFUSED}, L{CLOSED}); C{None} on earlier steps.
OUTCOME = "outcome"

#: On C{closed} events: how the transfer's bytes moved when it ended,
#: C{"splice"} (in the kernel) or C{"copy"} (through the relay's memory);
#: C{None} for a connection that was never paired.
FORWARDING = "forwarding"

LIFECYCLE_FIELDS = (EVENT, PEER, ROLE, CHANNEL, BYTES_UP, BYTES_DOWN, DURATION, OUTCOME)

# Values of EVENT.

OPENED = "opened"
REGISTERED = "registered"
CLAIMED = "claimed"
PAIRED = "paired"
#: The relay sent an ERROR frame and is closing; the event also has a
#: C{message} field with the frame's text.
REFUSED = "refused"
CLOSED = "closed"

LIFECYCLE_EVENTS = (OPENED, REGISTERED, CLAIMED, PAIRED, REFUSED, CLOSED)

# Values of OUTCOME. A refusal's outcome is its error code in kebab case
# (L{error_outcome}); a transfer's is one of these, also the labels of the
# transfers-finished metric.

SENDER_CLOSED = "sender-closed"
RECEIVER_CLOSED = "receiver-closed"
IDLE_TIMEOUT = "idle-timeout"
SHUTDOWN = "shutdown"
TRANSFER_OUTCOMES = (SENDER_CLOSED, RECEIVER_CLOSED, IDLE_TIMEOUT, SHUTDOWN)

#: Outcome of a connection that closed before pairing and without an error.
CLIENT_CLOSED = "client-closed"

LOG_FORMATS = ("text", "json")


def error_outcome(name: str) -> str:
    """The outcome for a refusal with the error code called C{name}
    (C{"UNKNOWN_CODE"} -> C{"unknown-code"})."""
    return name.lower().replace("_", "-")


def format_peer(addr: IAddress | None) -> str:
    """C{host:port} for IP addresses, C{[host]:port} for IPv6, else C{str}."""
    host = getattr(addr, "host", None)
    port = getattr(addr, "port", None)
    if not isinstance(host, str) or port is None:
        return str(addr)
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def json_observer(out: IO[str] | None = None) -> ILogObserver:
    """
    One JSON object per line for each event at C{info} or above, on C{out}
    (default: the process's original standard output).

    Usable as twistd's C{--logger}. The default is C{sys.__stdout__}, not
    C{sys.stdout}, because once twistd has begun logging C{sys.stdout} is a
    file that turns writes into log events: an observer writing there would
    feed itself.
    """
    stream = out if out is not None else sys.__stdout__
    assert stream is not None, "no standard output to log to"
    return FilteringLogObserver(
        jsonFileLogObserver(stream, recordSeparator=""),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)],
    )
