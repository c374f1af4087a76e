"""Test support: one home for what the suites share.

- example.py  the example plugin: private copies, its Go build, its gRPC codec (greeter_pb), the greeting edit
- config.py   omni.toml text: a [plugins.<id>] table for a copy of the example
- service.py  a real service (supervisord, broker, workers, bridge) in a temp runtime dir, its event stream
- waits.py    `run` (a coroutine, bounded) and `wait_event` (a worker part's events in a NullSink)
- aio.py      the pytest plugin that runs `async def test_…` functions (loaded by tests/conftest.py)

The bridge's double of the broker, FakeBroker, is omnibridge/testing.py (the benchmarks use it too).
tests/ is on sys.path through pytest's `pythonpath` option (pyproject.toml), so tests import `support.…`.
"""
