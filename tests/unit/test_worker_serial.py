"""The worker's lock is never held past a command's budget: an overrunning command is answered `timeout` and
abandoned (the worker then exits for supervisord to restart it), and a command that cannot get the lock in time is
answered `timeout` without running."""
from __future__ import annotations

import asyncio
import time

import pytest

from omnibroker.protocol import CommandError, ErrorCode
from omniworker import worker as W


@pytest.fixture
def make_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(W, "SERIAL_BUDGET", 0.3)
    made = []

    def make() -> W.Worker:
        w = W.Worker("p")
        made.append(w)
        return w
    yield make
    for w in made:
        w.link.zctx.destroy(linger=0)


async def test_overrunning_command_is_abandoned_within_its_budget(make_worker):
    w = make_worker()
    cancelled = asyncio.Event()

    async def hangs():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
    t0 = time.monotonic()
    with pytest.raises(CommandError) as err:
        await w.serially("stop", hangs)
    took = time.monotonic() - t0
    assert err.value.code == ErrorCode.TIMEOUT and "stop did not finish within 0.3s" in err.value.reason
    assert "abandoned" in err.value.reason
    assert took < 1.0, took
    assert not w.serial.locked()
    assert w.stop_event.is_set()                # run() then kills the children and exits ABANDONED_EXIT
    await asyncio.wait_for(cancelled.wait(), 1)
    with pytest.raises(CommandError) as err:    # nothing else runs on parts in an unknown state
        await w.serially("start", lambda: asyncio.sleep(0))
    assert err.value.code == ErrorCode.WORKER_UNAVAILABLE


async def test_waiting_for_the_lock_is_bounded_and_the_command_not_run(make_worker):
    w = make_worker()
    ran = []
    await w.serial.acquire()
    w.holder = "restart"

    async def cmd():
        ran.append(1)
    with pytest.raises(CommandError) as err:
        await w.serially("start", cmd)
    assert err.value.code == ErrorCode.TIMEOUT and "still running restart" in err.value.reason
    assert not ran and not w.abandoned
    w.serial.release()
    assert await w.serially("start", cmd) is None and ran == [1]


async def test_supervisord_stopping_stops_the_parts_once_and_refuses_mode_changes(make_worker):
    """supervisord's STOPPING (relayed by the broker) stops the parts at once, once; a later TERM reuses that stop."""
    w = make_worker()
    stops = []

    class Parts:
        async def shutdown(self):
            stops.append(1)

        class ctx:
            @staticmethod
            def publish_status():
                pass
    w.devserver = Parts()
    first = w.stop_parts("supervisord is stopping")
    assert w.stop_parts("the worker is stopping") is first
    await first
    assert stops == [1] and not w.stop_event.is_set()     # the worker stays linked until supervisord's TERM
    with pytest.raises(CommandError) as err:
        await w.serially("start", lambda: asyncio.sleep(0))
    assert err.value.code == ErrorCode.WORKER_UNAVAILABLE
    assert err.value.reason == "the worker is stopping: supervisord is stopping"
