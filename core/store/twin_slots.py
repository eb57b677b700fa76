"""A record kept in two checksummed slots of one file, rewritten in place without tearing.

Hot state (rate limiters, 429 backoff, fencing counters) changes on every
request.  Replacing its file costs a rename (~200 us on ext4, whose
``auto_da_alloc`` starts writeback of the new file), while rewriting it in
place costs ~2 us but may tear: a writer killed, or a disk that fills, between
two system calls leaves new bytes over an old tail.  Two slots give both:

* the file is two slots of equal size; each slot holds a CRC-32, then the
  magic, a sequence number and the payload's length, then the payload (the
  CRC covers everything after it);
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
CRC = struct.Struct("<I")
HEADER = struct.Struct("<I4sQI")  # crc32 of the rest, magic, sequence, payload length
MIN_SLOT_BYTES = 4096


def slot_bytes_for(length: int) -> int:
    """A slot size with room for the payload to double, in whole pages."""
    needed = HEADER.size + 2 * length
    return max(MIN_SLOT_BYTES, -(-needed // MIN_SLOT_BYTES) * MIN_SLOT_BYTES)


def encode_slot(payload: bytes, sequence: int) -> bytes:
    """One slot's bytes: the header, then the payload."""
    rest = MAGIC + struct.pack("<QI", sequence, len(payload))
    return CRC.pack(zlib.crc32(payload, zlib.crc32(rest))) + rest + payload


def new_file(payload: bytes, sequence: int = 1) -> bytes:
    """A whole file holding ``payload`` in its first slot, the second one empty."""
    slot = slot_bytes_for(len(payload))
    return encode_slot(payload, sequence).ljust(2 * slot, b"\0")


def is_slotted(data: bytes) -> bool:
    """Two-slot layout (rather than an older plain JSON file)."""
    half = len(data) // 2
    return data[4:8] == MAGIC or (len(data) >= 2 * MIN_SLOT_BYTES and data[half + 4 : half + 8] == MAGIC)


def newest(data: bytes, known: tuple[int, bytes] | None = None) -> tuple[bytes, int, int] | None:
    """``(payload, sequence, slot index)`` of the newest intact slot, ``None`` if neither is.

    ``known``: a sequence number and the payload a writer put there itself; a slot
    holding exactly those bytes needs no checksum (the hot path's common case)."""
    slot = len(data) // 2
    view = memoryview(data)
    best: tuple[int, int, int, int] | None = None  # sequence, index, start, end
    for index in (0, 1):
        base = index * slot
        if base + HEADER.size > len(data):
            break
        crc, magic, sequence, length = HEADER.unpack_from(data, base)
        end = base + HEADER.size + length
        if magic != MAGIC or end > base + slot or (best is not None and sequence <= best[0]):
            continue
        start = base + HEADER.size
        if (known is not None and known[0] == sequence and view[start:end] == known[1]) or zlib.crc32(
            view[base + CRC.size : end]
        ) == crc:
            best = (sequence, index, start, end)
    if best is None:
        return None
    sequence, index, start, end = best
    payload = known[1] if known is not None and known[0] == sequence and len(known[1]) == end - start else data[start:end]
    return payload, sequence, index
