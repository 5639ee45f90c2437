"""
Tests for L{twisted_relay.filenames.check_name}: which names a receiver will
write into its output folder.
"""

from __future__ import annotations

import json

import pytest

from twisted_relay.filenames import MAX_NAME_BYTES, BadName, check_name


@pytest.mark.parametrize(
    "name",
    [
        "report.pdf",
        "a",
        "README",
        "a..",
        "my holiday photo.jpg",
        " leading and trailing ",
        "résumé.txt",
        "日本語のファイル.txt",
        "Ελληνικά",
        "emoji 🎉.png",
        "name-with_symbols!@#$%^&()[]{};,+=~'.tar.gz",
        "e\u0301",  # combining accent
        "non\u00a0breaking space",
        "x" * MAX_NAME_BYTES,
        "é" * (MAX_NAME_BYTES // 2) + "a",  # exactly 255 bytes
    ],
)
def test_accepts_plain_names(name):
    """Ordinary, non-ASCII and spaced base names are accepted unchanged."""
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "...",
        "..a",
        ".bashrc",
        ".filerelay-abc.part",
    ],
)
def test_rejects_empty_and_dot_names(name):
    """The empty name and names starting with a dot (., .., hidden files, our temp names) are refused."""
    with pytest.raises(BadName):
        check_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "a/b",
        "/etc/passwd",
        "../secret",
        "a/",
        "/",
        "..\\x",
        "a\\b",
        "C:\\Windows\\evil.dll",
        "\\\\server\\share",
    ],
)
def test_rejects_path_separators(name):
    """Names with / or \\ are refused, so nothing can land outside the output folder."""
    with pytest.raises(BadName):
        check_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "a\x00b",
        "\x00",
        "line\nbreak",
        "carriage\rreturn",
        "tab\there",
        "\x1b[31mred",
        "bell\x07",
        "del\x7f",
        "c1\x85next-line",
        "invoice\u202efdp.exe",  # right-to-left override
        "zero\u200bwidth",  # zero-width space (format)
        "soft\u00adhyphen",
        "bom\ufeff",
        "line\u2028separator",
        "para\u2029separator",
        "lone\udc80surrogate",
    ],
)
def test_rejects_control_and_format_characters(name):
    """Names with NUL, control, format or line-separator characters are refused, so they cannot rewrite a terminal or hide part of the name."""
    with pytest.raises(BadName):
        check_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "x" * (MAX_NAME_BYTES + 1),
        "é" * ((MAX_NAME_BYTES + 1) // 2),  # 256 bytes, only 128 characters
        "日" * 86,  # 258 bytes, 86 characters
        "🎉" * 64,  # 256 bytes, 64 characters
    ],
)
def test_rejects_names_over_255_utf8_bytes(name):
    """Names longer than 255 bytes of UTF-8 are refused, even when they have fewer characters."""
    assert len(name.encode("utf-8")) > MAX_NAME_BYTES
    with pytest.raises(BadName):
        check_name(name)


def test_rejects_surrogate_from_json_escape():
    """A lone surrogate smuggled in through a JSON \\ud800 escape in the header is refused."""
    name = json.loads('"a\\ud800b"')
    with pytest.raises(BadName):
        check_name(name)


def test_name_not_normalized():
    """Accepted names are returned exactly as given, not Unicode-normalized."""
    decomposed = "e\u0301.txt"
    assert check_name(decomposed) == decomposed
    assert check_name(decomposed) != "\u00e9.txt"


def test_bad_name_is_value_error_with_reason():
    """BadName is a ValueError whose message says what is wrong."""
    assert issubclass(BadName, ValueError)
    with pytest.raises(BadName) as info:
        check_name("a/b")
    assert str(info.value)


@pytest.mark.parametrize("part", [".gitignore", "notes.txt", "été"])
def test_parts_inside_folders_may_start_with_a_dot(part):
    """Inside a folder, ordinary names and dotfiles are accepted."""
    from twisted_relay.filenames import check_part

    assert check_part(part) == part


@pytest.mark.parametrize("part", ["", ".", "..", "a\\b", "a/b", "bell\x07", "x\u202ey", "\udcff"])
def test_bad_parts_inside_folders_refused(part):
    """Inside a folder, empty, dot, separator, control-character and non-Unicode names are refused."""
    from twisted_relay.filenames import check_part

    with pytest.raises(BadName):
        check_part(part)
