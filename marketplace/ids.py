"""Primary keys for rows written in bulk.

``ordered_uuid()`` is a version 7 UUID (RFC 9562): 48 bits of Unix time in milliseconds, then
74 random bits. Its values grow with time, so rows inserted together land next to each other
at the right-hand edge of the primary-key index instead of on random leaf pages (fewer pages
dirtied and written to the WAL per batch). Still unguessable in practice, and the same type as
``uuid.uuid4()`` everywhere else.
"""

import os
import time
import uuid


def ordered_uuid() -> uuid.UUID:
    """A new version 7 UUID: time-ordered to the millisecond, random below that."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits, 74 of them used
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= (rand >> 68) << 64  # rand_a: 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b: 62 bits
    return uuid.UUID(int=value)
