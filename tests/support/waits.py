"""Waiting in tests: on a worker part's events (a NullSink) and on a coroutine, each with a timeout.

An event that does not come is an AssertionError showing the last events, so a failing test says what happened.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
from typing import Any, Callable, Coroutine

from omniworker.context import NullSink

Pred = Callable[[str, Any], bool]


def run(coro: Coroutine, timeout: float = 90.0) -> Any:
    """Run a coroutine to its end in a new event loop; longer than `timeout` seconds raises TimeoutError. When this
    thread already runs a loop (Playwright's sync API keeps one), the new loop runs in a worker thread."""
    bounded = asyncio.wait_for(coro, timeout)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, bounded).result()


async def wait_event(sink: NullSink, pred: Pred, timeout: float = 10.0, since: int = 0) -> int:
    """The index in sink.events of the first event at or after `since` matching pred(topic, payload)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    index = since
    while True:
        while index < len(sink.events):
            if pred(*sink.events[index]):
                return index
            index += 1
        sink.changed.clear()
        remaining = deadline - loop.time()
        if remaining <= 0:
            tail = "\n".join(f"  {t} {json.dumps(p)[:300]}" for t, p in sink.events[-15:])
            raise AssertionError(f"no matching event within {timeout}s; last events:\n{tail}")
        try:
            await asyncio.wait_for(sink.changed.wait(), remaining)
        except asyncio.TimeoutError:
            pass
