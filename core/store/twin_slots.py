"""A record kept in two checksummed slots of one file, rewritten in place without tearing.

Hot state (rate limiters, 429 backoff, fencing counters) changes on every
request.  Replacing its file costs a rename (~200 us on ext4, whose
``auto_da_alloc`` starts writeback of the new file), while rewriting it in
place costs ~2 us but may tear: a writer killed, or a disk that fills, between
two system calls leaves new bytes over an old tail.  Two slots give both:

* the file is two slots of equal size; each slot holds a header (magic, a
  sequence number, the payload's length, a CRC-32 of all three and the
  payload) followed by the payload;
* a writer writes the *other* slot than the newest intact one, in one
  ``pwrite``, with the next sequence number; the newest intact slot is never
  touched, so whatever happens to the write, the previous value survives;
* a reader takes the intact slot with the highest sequence number.  A slot torn
  mid-write fails its checksum and is ignored.

The whole file is written once when it is created (so every page is allocated:
a full disk cannot make a later ``pwrite`` short) and replaced, whole, by a
larger one only when a payload outgrows its slot.
"""

from __future__ import annotations

import struct
import zlib

MAGIC = b"PDs1"
HEADER = struct.Struct("<4sQII")  # magic, sequence, payload length, crc32
MIN_SLOT_BYTES = 4096


def slot_bytes_for(length: int) -> int:
    """A slot size with room for the payload to double, in whole pages."""
    needed = HEADER.size + 2 * length
    return max(MIN_SLOT_BYTES, -(-needed // MIN_SLOT_BYTES) * MIN_SLOT_BYTES)


def encode_slot(payload: bytes, sequence: int) -> bytes:
    """One slot's bytes: the header, then the payload."""
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<QI", sequence, len(payload))))
    return HEADER.pack(MAGIC, sequence, len(payload), crc) + payload


def new_file(payload: bytes, sequence: int = 1) -> bytes:
    """A whole file holding ``payload`` in its first slot, the second one empty."""
    slot = slot_bytes_for(len(payload))
    return encode_slot(payload, sequence).ljust(2 * slot, b"\0")


def is_slotted(data: bytes) -> bool:
    """Two-slot layout (rather than an older plain JSON file)."""
    return data[:4] == MAGIC or (len(data) >= 2 * MIN_SLOT_BYTES and data[len(data) // 2 : len(data) // 2 + 4] == MAGIC)


def newest(data: bytes) -> tuple[bytes, int, int] | None:
    """``(payload, sequence, slot index)`` of the newest intact slot, ``None`` if neither is."""
    slot = len(data) // 2
    best: tuple[bytes, int, int] | None = None
    for index in (0, 1):
        base = index * slot
        if base + HEADER.size > len(data):
            break
        magic, sequence, length, crc = HEADER.unpack_from(data, base)
        start = base + HEADER.size
        if magic != MAGIC or start + length > base + slot:
            continue
        payload = data[start : start + length]
        if zlib.crc32(payload, zlib.crc32(struct.pack("<QI", sequence, length))) != crc:
            continue
        if best is None or sequence > best[1]:
            best = (payload, sequence, index)
    return best
