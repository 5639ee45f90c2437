"""
A recording TCP proxy, run as its own process by the tests:

    python recording_proxy.py TARGET_PORT RECORD_DIR

Listens on a kernel-chosen 127.0.0.1 port (printed on stdout), forwards
each connection to 127.0.0.1:TARGET_PORT, and appends every byte it
carries to RECORD_DIR/<n>-up (client to relay) and <n>-down. It is what
someone tapping the line, or running the relay, would see.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path


def pipe(source: socket.socket, sink: socket.socket, record: Path) -> None:
    with record.open("ab") as out:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            out.write(data)
            out.flush()
            try:
                sink.sendall(data)
            except OSError:
                break
    for s in (sink, source):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main() -> None:
    target, folder = int(sys.argv[1]), Path(sys.argv[2])
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    for n in range(1000):
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", target))
        for a, b, name in ((client, upstream, "up"), (upstream, client, "down")):
            threading.Thread(target=pipe, args=(a, b, folder / f"{n}-{name}"), daemon=True).start()


if __name__ == "__main__":
    main()
