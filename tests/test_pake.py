"""
Key agreement from the code: the same code gives matching keys on both
sides; anything else gives keys that fail confirmation.
"""

from __future__ import annotations

import pytest

from twisted_relay.codes import Code
from twisted_relay.pake import RECEIVER, SENDER, BadKeyExchange, KeyExchange, derive_keys

CODE = Code(7, ("orbit", "tulip"))


def run(sender_code: Code, receiver_code: Code):
    s, r = KeyExchange(sender_code, SENDER), KeyExchange(receiver_code, RECEIVER)
    s_msg, r_msg = s.start(), r.start()
    return s.finish(r_msg), r.finish(s_msg)


def test_same_code_same_keys() -> None:
    """With the same code, each side's send key is the other's receive key and confirmations verify."""
    s, r = run(CODE, CODE)
    assert s.send_key == r.receive_key and r.send_key == s.receive_key
    assert s.send_key != s.receive_key
    assert s.confirms(r.confirmation) and r.confirms(s.confirmation)
    assert len({s.send_key, s.receive_key, s.confirmation, r.confirmation}) == 4


@pytest.mark.parametrize(
    "other",
    [Code(7, ("orbit", "tulle")), Code(7, ("tulip", "orbit")), Code(8, ("orbit", "tulip")), Code(7, ("orbit",))],
)
def test_any_difference_fails_confirmation(other: Code) -> None:
    """Another word, word order, word count or channel makes both confirmations fail."""
    s, r = run(CODE, other)
    assert not s.confirms(r.confirmation)
    assert not r.confirms(s.confirmation)


def test_fresh_keys_each_run() -> None:
    """Two runs with the same code give different keys (SPAKE2 is randomized)."""
    first, _ = run(CODE, CODE)
    second, _ = run(CODE, CODE)
    assert first.send_key != second.send_key


def test_messages_do_not_contain_the_code() -> None:
    """What goes over the wire carries neither the words nor the code."""
    message = KeyExchange(CODE, SENDER).start()
    assert len(message) == 33
    assert b"orbit" not in message and b"tulip" not in message


@pytest.mark.parametrize("bad", [b"", b"S", b"S" + b"\0" * 31, b"S" + b"\0" * 33, b"A" + b"\0" * 32, b"S" + b"\xff" * 32])
def test_malformed_message_refused(bad: bytes) -> None:
    """A message of the wrong size, side or group is refused as malformed, not crashed on."""
    with pytest.raises(BadKeyExchange):
        KeyExchange(CODE, RECEIVER).finish(bad)


@pytest.mark.parametrize("position", range(33))
def test_any_flipped_bit_is_refused_or_mismatched(position: int) -> None:
    """A message altered in transit is either refused as malformed or gives keys that fail confirmation."""
    sender, receiver = KeyExchange(CODE, SENDER), KeyExchange(CODE, RECEIVER)
    message, reply = sender.start(), receiver.start()
    altered = bytearray(message)
    altered[position] ^= 0x01
    try:
        keys = receiver.finish(bytes(altered))
    except BadKeyExchange:
        return
    assert not keys.confirms(sender.finish(reply).confirmation)


def test_reflected_message_refused() -> None:
    """A relay echoing our own message back is refused."""
    exchange = KeyExchange(CODE, SENDER)
    with pytest.raises(BadKeyExchange):
        exchange.finish(exchange.start())


def test_derivation_is_role_symmetric() -> None:
    """Deriving from one secret as sender and as receiver gives mirrored keys."""
    s, r = derive_keys(b"k" * 32, SENDER), derive_keys(b"k" * 32, RECEIVER)
    assert (s.send_key, s.receive_key) == (r.receive_key, r.send_key)
    assert s.expected_confirmation == r.confirmation
