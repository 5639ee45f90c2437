"""
How the receiver proves it holds the code's words before any file byte moves.

This is the one place that knows how peers authenticate each other (a later
version replaces it with a password-authenticated key exchange).

The sender sends a random challenge; the receiver answers with an HMAC keyed
by the words over the channel and the challenge; the sender compares in
constant time. The relay sees challenge and proof but never the words.
Limitation, stated in docs/protocol.rst: a relay operator who records both
could try every word pair offline (about 2**21 HMACs for two words); only
the key exchange of the next protocol version closes that.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from twisted_relay.codes import Code

CHALLENGE_SIZE = 32
_CONTEXT = b"twisted_relay proof v1\x00"


def make_challenge() -> bytes:
    return secrets.token_bytes(CHALLENGE_SIZE)


def prove(code: Code, challenge: bytes) -> bytes:
    key = hashlib.sha256(_CONTEXT + code.secret.encode("utf-8")).digest()
    message = str(code.channel).encode("ascii") + b"\x00" + challenge
    return hmac.new(key, message, hashlib.sha256).digest()


def verify(code: Code, challenge: bytes, proof: bytes) -> bool:
    """Constant-time: a wrong proof takes as long as a right one."""
    return hmac.compare_digest(prove(code, challenge), proof)
