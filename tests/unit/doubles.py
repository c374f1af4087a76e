"""Test doubles for the service's parts: a child process, a Go builder, a go-plugin host, a file watcher, glibc's
malloc — no real process, no network. Each is the smallest thing that lets a part run its state transitions."""
from __future__ import annotations

import asyncio
import itertools
from typing import Any

from omnibroker import protocol
from omniworker.context import NullSink, PluginContext
from omniworker.gobuild import BuildResult

_pids = itertools.count(90_000)


def context(path: str = "/tmp", **settings: Any) -> tuple[PluginContext, NullSink]:
    sink = NullSink()
    return PluginContext(protocol.PluginSpec(id="p", path=path, settings=settings), sink), sink


def statuses(sink: NullSink, field: str) -> list[Any]:
    """The values `field` took in the published status events, repeats removed."""
    out: list[Any] = []
    for topic, payload in sink.events:
        if topic == protocol.STATUS and (not out or out[-1] != payload[field]):
            out.append(payload[field])
    return out


def status(pred):
    """A support.waits.wait_event predicate: a status event whose payload matches `pred`."""
    return lambda topic, payload: topic == protocol.STATUS and pred(payload)


class FakeChild:
    """omniworker.children.Child: `exit(rc)` ends it; `stop()` ends it with -15."""
    spawned: list["FakeChild"] = []

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.pid = next(_pids)
        self.returncode: int | None = None
        self._exited = asyncio.Event()

    @classmethod
    async def spawn(cls, name: str, argv: list[str], **_: Any) -> "FakeChild":
        child = cls(argv)
        cls.spawned.append(child)
        return child

    @property
    def running(self) -> bool:
        return self.returncode is None

    def exit(self, rc: int) -> None:
        if self.returncode is None:
            self.returncode = rc
            self._exited.set()

    async def wait(self) -> int | None:
        await self._exited.wait()
        return self.returncode

    async def stop(self, grace: float = 0.0) -> None:
        self.exit(-15)

    def tail_text(self, n: int = 20) -> str:
        return ""


class FakeBuilder:
    """gobuild.Builder: each build succeeds unless `fail` is set."""

    def __init__(self, ctx: PluginContext, debug: bool = False):
        self.ctx = ctx
        self.debug = debug
        self.fail = False
        self.output = f"{ctx.dir}/build/bin/plugin"

    async def build(self) -> BuildResult:
        return BuildResult(ok=not self.fail, binary=self.output, duration=0.01,
                           errors=[protocol.BuildError(message="x.go:1: broken")] if self.fail else [])


class FakeHost:
    """goplugin.PluginHost: starts at once (or raises `start_error`); `crash()` calls on_exit as a dying plugin."""
    start_error: Exception | None = None

    def __init__(self, ctx: PluginContext, on_exit=None, name: str = "plugin"):
        self.on_exit = on_exit
        self.pid = next(_pids)
        self.connected = False
        self.timings: dict[str, float] = {}
        self.stderr_tail = ""

    async def start(self, binary: str) -> None:
        if FakeHost.start_error is not None:
            raise FakeHost.start_error
        self.connected = True
        self.timings["healthy"] = asyncio.get_running_loop().time()

    async def drain(self, timeout: float) -> None:
        pass

    async def stop(self, grace: float = 0.0) -> None:
        self.connected = False

    def crash(self, rc: int = 2) -> None:
        self.connected = False
        self.on_exit(self, rc)

    async def invoke(self, method: str, request: bytes, timeout: float) -> bytes:
        return b"ok"


class FakeWatcher:
    """gowatch.GoWatcher without inotify."""

    def __init__(self, ctx: PluginContext, on_change, **_: Any):
        self.on_change = on_change
        self.last_burst = None

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def snapshot(self) -> list:
        return []


class FakeRemote:
    """goplugin.PluginHost as external mode uses it (connect to a process it does not own); `healthy` is what the
    health check answers."""

    def __init__(self, ctx: PluginContext):
        self.healthy = True

    async def connect(self, network: str, address: str, timeout: float) -> None:
        pass

    async def health(self, timeout: float) -> bool:
        return self.healthy

    async def close(self) -> None:
        pass

    async def invoke(self, method: str, request: bytes, timeout: float) -> bytes:
        return b"ok"


class FakePidWatch:
    """external.PidWatch without a pidfd: the test calls the exit callback itself."""
    method = "fake"

    def __init__(self, pid: int, create_time: float, on_exit):
        self.on_exit = on_exit

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class FakeMalloc:
    """omnibroker.heap.Malloc as numbers: `free` and `rss` are set by the test; a trim gives back `trimmable` bytes of
    RSS and, as glibc's mallinfo2 does, still counts them as free."""

    available = True

    def __init__(self, free: int = 0, rss: int = 40 << 20, trimmable: int = 0):
        self.free, self.rss, self.trimmable = free, rss, trimmable
        self.trims = 0

    def free_bytes(self) -> int:
        return self.free

    def rss_bytes(self) -> int:
        return self.rss

    def trim(self) -> None:
        self.trims += 1
        self.rss -= self.trimmable
        self.trimmable = 0


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSupervisord:
    """What omniworker.preload's rpcinterface factory touches of supervisord: its options' `execve` (recorded here,
    never run) and `logger`."""

    def __init__(self) -> None:
        self.execs: list[tuple[str, list[str]]] = []
        self.warnings: list[str] = []
        outer = self

        class Logger:
            def warn(self, msg: str) -> None:
                outer.warnings.append(msg)

        class Options:
            logger = Logger()

            def execve(self, filename: str, argv: list[str], env: dict) -> None:
                outer.execs.append((filename, argv))

        self.options = Options()


class FakeSupervisorRPC:
    """supervisord's XML-RPC root as omnibroker.supervisor_link's `_update_ours` uses it: `reloadConfig` answers
    `changes` ([added, changed, removed]); every call is recorded; `system.multicall` runs the calls it is given, one
    fault struct for each name in `faults`, values unwrapped as supervisord answers them."""

    def __init__(self, added=(), changed=(), removed=(), faults=()):
        self.calls: list[tuple] = []
        self.multicalls: list[list[str]] = []
        outer = self

        class Supervisor:
            def reloadConfig(self):
                outer.calls.append(("reloadConfig",))
                return [[list(added), list(changed), list(removed)]]

            def __getattr__(self, name):
                return lambda *args: outer.calls.append((name, *args)) or True

        class System:
            def multicall(self, calls):
                outer.multicalls.append([f"{c['methodName']} {' '.join(c['params'])}" for c in calls])
                return [{"faultCode": 90, "faultString": f"ALREADY_ADDED: {c['params'][0]}"}
                        if c["params"][0] in faults else True for c in calls]

        self.supervisor = Supervisor()
        self.system = System()
