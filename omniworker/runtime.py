"""Small runtime pieces the worker's parts share.

- `Backoff`: the exponential restart delay of a supervised process (Vite, the managed Go plugin): `first` doubling
  up to `cap`, back to `first` once the process ran `reset_after` seconds.
- `Background`: the tasks a part starts and does not await at once (stopping an old plugin, cleaning up after an
  exit); `cancel()` / `wait()` at the part's stop, so none outlives it.
"""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine


class Backoff:
    def __init__(self, first: float, cap: float, reset_after: float):
        self.first = first
        self.cap = cap
        self.reset_after = reset_after
        self.attempts = 0           # delays handed out since the last reset

    def next(self) -> float:
        """The delay before the next restart (and count it)."""
        delay = min(self.cap, self.first * 2 ** min(self.attempts, 64))
        self.attempts += 1
        return delay

    def ran(self, seconds: float) -> None:
        """The process ran `seconds` before it exited: a run longer than `reset_after` starts the delays over."""
        if seconds > self.reset_after:
            self.reset()

    def reset(self) -> None:
        self.attempts = 0


class Background:
    """A set of tasks kept referenced until they end."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def wait(self) -> None:
        """Wait for every task running now (their exceptions are theirs: not raised here)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
