"""
Which file names from a peer the receiver will write.

The name in a header comes from the other end of the internet; only a plain
base name is accepted, so no name can reach outside the output folder or hide
itself from a directory listing's reader.
"""

from __future__ import annotations

import unicodedata

#: Most file systems refuse longer names.
MAX_NAME_BYTES = 255


class BadName(ValueError):
    """The name is refused; the message says why, for both users."""


_HIDDEN_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")


def check_part(part: str) -> str:
    """
    Return C{part}, one name inside a received folder, if it is safe, else
    raise L{BadName}. Looser than L{check_name} in one way only: it may
    start with a dot (C{.gitignore}), though it may not be C{.} or C{..}.
    """
    if part in ("", ".", ".."):
        raise BadName("a name inside a folder is empty, '.' or '..'")
    if "/" in part or "\\" in part:
        raise BadName(f"{part!r} contains a path separator")
    if any(unicodedata.category(ch) in _HIDDEN_CATEGORIES for ch in part):
        raise BadName(f"{part!r} contains a control character or is not valid Unicode")
    return part


def check_name(name: str) -> str:
    """
    Return C{name} if it is a safe base name, else raise L{BadName}.

    Refused: empty, anything starting with C{.} (so C{..}, hidden files
    and our own temporary names), anything with C{/} or C{\\}, NUL or any
    control or format character (which could rewrite a terminal or hide
    part of the name), or more than 255 UTF-8 bytes.
    """
    if not name:
        raise BadName("empty file name")
    if name.startswith("."):
        # Covers "." and "..", hidden files a user would not notice, and our
        # own ".filerelay-*.part" temporary names.
        raise BadName("file names starting with '.' are refused")
    if "/" in name or "\\" in name:
        raise BadName("file name contains a path separator")
    for ch in name:
        if unicodedata.category(ch) in _HIDDEN_CATEGORIES:
            raise BadName("file name contains a control character")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise BadName("file name is not valid Unicode") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise BadName("file name is too long")
    return name
