"""Give the broker's freed heap memory back to the system.

What a slow subscriber or a client that does not read its replies makes the broker hold is bounded (protocol.py,
"Limits"), but once it is freed glibc keeps it: freed chunks stay in malloc's arenas (libzmq's I/O thread allocates
messages in its own arena), and after a large block has been freed, blocks of that size come from the heap rather than
mmap. Measured: 2,000 unread 700 KB replies left the broker at 165 MB after the flood, 130 MB above its idle RSS.

`Trimmer.check()`, called every `interval` seconds, calls malloc_trim(0) (which returns the free pages of every arena
to the kernel) when malloc holds more than `threshold` bytes free (mallinfo2, over every arena), the broker is quiet,
and its wait is over:
- quiet: it received at most `BUSY_MESSAGES` messages since the last look. While it is busy, what a flood freed is
  taken again by what follows, and a trim would only make the next messages fault their pages back in (bench_core's
  events/s to one subscriber, 9 runs alternating: median 46k when every look could trim, 53k when only growth did;
  35-69k from run to run);
- the wait is `interval` after a trim that gave back at least `GAIN` bytes of RSS, and doubles, up to
  `max_interval`, after each trim that gave back less; an RSS grown by more than `threshold` since the last trim (a
  new flood) brings it back to `interval`.
Freed memory is thus back within `interval` of the broker becoming quiet, and within `max_interval` at worst.

The wait cannot be "until malloc's free bytes grow again": mallinfo2 still counts trimmed pages as free, so a trim in
the middle of a flood can leave that count, once the flood is freed, near where it was, with tens of MB resident (25 MB
in one measured run). A heap whose free memory cannot be given back (fragments) costs a trim per `max_interval`:
on a heap of 100,000 fragments a mallinfo2 took 5.6 ms and a malloc_trim 6-10 ms; the broker's is far smaller.

Other C libraries (musl) or an older glibc without mallinfo2: `check()` does nothing.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from typing import Callable

log = logging.getLogger("omnibroker")

TRIM_THRESHOLD = 8 << 20        # free bytes in malloc's arenas, and RSS growth, worth a malloc_trim
TRIM_INTERVAL = 5.0             # seconds between looks (a mallinfo2 costs ~0.1 ms), and after a trim that gave back
TRIM_MAX_INTERVAL = 20.0        # the longest wait between two trims while malloc holds more than the threshold free
GAIN = 1 << 20                  # a trim that gave back less than this lengthens the wait
BUSY_MESSAGES = 1000            # more messages than this since the last look (200/s): busy, no trim


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


class Malloc:
    """glibc's malloc, as the trimmer sees it: free bytes in its arenas, malloc_trim(0), and the process's RSS."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self._mallinfo2 = libc.mallinfo2
            self._trim = libc.malloc_trim
        except (OSError, AttributeError):
            self._mallinfo2 = self._trim = None
            return
        self._mallinfo2.restype = _MallInfo2
        self._trim.argtypes = [ctypes.c_size_t]

    @property
    def available(self) -> bool:
        return self._mallinfo2 is not None

    def free_bytes(self) -> int:
        """Bytes malloc holds free in its arenas (0 when it cannot tell)."""
        return self._mallinfo2().fordblks if self._mallinfo2 is not None else 0

    def trim(self) -> None:
        self._trim(0)

    @staticmethod
    def rss_bytes() -> int:
        return _rss_bytes()


class Trimmer:
    """When to give freed memory back (see the module's docstring). `malloc` and `clock` are replaced in tests."""

    def __init__(self, threshold: int = TRIM_THRESHOLD, interval: float = TRIM_INTERVAL,
                 max_interval: float = TRIM_MAX_INTERVAL, malloc: Malloc | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold, self.interval, self.max_interval = threshold, interval, max_interval
        self.malloc = malloc if malloc is not None else Malloc()
        self.clock = clock
        self.trims = 0
        self.wait = interval
        self.last_trim = float("-inf")
        self.last_activity: int | None = None
        self.rss_after = self.malloc.rss_bytes() if self.malloc.available else 0

    def check(self, activity: int | None = None) -> bool:
        """malloc_trim(0) when it may give something back; whether it trimmed. `activity`: a count of the messages
        the broker received so far (None: always quiet)."""
        m = self.malloc
        if not m.available:
            return False
        busy = activity is not None and self.last_activity is not None \
            and activity - self.last_activity > BUSY_MESSAGES
        self.last_activity = activity
        free = m.free_bytes()
        if free <= self.threshold:
            return False
        now, rss = self.clock(), m.rss_bytes()
        if rss - self.rss_after > self.threshold:
            self.wait = self.interval               # a new flood: look at the usual pace
        if busy or now - self.last_trim < self.wait:
            return False
        m.trim()
        self.trims += 1
        self.last_trim, self.rss_after = now, m.rss_bytes()
        gained = rss - self.rss_after
        self.wait = self.interval if gained >= GAIN else min(self.wait * 2, self.max_interval)
        log.debug("malloc_trim: %.1f MB were free in malloc's arenas; RSS %.1f -> %.1f MB; next in %.0f s or more",
                  free / 1e6, rss / 1e6, self.rss_after / 1e6, self.wait)
        return True


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


_PAGE = os.sysconf("SC_PAGE_SIZE")


async def trim_loop(interval: float = TRIM_INTERVAL, activity: Callable[[], int] | None = None) -> None:
    """Every `interval` seconds, give back what malloc holds free beyond the threshold; `activity()` counts the
    messages the broker received so far."""
    trimmer = Trimmer(interval=interval)
    while True:
        await asyncio.sleep(interval)
        trimmer.check(activity() if activity is not None else None)
