"""
Progress bars on stderr, for people: only when stderr is a terminal and the
user did not ask for quiet. Drawn by tqdm; stdout is never touched.
"""

from __future__ import annotations

import sys
from typing import IO, Callable

from tqdm import tqdm

Report = Callable[[int, "int | None"], None]


class ProgressBar:
    """
    Turns C{(done, total)} reports into a bar: bytes done, total, rate and
    time left; with an unknown total (a pipe), bytes and rate only. The bar
    is created at the first report, so nothing is drawn before data moves.
    """

    def __init__(self, label: str, stream: IO[str]) -> None:
        self._label = label
        self._stream = stream
        self._bar: tqdm | None = None

    def __call__(self, done: int, total: int | None) -> None:
        if self._bar is None:
            self._bar = tqdm(
                total=total,
                desc=self._label,
                unit="B",
                unit_scale=True,
                unit_divisor=1000,  # so "MB" means 10**6 bytes, as everywhere else
                file=self._stream,
                dynamic_ncols=True,
                mininterval=0.2,
                leave=True,
            )
        self._bar.update(done - self._bar.n)

    def say(self, text: str) -> None:
        """A message that must not break the bar: printed above it."""
        if self._bar is None:
            print(text, file=self._stream, flush=True)
        else:
            tqdm.write(text, file=self._stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress_bar(label: str, quiet: bool, stream: IO[str] | None = None) -> ProgressBar | None:
    """A bar for C{stream} (default stderr) if it is a terminal and not
    C{quiet}; C{None} otherwise."""
    stream = stream or sys.stderr
    if quiet or not stream.isatty():
        return None
    return ProgressBar(label, stream)
