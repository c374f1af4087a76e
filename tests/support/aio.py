"""Async tests: a pytest plugin that runs an `async def test_…` in a new event loop, bounded in time.

    async def test_ready(vite_plugin):            # fixtures as for any test
        ...
    @pytest.mark.async_timeout(150)               # seconds; DEFAULT_TIMEOUT without the mark
    async def test_long_build(harness): ...

Fixtures stay synchronous; what a test starts in its loop it stops there (try/finally in the test).
"""
from __future__ import annotations

import inspect

import pytest

from .waits import run

DEFAULT_TIMEOUT = 90.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "async_timeout(seconds): how long an async test may run")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    mark = pyfuncitem.get_closest_marker("async_timeout")
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    run(pyfuncitem.obj(**kwargs), mark.args[0] if mark else DEFAULT_TIMEOUT)
    return True
