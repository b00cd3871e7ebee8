"""UUIDv7 job ids: time-ordered, so store indexes and logs sort by creation."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable

UUIDV7_PATTERN = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)


def _os_random_bits(bits: int) -> int:
    return int.from_bytes(os.urandom((bits + 7) // 8), "big") >> (-bits % 8)


class UUIDv7Generator:
    """Monotonic within a process: ids made in the same millisecond still sort in order.

    Random bits come from the OS (`os.urandom`, a syscall each) unless `random_bits` says
    otherwise: ids that only need to be unique, not unguessable (request ids, event ids),
    use a seeded `random.Random().getrandbits` instead."""

    def __init__(self, random_bits: Callable[[int], int] = _os_random_bits) -> None:
        self._last_ms = -1
        self._counter = 0
        self._random_bits = random_bits

    def new(self, now_ms: int) -> str:
        if now_ms <= self._last_ms:
            now_ms = self._last_ms
            self._counter += 1
            if self._counter > 0xFFF:  # 12-bit counter exhausted: borrow the next millisecond
                now_ms += 1
                self._counter = 0
            rand_b = self._random_bits(62)
        else:
            entropy = self._random_bits(72)  # one call for both fields
            self._counter = (entropy >> 62) & 0x3FF
            rand_b = entropy & ((1 << 62) - 1)
        self._last_ms = now_ms
        value = (
            (now_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | self._counter << 64 | 0b10 << 62 | rand_b
        )
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def derived_uuidv7(epoch_ms: int, key: str) -> str:
    """A UUIDv7 that is the same for the same (time, key): cron ticks use it so that a tick
    fired twice (two daemons, or a retry after a crash) is one job, the second a duplicate."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:10], "big")
    value = (epoch_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((digest >> 64) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= digest & ((1 << 62) - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_uuidv7(value: str) -> bool:
    return bool(UUIDV7_PATTERN.fullmatch(value))
