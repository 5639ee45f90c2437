"""
Codes that people read to each other over the phone: C{<channel>-<word>-<word>}.

The relay allocates the channel; the sender picks the words here, with
L{secrets}, from a list shipped in the package, and never tells the relay.
Parsing is forgiving about case, spaces and extra hyphens, and strict about
the words, so a typo is caught locally instead of burning the one guess the
code allows.
"""

from __future__ import annotations

import difflib
import secrets
from dataclasses import dataclass
from functools import cache
from importlib import resources

#: How many words a code has unless the sender asks for more.
DEFAULT_WORD_COUNT = 2


class InvalidCode(ValueError):
    """The text cannot be a code; nothing has been sent anywhere."""


@cache
def wordlist() -> tuple[str, ...]:
    """The code words, loaded once from C{twisted_relay/data/words.txt}."""
    text = resources.files("twisted_relay").joinpath("data/words.txt").read_text("utf-8")
    words = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    return words


@cache
def _word_set() -> frozenset[str]:
    return frozenset(wordlist())


@dataclass(frozen=True)
class Code:
    """A parsed code. C{str(code)} is the canonical spoken form."""

    channel: int
    words: tuple[str, ...]

    def __str__(self) -> str:
        return "-".join([str(self.channel), *self.words])

    @property
    def secret(self) -> str:
        """The part the relay never sees."""
        return "-".join(self.words)


def make_code(channel: int, word_count: int = DEFAULT_WORD_COUNT) -> Code:
    """A fresh code for C{channel} with C{word_count} random words."""
    if word_count < 1:
        raise ValueError("a code needs at least one word")
    words = wordlist()
    return Code(channel, tuple(secrets.choice(words) for _ in range(word_count)))


def parse_code(text: str) -> Code:
    """
    Read a code as a person typed it: C{"7-orbit-tulip"}, C{" 7 Orbit tulip"}
    and C{"7--orbit-tulip"} are the same code.

    @raise InvalidCode: with a sentence saying what is wrong.
    """
    parts = [p for p in text.replace("-", " ").lower().split() if p]
    if len(parts) < 2:
        raise InvalidCode("a code looks like 7-orbit-tulip: a number, then words")
    head, words = parts[0], tuple(parts[1:])
    if not head.isascii() or not head.isdigit() or head.startswith("0") or len(head) > 9:
        raise InvalidCode(f"a code starts with a number, not {head!r}")
    known = _word_set()
    for word in words:
        if word not in known:
            close = difflib.get_close_matches(word, wordlist(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; check the spelling"
            raise InvalidCode(f"{word!r} is not one of the code words{hint}")
    return Code(int(head), words)
