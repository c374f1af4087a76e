"""Give the broker's freed heap memory back to the system.

What a slow subscriber or a client that does not read its replies makes the broker hold is bounded (protocol.py,
"Limits"), but once it is freed glibc keeps it: freed chunks stay in malloc's arenas (libzmq's I/O thread allocates
messages in its own arena), and after a large block has been freed, blocks of that size come from the heap rather than
mmap. Measured: 2,000 unread 700 KB replies left the broker at 165 MB after the flood, 130 MB above its idle RSS.

`Trimmer.check()` calls malloc_trim(0), which returns the free pages of every arena to the kernel, when malloc holds
more than `threshold` bytes free (mallinfo2, over every arena) and either that free amount or the RSS grew by more
than `threshold` since the last trim (the lowest seen since, in fact): malloc still counts trimmed pages as free, so
"much is free" alone would trim again and again for nothing. On a heap of 100,000 fragments a mallinfo2 took 5.6 ms
and a malloc_trim 6-10 ms; the broker's is far smaller.

Other C libraries (musl) or an older glibc without mallinfo2: `check()` does nothing.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("omnibroker")

TRIM_THRESHOLD = 8 << 20        # RSS growth and free bytes in malloc's arenas that are worth a malloc_trim
TRIM_INTERVAL = 5.0             # seconds between looks (a mallinfo2 costs ~0.1 ms)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


class Trimmer:
    def __init__(self, threshold: int = TRIM_THRESHOLD):
        self.threshold = threshold
        self.trims = 0
        self.free_ref = self.rss_ref = 0
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self._mallinfo2 = libc.mallinfo2
            self._trim = libc.malloc_trim
        except (OSError, AttributeError):
            self._mallinfo2 = self._trim = None
            return
        self._mallinfo2.restype = _MallInfo2
        self._trim.argtypes = [ctypes.c_size_t]
        self.free_ref, self.rss_ref = self.free_bytes(), _rss_bytes()

    def free_bytes(self) -> int:
        """Bytes malloc holds free in its arenas (0 when it cannot tell)."""
        return self._mallinfo2().fordblks if self._mallinfo2 is not None else 0

    def check(self) -> bool:
        """malloc_trim(0) when it may give something back (see the module's docstring); whether it trimmed."""
        if self._mallinfo2 is None:
            return False
        free, rss = self.free_bytes(), _rss_bytes()
        self.free_ref, self.rss_ref = min(self.free_ref, free), min(self.rss_ref, rss)
        if free <= self.threshold or (free - self.free_ref <= self.threshold and rss - self.rss_ref <= self.threshold):
            return False
        self._trim(0)
        self.trims += 1
        self.free_ref, self.rss_ref = free, _rss_bytes()
        log.debug("malloc_trim: %.1f MB were free in malloc's arenas; RSS %.1f -> %.1f MB", free / 1e6, rss / 1e6,
                  self.rss_ref / 1e6)
        return True


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


_PAGE = os.sysconf("SC_PAGE_SIZE")


async def trim_loop(interval: float = TRIM_INTERVAL) -> None:
    """Every `interval` seconds, give back what malloc holds free beyond the threshold."""
    trimmer = Trimmer()
    while True:
        await asyncio.sleep(interval)
        trimmer.check()
