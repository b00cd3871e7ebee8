"""The wall clock, in the one unit the daemon uses (epoch milliseconds).

The core never calls it; the engine and the edges receive it, so tests can inject another.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
