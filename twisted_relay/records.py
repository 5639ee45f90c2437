"""
The sealed records that carry everything between peers once keys are
confirmed: the header, the file data, the end-of-stream mark and the replies.

Each record is one frame whose type says what it holds and whose value is
AES-256-GCM ciphertext. The nonce is a per-direction counter, so a record
that is dropped, repeated or moved fails to open; the frame type is the
associated data, so it cannot be swapped either; and an authenticated END
record closes the stream, so a cut is never mistaken for a finished file.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: GCM's tag: what sealing adds to each record.
TAG_SIZE = 16

#: Largest plaintext in one record; file data is read in chunks this size.
MAX_RECORD = 1024 * 1024

#: Largest frame value a peer accepts once keys are confirmed.
MAX_SEALED_FRAME = 1 + MAX_RECORD + TAG_SIZE

_NONCE = struct.Struct("!IQ")  # 4 zero bytes, then a 64-bit counter
_END = struct.Struct("!Q")


class Corrupted(ValueError):
    """A record failed to authenticate: tampered, reordered, dropped or forged."""


class _Direction:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("AES-256-GCM takes a 32-byte key")
        self._aead = AESGCM(key)
        self.counter = 0

    def _next_nonce(self) -> bytes:
        nonce = _NONCE.pack(0, self.counter)
        self.counter += 1
        return nonce


class Sealer(_Direction):
    """Seals the records one side sends, in order."""

    def seal(self, ftype: int, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._next_nonce(), plaintext, bytes((ftype,)))


class Opener(_Direction):
    """Opens the records one side receives, in order."""

    def open(self, ftype: int, ciphertext: bytes) -> bytes:
        """@raise Corrupted: the record is not the next one the peer sealed."""
        try:
            return self._aead.decrypt(self._next_nonce(), ciphertext, bytes((ftype,)))
        except InvalidTag:
            raise Corrupted("a record failed authentication") from None


def encode_end(total: int) -> bytes:
    return _END.pack(total)


def decode_end(value: bytes) -> int:
    if len(value) != _END.size:
        raise Corrupted("bad end-of-stream record")
    return _END.unpack(value)[0]
