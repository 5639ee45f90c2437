"""
The sealed-record layer: known answers, and detection of every way a
record stream can be altered (tampering, reordering, dropping, swapping
types, replaying).
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from twisted_relay.records import TAG_SIZE, Corrupted, Opener, Sealer, decode_end, encode_end
from twisted_relay.wire import FrameType

KEY = bytes(range(32))
DATA = FrameType.SEALED_DATA
END = FrameType.SEALED_END


def test_gcm_primitive_known_answers() -> None:
    """AES-256-GCM as used here matches the GCM specification's test cases 13 and 14."""
    aead = AESGCM(bytes(32))
    assert aead.encrypt(bytes(12), b"", None).hex() == "530f8afbc74536b9a963b4f1c4cb738b"
    assert aead.encrypt(bytes(12), bytes(16), None).hex() == (
        "cea7403d4d606b6e074ec5d3baf39d18" "d0d1c8a799996bf0265b98b5d48ab919"
    )


def test_record_known_answers() -> None:
    """Fixed key, counter, type and plaintext give fixed ciphertexts (the format is frozen for version 2)."""
    sealer = Sealer(KEY)
    assert sealer.seal(DATA, b"corgis on the beach").hex() == (
        "6dd3c7b9dc5fa3d26688dd5d7d0cf3fcb3203e667371edb12376d58dc3a48313d6c7ab"
    )
    assert sealer.seal(DATA, b"corgis on the beach").hex() == (
        "76b9cd9b2d871071600e25518986589274fc74da838896ba3826da40654e7759a85f01"
    )
    assert sealer.seal(END, encode_end(0)).hex() == "c9712e7db44bdad1b405a87069002ca7032cf49f5812f108"


def test_record_matches_documented_construction() -> None:
    """Record n is AES-256-GCM with nonce = 4 zero bytes + n as a big-endian u64, and the frame type byte as associated data."""
    sealer = Sealer(KEY)
    for n in range(3):
        expected = AESGCM(KEY).encrypt(bytes(4) + n.to_bytes(8, "big"), b"x" * n, bytes([DATA]))
        assert sealer.seal(DATA, b"x" * n) == expected


def test_round_trip_in_order() -> None:
    """Records open in the order they were sealed, each adding one tag."""
    sealer, opener = Sealer(KEY), Opener(KEY)
    records = [sealer.seal(DATA, bytes([i]) * i) for i in range(5)]
    assert [len(r) - TAG_SIZE for r in records] == list(range(5))
    assert [bytes(opener.open(DATA, r)) for r in records] == [bytes([i]) * i for i in range(5)]


def test_whole_frame_matches_record() -> None:
    """seal_frame gives the frame header followed by exactly what seal gives for the same record."""
    framed, plain = Sealer(KEY), Sealer(KEY)
    for payload in (b"", b"abc", bytes(70_000)):
        frame = framed.seal_frame(DATA, memoryview(payload))
        record = plain.seal(DATA, payload)
        assert frame == (len(record) + 1).to_bytes(4, "big") + bytes([DATA]) + record


def test_opened_view_is_reused() -> None:
    """open returns a view that the next open overwrites (callers copy what they keep)."""
    sealer, opener = Sealer(KEY), Opener(KEY)
    first = opener.open(DATA, sealer.seal(DATA, b"aaaa"))
    kept = bytes(first)
    opener.open(DATA, sealer.seal(DATA, b"bbbb"))
    assert kept == b"aaaa" and bytes(first) == b"bbbb"


def test_flipped_bit_detected() -> None:
    """Any single flipped bit in a record makes it fail to open."""
    record = Sealer(KEY).seal(DATA, b"payload")
    for i in range(len(record)):
        tampered = bytearray(record)
        tampered[i] ^= 0x01
        with pytest.raises(Corrupted):
            Opener(KEY).open(DATA, bytes(tampered))


def test_dropped_record_detected() -> None:
    """Skipping a record makes the next one fail (the counters disagree)."""
    sealer, opener = Sealer(KEY), Opener(KEY)
    first, _second, third = (sealer.seal(DATA, b"%d" % i) for i in range(3))
    opener.open(DATA, first)
    with pytest.raises(Corrupted):
        opener.open(DATA, third)


def test_reordered_and_replayed_records_detected() -> None:
    """Swapping two records, or playing one twice, fails."""
    sealer = Sealer(KEY)
    a, b = sealer.seal(DATA, b"a"), sealer.seal(DATA, b"b")
    with pytest.raises(Corrupted):
        Opener(KEY).open(DATA, b)
    opener = Opener(KEY)
    opener.open(DATA, a)
    with pytest.raises(Corrupted):
        opener.open(DATA, a)


def test_type_swap_detected() -> None:
    """A DATA record relabelled as END (or any other type) fails."""
    record = Sealer(KEY).seal(DATA, encode_end(5))
    with pytest.raises(Corrupted):
        Opener(KEY).open(END, record)


def test_other_key_fails() -> None:
    """A record sealed with another key (the other direction's) does not open."""
    record = Sealer(KEY).seal(DATA, b"x")
    with pytest.raises(Corrupted):
        Opener(bytes(32)).open(DATA, record)


def test_short_garbage_fails_cleanly() -> None:
    """Values shorter than a tag are refused as corrupted, not crashed on."""
    for value in (b"", b"x", b"x" * (TAG_SIZE - 1)):
        with pytest.raises(Corrupted):
            Opener(KEY).open(DATA, value)


def test_end_record_value() -> None:
    """The end-of-stream value is the total as a big-endian u64; anything else is corrupted."""
    assert decode_end(encode_end(2**40 + 3)) == 2**40 + 3
    assert encode_end(1) == b"\0" * 7 + b"\1"
    for bad in (b"", b"\0" * 7, b"\0" * 9):
        with pytest.raises(Corrupted):
            decode_end(bad)


def test_key_size_enforced() -> None:
    """Only 32-byte keys are accepted."""
    with pytest.raises(ValueError):
        Sealer(b"short")
