"""
Tests for L{twisted_relay.auth}: the receiver proves it holds the code's
words by answering the sender's random challenge.
"""

from __future__ import annotations

from twisted_relay.auth import CHALLENGE_SIZE, make_challenge, prove, verify
from twisted_relay.codes import Code, wordlist

WORDS = wordlist()
CODE = Code(7, (WORDS[0], WORDS[1]))


def test_proof_matches_spec_test_vector():
    """The proof for 7-acorn-tulip and challenge 00..1f is the one in docs/protocol.rst 6.4, so other implementations interoperate."""
    proof = prove(Code(7, ("acorn", "tulip")), bytes(range(32)))
    assert proof.hex() == "54faf69e1adb30d5b7c1293eef67232422a0c330bd4e93b386c776cc6fd122b1"
    assert verify(Code(7, ("acorn", "tulip")), bytes(range(32)), proof)


def test_right_proof_accepted():
    """A receiver with the right code passes the sender's check."""
    challenge = make_challenge()
    assert verify(CODE, challenge, prove(CODE, challenge)) is True


def test_proof_is_deterministic():
    """The same code and challenge always give the same proof, so both ends agree."""
    challenge = bytes(range(CHALLENGE_SIZE))
    assert prove(CODE, challenge) == prove(Code(7, (WORDS[0], WORDS[1])), challenge)


def test_other_words_rejected():
    """A receiver with the right channel but other words is refused."""
    challenge = make_challenge()
    for words in [(WORDS[0], WORDS[2]), (WORDS[2], WORDS[1]), (WORDS[1], WORDS[0]), (WORDS[0],), (WORDS[0], WORDS[1], WORDS[2])]:
        proof = prove(Code(7, words), challenge)
        assert verify(CODE, challenge, proof) is False, words


def test_other_channel_rejected():
    """The right words with another channel number do not pass."""
    challenge = make_challenge()
    for channel in (8, 70, 17, 1):
        proof = prove(Code(channel, CODE.words), challenge)
        assert verify(CODE, challenge, proof) is False, channel


def test_other_challenge_rejected():
    """A proof made for one challenge is useless against another (no replay)."""
    old, new = make_challenge(), make_challenge()
    assert verify(CODE, new, prove(CODE, old)) is False
    flipped = bytes([new[0] ^ 1]) + new[1:]
    assert verify(CODE, new, prove(CODE, flipped)) is False


def test_malformed_proof_rejected():
    """Empty, truncated, extended or corrupted proofs are refused without error."""
    challenge = make_challenge()
    good = prove(CODE, challenge)
    corrupted = good[:-1] + bytes([good[-1] ^ 0x80])
    for proof in (b"", good[:-1], good + b"\x00", corrupted, b"\x00" * len(good)):
        assert verify(CODE, challenge, proof) is False


def test_proof_does_not_reveal_words():
    """The proof the relay sees does not contain the words or the secret."""
    challenge = make_challenge()
    proof = prove(CODE, challenge)
    for part in (*CODE.words, CODE.secret):
        assert part.encode() not in proof


def test_challenge_size():
    """A challenge is CHALLENGE_SIZE (32) random bytes."""
    assert CHALLENGE_SIZE == 32
    challenge = make_challenge()
    assert isinstance(challenge, bytes)
    assert len(challenge) == CHALLENGE_SIZE


def test_challenge_is_random():
    """Every challenge is different, so old proofs cannot be replayed."""
    challenges = {make_challenge() for _ in range(100)}
    assert len(challenges) == 100
