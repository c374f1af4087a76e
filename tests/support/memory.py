"""Memory measurements of a process: the broker's, in tests/chaos/test_limits.py and
tests/security/test_request_limits.py.

The broker's peak RSS over a stretch of time is its VmHWM after `5` was written to /proc/<pid>/clear_refs (which
resets the peak to the current RSS; needs the process's owner or root). `Guard` also polls the current RSS, so that a
flood against a broker without bounds stops at `abort_mb` instead of taking the machine's memory (the test then fails
on its bound, which is below `abort_mb`).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class Guard(threading.Thread):
    """Polls a process's RSS every 20 ms; `tripped` is set once it exceeds `abort_mb`."""

    def __init__(self, pid: int, abort_mb: float):
        super().__init__(name="rss-guard", daemon=True)
        self.pid = pid
        self.abort_mb = abort_mb
        self.tripped = threading.Event()
        self.max_seen = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = rss_mb(self.pid)
            except (OSError, KeyError):
                return
            self.max_seen = max(self.max_seen, rss)
            if rss > self.abort_mb:
                self.tripped.set()
            self._halt.wait(0.02)   # a sampling period, not a synchronisation

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def wait_rss_below(pid: int, mb: float, timeout: float) -> float:
    """Poll until the RSS is below `mb`; the last RSS seen either way."""
    deadline = time.monotonic() + timeout
    while True:
        rss = rss_mb(pid)
        if rss < mb or time.monotonic() > deadline:
            return rss
        time.sleep(0.1)     # polling /proc: memory given back has no event
