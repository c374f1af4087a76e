"""Small runtime pieces the worker's parts share.

- `Backoff`: the exponential restart delay of a supervised process (Vite, the managed Go plugin): `first` doubling
  up to `cap`, back to `first` once the process ran `reset_after` seconds.
- `Background`: the tasks a part starts and does not await at once (stopping an old plugin, cleaning up after an
  exit); `cancel()` / `wait()` at the part's stop, so none outlives it.
- `PluginSlot`: the plugin process serving `invoke` now, in managed mode (GoPath) and external mode (External), and
  the one call-with-retry both use.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Callable, Coroutine

from omnibroker.protocol import CommandError, ErrorCode


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


async def call_owner(ctx: Any, what: str, handler: Callable[..., Any] | None, *args: Any) -> None:
    """Tell a part's owner something happened (a process exited): `handler(*args)`, awaited when it is a coroutine.
    An exception in it is the owner's bug: logged as a manager error, never lost and never raised into the caller."""
    if handler is None:
        return
    try:
        res = handler(*args)
        if asyncio.iscoroutine(res):
            await res
    except Exception as e:      # noqa: BLE001
        ctx.log("manager", "error", f"{what} handler failed: {e!r}")


class ChannelClosed(Exception):
    """A call was cut short because its gRPC channel was closed (grpc.aio cancels the calls of a closing channel,
    which surfaces as CancelledError in the caller even though the caller's task was not cancelled)."""


async def unless_closed(coro: Coroutine[Any, Any, Any]) -> Any:
    """Await a gRPC call; a CancelledError that is not a cancellation of our task becomes ChannelClosed."""
    try:
        return await coro
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise                       # a real cancellation of our task
        raise ChannelClosed("the gRPC channel was closed during the call") from None


class PluginSlot:
    """The plugin process serving calls now (`host`: anything with `invoke(method, request, timeout)`, None between
    processes), an event for each change of it, and `call`, a unary call that waits within its timeout for a process
    on its way and moves to the next process when the one it called went away.

    The owner says what "on its way" means (`coming`: a build, a restart, a `.devinfo` being followed), whether a
    host can take calls (`usable`), why nothing runs (`why`, for the error), and the error code when the whole
    timeout passed without a host (`none_came`: `timeout` when one was surely on its way, as a build;
    `not_running` when one only might come, as a developer's process that died)."""

    WAIT_STEP = 0.5             # s: the longest wait before looking again (a change wakes it at once)

    def __init__(self, what: str, *, coming: Callable[[], bool], why: Callable[[str], str],
                 usable: Callable[[Any], bool] = lambda host: True, none_came: str = ErrorCode.TIMEOUT):
        self.what = what
        self.none_came = none_came
        self.host: Any = None
        self._coming = coming
        self._why = why
        self._usable = usable
        self._changed = asyncio.Event()

    def set(self, host: Any) -> None:
        self.host = host
        self.notify()

    def notify(self) -> None:
        """The host, or whether it can take calls, changed: wake the calls waiting for it."""
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def changed(self, timeout: float) -> None:
        """Return at the next change, or after `timeout` s."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout))

    async def call(self, method: str, request: bytes, timeout: float) -> bytes:
        """CommandError not_running (nothing runs, nothing on its way), timeout, or rpc_error (the plugin's answer)."""
        import grpc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = ""
        while True:
            host = self.host
            remaining = deadline - loop.time()
            if host is None or not self._usable(host):
                if not self._coming():
                    raise CommandError(ErrorCode.NOT_RUNNING, f"{self.what} is not running: {self._why(last)}")
                if remaining <= 0:
                    raise CommandError(self.none_came, f"no {self.what} became ready within {timeout:g} s: "
                                                       f"{self._why(last)}")
                await self.changed(min(remaining, self.WAIT_STEP))
                continue
            if remaining <= 0:
                raise CommandError(ErrorCode.TIMEOUT, f"{method}: no answer within {timeout:g} s")
            try:
                return await unless_closed(host.invoke(method, request, remaining))
            except ChannelClosed as e:          # closed under the call: the process died or is being replaced
                last = str(e)
                if host is self.host:           # its death or replacement is not seen yet: wait for it, not spin
                    await self.changed(min(self.WAIT_STEP, deadline - loop.time()))
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) and deadline - loop.time() > 0:
                    last = f"{code.name}: {e.details()}"
                    if host is self.host and self._usable(host):
                        # the process we called is still current: give its death or replacement time to be seen
                        await self.changed(min(self.WAIT_STEP, deadline - loop.time()))
                        if host is self.host and self._usable(host):
                            raise CommandError(ErrorCode.RPC, f"{method}: {last}") from None
                    continue
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise CommandError(ErrorCode.TIMEOUT, f"{method}: deadline exceeded after {timeout:g} s") \
                        from None
                raise CommandError(ErrorCode.RPC, f"{method}: {code.name}: {e.details()}") from None
            except CommandError:
                raise
            except Exception as e:              # PluginError: the channel closed between our look and the call
                last = str(e)
                if host is self.host:
                    if not self._coming():
                        raise CommandError(ErrorCode.NOT_RUNNING, f"{self.what} is not running: {e}") from None
                    await self.changed(min(self.WAIT_STEP, deadline - loop.time()))
