"""
Tests for L{twisted_relay.codes}: the word list, making codes and parsing
codes as people type them.
"""

from __future__ import annotations

import pytest

from twisted_relay import codes
from twisted_relay.codes import DEFAULT_WORD_COUNT, Code, InvalidCode, make_code, parse_code, wordlist

WORDS = wordlist()
W1, W2, W3 = WORDS[0], WORDS[len(WORDS) // 2], WORDS[-1]


# ---------------------------------------------------------------------------
# word list


def test_wordlist_is_large_and_unique():
    """The list offers more than a thousand distinct words, so codes are hard to guess."""
    assert len(WORDS) > 1000
    assert len(set(WORDS)) == len(WORDS)


def test_wordlist_words_are_short_lowercase_letters():
    """Every word is 4 or 5 lowercase ASCII letters, easy to say and type."""
    for word in WORDS:
        assert word.isascii() and word.isalpha() and word.islower(), word
        assert 4 <= len(word) <= 5, word


def test_wordlist_skips_comments():
    """Comment lines in the shipped file are not code words."""
    assert not any(word.startswith("#") or " " in word for word in WORDS)


def test_wordlist_loaded_once():
    """The list is loaded once and shared."""
    assert wordlist() is wordlist()
    assert isinstance(WORDS, tuple)


# ---------------------------------------------------------------------------
# make_code


def test_make_code_default():
    """A new code carries the relay's channel and the default number of words from the list."""
    code = make_code(42)
    assert code.channel == 42
    assert len(code.words) == DEFAULT_WORD_COUNT == 2
    assert all(word in WORDS for word in code.words)


@pytest.mark.parametrize("count", [1, 3, 5])
def test_make_code_word_count(count):
    """A sender asking for more (or fewer) words gets exactly that many, all from the list."""
    code = make_code(7, count)
    assert code.channel == 7
    assert len(code.words) == count
    assert all(word in WORDS for word in code.words)


@pytest.mark.parametrize("count", [0, -1])
def test_make_code_needs_a_word(count):
    """A code with no words is refused."""
    with pytest.raises(ValueError):
        make_code(7, count)


def test_make_code_is_random():
    """Fresh codes use different words each time."""
    secrets_seen = {make_code(1).secret for _ in range(50)}
    assert len(secrets_seen) > 40


def test_make_code_uses_secrets(monkeypatch):
    """Words are picked with the secrets module from the shipped list."""
    seen = []

    def choice(seq):
        seen.append(seq)
        return seq[3]

    monkeypatch.setattr(codes.secrets, "choice", choice)
    code = make_code(9, 3)
    assert code == Code(9, (WORDS[3],) * 3)
    assert all(seq == WORDS for seq in seen) and len(seen) == 3


# ---------------------------------------------------------------------------
# str and secret


def test_str_is_spoken_form():
    """A code is written channel first, then its words, joined by hyphens."""
    code = Code(7, (W1, W2))
    assert str(code) == f"7-{W1}-{W2}"
    assert code.secret == f"{W1}-{W2}"


def test_secret_excludes_channel():
    """The secret part the relay never sees does not contain the channel."""
    code = Code(123, (W1, W2, W3))
    assert code.secret == f"{W1}-{W2}-{W3}"
    assert "123" not in code.secret


# ---------------------------------------------------------------------------
# parse_code


@pytest.mark.parametrize(
    "text",
    [
        f"7-{W1}-{W2}",
        f"7 {W1} {W2}",
        f" 7 {W1.capitalize()} {W2}",
        f"7--{W1}-{W2}",
        f"7-{W1.upper()}-{W2.upper()}",
        f"  7 - {W1} - {W2}  ",
        f"\t7-{W1}-{W2}\n",
        f"7-{W1}-{W2}-",
        f"-7-{W1}-{W2}",
        f"7 -- {W1} -- {W2}",
    ],
)
def test_parse_tolerates_case_spaces_hyphens(text):
    """Codes typed with any case, extra spaces or extra hyphens mean the same code."""
    assert parse_code(text) == Code(7, (W1, W2))


@pytest.mark.parametrize("text", ["", "   ", "---", "7", "7-", " 7 - ", W1, f"{W1}-{W2}"])
def test_parse_rejects_missing_parts(text):
    """A code needs a number and at least one word."""
    with pytest.raises(InvalidCode):
        parse_code(text)


@pytest.mark.parametrize(
    "head",
    [
        "07",
        "0",
        "x7",
        "7x",
        "+7",
        "7.0",
        "1234567890",
        "\uff17",  # fullwidth 7
        "\u0667",  # Arabic-Indic 7
        "\u00b2",  # superscript 2
    ],
)
def test_parse_rejects_bad_channel(head):
    """The channel must be plain digits with no leading zero, at most 9 of them."""
    with pytest.raises(InvalidCode):
        parse_code(f"{head}-{W1}-{W2}")


def test_parse_accepts_nine_digit_channel():
    """The longest channel the relay can issue (9 digits) is accepted."""
    assert parse_code(f"999999999-{W1}-{W2}").channel == 999999999


def test_parse_code_is_order_channel_then_words():
    """A word before the number is not accepted."""
    with pytest.raises(InvalidCode):
        parse_code(f"{W1}-7-{W2}")


@pytest.mark.parametrize("bad", ["zzzzq", "xylophonez", "abc", "hello1"])
def test_parse_rejects_unknown_word_naming_it(bad):
    """A word not in the list is refused locally, and the message names the mistyped word."""
    assert bad not in WORDS
    with pytest.raises(InvalidCode) as info:
        parse_code(f"7-{W1}-{bad}")
    assert bad in str(info.value)
    with pytest.raises(InvalidCode) as info:
        parse_code(f"7-{bad}-{W1}")
    assert bad in str(info.value)


def test_parse_unknown_word_message_is_lowercased_word():
    """A mistyped word in capitals is reported (lowercased) in the message."""
    with pytest.raises(InvalidCode) as info:
        parse_code(f"7-{W1}-ZZZZQ")
    assert "zzzzq" in str(info.value).lower()


def test_invalid_code_is_value_error():
    """InvalidCode is a ValueError, so generic input validation catches it."""
    assert issubclass(InvalidCode, ValueError)


@pytest.mark.parametrize("channel", [1, 9, 10, 57, 999, 123456789])
@pytest.mark.parametrize("count", [1, 2, 4])
def test_round_trip(channel, count):
    """A code printed for the sender parses back to the same code on the receiver."""
    code = make_code(channel, count)
    assert parse_code(str(code)) == code
    assert parse_code(str(code).upper()) == code
