"""
Turning the spoken code into keys only the two peers hold.

Both sides run SPAKE2 (symmetric mode) with the whole code, channel and
words, as the password and the channel bound into the identity; the shared
secret is expanded with HKDF-SHA256 into one key per direction and one
confirmation value per side. Each side sends its confirmation and checks the
other's before any file data moves, so a wrong code is detected by both,
and a relay that sees every byte learns nothing it could test guesses
against offline: each guess costs an online run with the real peer, and the
sender gives up after the first.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_Symmetric
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

from twisted_relay.codes import Code

SENDER = "sender"
RECEIVER = "receiver"

#: A symmetric SPAKE2 message: the side byte "S" and a 32-byte element.
MESSAGE_SIZE = 33
_CONTEXT = b"twisted_relay v2 "


class BadKeyExchange(ValueError):
    """The peer's SPAKE2 message is malformed (not merely from a wrong code)."""


@dataclass(frozen=True)
class SessionKeys:
    """
    What one side derives from the exchange. C{send_key} seals what we
    send, C{receive_key} opens what we receive; C{confirmation} is ours to
    send, C{expected_confirmation} is what an honest peer sends.
    """

    send_key: bytes
    receive_key: bytes
    confirmation: bytes
    expected_confirmation: bytes

    def confirms(self, peer_confirmation: bytes) -> bool:
        """Constant time: a wrong code takes as long to reject as a right one
        takes to accept."""
        return hmac.compare_digest(self.expected_confirmation, peer_confirmation)


def _derive(shared: bytes, label: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_CONTEXT + label.encode()).derive(shared)


def derive_keys(shared: bytes, role: str) -> SessionKeys:
    """Split the SPAKE2 secret into per-direction keys and confirmations."""
    to_receiver = _derive(shared, "sender to receiver")
    to_sender = _derive(shared, "receiver to sender")
    sender_confirms = _derive(shared, "sender confirmation")
    receiver_confirms = _derive(shared, "receiver confirmation")
    if role == SENDER:
        return SessionKeys(to_receiver, to_sender, sender_confirms, receiver_confirms)
    return SessionKeys(to_sender, to_receiver, receiver_confirms, sender_confirms)


class KeyExchange:
    """One side's SPAKE2 run: L{start} once, then L{finish} with the peer's
    message."""

    def __init__(self, code: Code, role: str) -> None:
        if role not in (SENDER, RECEIVER):
            raise ValueError(role)
        self.role = role
        identity = _CONTEXT + b"channel " + str(code.channel).encode("ascii")
        self._spake = SPAKE2_Symmetric(str(code).encode("utf-8"), idSymmetric=identity)

    def start(self) -> bytes:
        return self._spake.start()

    def finish(self, peer_message: bytes) -> SessionKeys:
        """
        @raise BadKeyExchange: the message is not a valid SPAKE2 message (a
            wrong code still gives keys: they just fail confirmation).
        """
        # spake2 checks the length with a bare assert, gone under python -O.
        if len(peer_message) != MESSAGE_SIZE or peer_message[:1] != b"S":
            raise BadKeyExchange("malformed key-exchange message")
        try:
            shared = self._spake.finish(peer_message)
        except (SPAKEError, NotOnCurve, ValueError) as e:
            raise BadKeyExchange(f"bad key-exchange message: {e}") from None
        return derive_keys(shared, self.role)
