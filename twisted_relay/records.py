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

#: Largest frame length (type byte and value) a peer accepts once keys are
#: confirmed.
MAX_SEALED_FRAME = 1 + MAX_RECORD + TAG_SIZE

_NONCE = struct.Struct("!IQ")  # 4 zero bytes, then a 64-bit counter
_FRAME_HEADER = struct.Struct("!IB")  # as in twisted_relay.wire
_END = struct.Struct("!Q")


class Corrupted(ValueError):
    """A record failed to authenticate: tampered, reordered, dropped or forged."""


class _Direction:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("AES-256-GCM takes a 32-byte key")
        self._aead = AESGCM(key)
        self.counter = 0
        # Reused for every record: a fresh megabyte-sized buffer per record
        # made glibc map and unmap pages for each one, which cost more CPU
        # than the encryption itself.
        self._buffer = bytearray()

    def _scratch(self, size: int) -> memoryview:
        if len(self._buffer) < size:
            self._buffer = bytearray(size)  # replaced, never resized: views may be alive
        return memoryview(self._buffer)[:size]

    def _next_nonce(self) -> bytes:
        nonce = _NONCE.pack(0, self.counter)
        self.counter += 1
        return nonce


class Sealer(_Direction):
    """Seals the records one side sends, in order."""

    def seal(self, ftype: int, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._next_nonce(), plaintext, bytes((ftype,)))

    def seal_frame(self, ftype: int, plaintext: bytes | memoryview) -> bytes:
        """
        The next record as a whole frame, header and sealed value in one
        bytes object: one allocation, and one buffer the transport can send
        without joining pieces.
        """
        size = _FRAME_HEADER.size + len(plaintext) + TAG_SIZE
        frame = self._scratch(size)
        _FRAME_HEADER.pack_into(frame, 0, size - 4, ftype)
        self._aead.encrypt_into(self._next_nonce(), plaintext, bytes((ftype,)), frame[_FRAME_HEADER.size :])
        return bytes(frame)


class Opener(_Direction):
    """Opens the records one side receives, in order."""

    def open(self, ftype: int, ciphertext: bytes | memoryview) -> memoryview:
        """
        The plaintext of the next record, as a view of a buffer that the
        following call reuses: copy it (C{bytes(view)}) to keep it.

        @raise Corrupted: the record is not the next one the peer sealed.
        """
        if len(ciphertext) < TAG_SIZE:
            raise Corrupted("a record is shorter than its tag")
        plaintext = self._scratch(len(ciphertext) - TAG_SIZE)
        try:
            self._aead.decrypt_into(self._next_nonce(), ciphertext, bytes((ftype,)), plaintext)
        except InvalidTag:
            raise Corrupted("a record failed authentication") from None
        return plaintext


def encode_end(total: int) -> bytes:
    return _END.pack(total)


def decode_end(value: bytes | memoryview) -> int:
    if len(value) != _END.size:
        raise Corrupted("bad end-of-stream record")
    return _END.unpack(value)[0]
