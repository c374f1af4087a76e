"""Give the broker's freed heap memory back to the system.

What a slow subscriber or a client that does not read its replies makes the broker hold is bounded (protocol.py,
"Limits"), but once it is freed glibc keeps it: freed chunks stay in malloc's arenas (libzmq's I/O thread allocates
messages in its own arena), and after a large block has been freed, blocks of that size come from the heap rather than
mmap. Measured: 5 stopped subscribers during a log flood, or 2,000 unread 700 KB replies, left the broker 130 MB above
its idle RSS for good. `Trimmer.check()` asks malloc how much of its arenas is free (mallinfo2, over every arena) and,
past `threshold` bytes, calls malloc_trim(0), which returns free pages of every arena to the kernel.

Other C libraries (musl) or an older glibc without mallinfo2: `check()` does nothing.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

log = logging.getLogger("omnibroker")

TRIM_THRESHOLD = 16 << 20       # free bytes in malloc's arenas that are worth a malloc_trim
TRIM_INTERVAL = 5.0             # seconds between looks (a mallinfo2 costs ~0.1 ms)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


class Trimmer:
    def __init__(self, threshold: int = TRIM_THRESHOLD):
        self.threshold = threshold
        self.trims = 0
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self._mallinfo2 = libc.mallinfo2
            self._trim = libc.malloc_trim
        except (OSError, AttributeError):
            self._mallinfo2 = self._trim = None
            return
        self._mallinfo2.restype = _MallInfo2
        self._trim.argtypes = [ctypes.c_size_t]

    def free_bytes(self) -> int:
        """Bytes malloc holds free in its arenas (0 when it cannot tell)."""
        return self._mallinfo2().fordblks if self._mallinfo2 is not None else 0

    def check(self) -> bool:
        """malloc_trim(0) when more than `threshold` bytes are free; whether it trimmed."""
        free = self.free_bytes()
        if free <= self.threshold:
            return False
        self._trim(0)
        self.trims += 1
        log.debug("malloc_trim: %.1f MB were free in malloc's arenas", free / 1e6)
        return True


async def trim_loop(interval: float = TRIM_INTERVAL) -> None:
    """Every `interval` seconds, give back what malloc holds free beyond the threshold."""
    trimmer = Trimmer()
    while True:
        await asyncio.sleep(interval)
        trimmer.check()
