"""A stand-in broker for the bridge's load tests and benchmarks (no supervisord, no workers).

It is the broker's own event bus and command table with no plugins behind them: events go out through
omnibroker.events.EventBus (stamped epoch, seq, ts, pluginID as the broker stamps them), requests are checked by
omnibroker.commands (an unknown command or a bad property is refused with the broker's error), the immediate commands
(`ping`, `list`, `status`, `snapshot`) run their real code against the fake's states, `logs` answers `log_tail`, and
every other command an empty ok. So the real `omnibridge` and the real dashboard run against it unchanged:

    fake = FakeBroker(control="ipc:///tmp/x/control.sock", events="ipc:///tmp/x/events.sock", plugins=["a", "b"])
    fake.start()                          # a thread answers control requests
    fake.publish(protocol.LOG, protocol.log_payload("a", "go-build", "info", "hi"), "a")
    fake.close()
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import zmq

from omnibroker import protocol
from omnibroker.commands import COMMANDS
from omnibroker.events import EventBus
from omnibroker.protocol import CommandError, DevServerState, ErrorCode, EventMeta


def running_state(plugin: str, vite_port: int = 0) -> DevServerState:
    return DevServerState(pluginID=plugin, mode="managed", devPath=f"/src/{plugin}", goStatus="ready",
                          viteStatus="idle", vitePort=vite_port, grpcConnected=True, workerStatus="up",
                          lastBuildTime=protocol.now_rfc3339(), lastBuildDuration=700_000_000)


class FakeBroker:
    def __init__(self, control: str, events: str, plugins: list[str] = ()):
        self.ctx = zmq.Context()
        self.control_endpoint = control
        self.events_endpoint = events
        self.lock = threading.Lock()                    # the bus is shared by the test's thread and the control thread
        self.requests: list[dict] = []
        self.log_tail: dict[str, list[dict]] = {}      # what `logs` answers, per plugin
        self.config_error = ""                          # `configError` in ping/list/snapshot
        self.answering = threading.Event()              # clear it to play a broker that does not answer
        self.answering.set()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, protocol.EVENTS_SNDHWM)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(events)
        self.events = EventBus(self.pub)
        self.events.states.update((p, running_state(p)) for p in plugins)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-broker", daemon=True)

    def start(self) -> "FakeBroker":
        self._thread.start()
        return self

    @property
    def epoch(self) -> str:
        return self.events.epoch

    @property
    def seq(self) -> int:
        return self.events.seq

    @property
    def states(self) -> dict[str, DevServerState]:
        """Every plugin's latest state (the bus's), as `status`, `list` and `snapshot` answer it."""
        return self.events.states

    # --- events (call from the thread that created the broker) --------------------------------------------------------
    def publish(self, topic: str, payload: Any, plugin: str) -> EventMeta:
        with self.lock:
            if topic == protocol.STATUS:
                return self.events.status(payload)
            return self.events.publish(topic, payload, plugin)

    def status(self, state: DevServerState) -> EventMeta:
        return self.publish(protocol.STATUS, state, state.pluginID)

    def config(self, error: str, path: str = "/src/omni.toml") -> EventMeta:
        """What the broker does when omni.toml's problems change: `configError` and an omni/config event."""
        with self.lock:
            self.config_error = error
        return self.publish(protocol.CONFIG, {"path": path, "error": error}, "")

    def restart(self) -> None:
        """What a broker restart looks like to subscribers: a new epoch, seq from 0 (the plugins' states kept, as
        a restarted broker registers the same plugins again)."""
        with self.lock:
            states = self.events.states
            self.events = EventBus(self.pub)
            self.events.states = states

    # --- control -------------------------------------------------------------------------------------------------
    def _serve(self) -> None:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.control_endpoint)
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                frames = sock.recv_multipart()
                if not self.answering.is_set():
                    continue
                envelope, body = frames[:-1], frames[-1]
                try:
                    req = protocol.decode_request([body])
                    reply = self._answer(req)
                except CommandError as e:
                    reply = protocol.error_reply(protocol.request_id_of([body]), e.code, e.reason)
                sock.send_multipart(envelope + [protocol.encode(reply)])
        finally:
            sock.close(0)

    def _answer(self, req: protocol.Request) -> protocol.Reply:
        """The broker's dispatch (omnibroker.broker: look up, validate, run an immediate command) on the fake's
        states; the commands that a broker would hand to a worker get `log_tail` (`logs`) or an empty ok."""
        with self.lock:
            self.requests.append({"command": req.command, "properties": req.properties})
            cmd = COMMANDS.get(req.command)
            if cmd is None:
                raise CommandError(ErrorCode.UNKNOWN_COMMAND,
                                   f"unknown command {req.command!r}; known: {', '.join(COMMANDS)}")
            props = cmd.validate(req.properties)
            if cmd.immediate:
                return protocol.ok_reply(req.id, cmd.run(self._as_broker(), props))
            if cmd.name == "logs":
                return protocol.ok_reply(req.id, {"entries": self.log_tail.get(props["plugin"], [])})
        return protocol.ok_reply(req.id, {})

    def _as_broker(self) -> SimpleNamespace:
        """What the immediate commands read of omnibroker.broker.Broker: its event bus, omni.toml's error, the
        registered plugins (here: the plugins with a state) and each one's state."""
        states = self.events.states

        def registered(plugin: Any) -> DevServerState:
            if not isinstance(plugin, str) or plugin not in states:
                raise CommandError(ErrorCode.UNKNOWN_PLUGIN, f"no plugin {plugin!r} is registered")
            return states[plugin]
        return SimpleNamespace(events=self.events, config=SimpleNamespace(error=self.config_error),
                               registry=SimpleNamespace(plugins=states, get=registered), state_of=states.__getitem__)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self.pub.close(0)
        self.ctx.term()


class BridgeProcess:
    """The real `omnibridge` program in a temp runtime dir, in front of a FakeBroker (for load tests and benchmarks).

        with BridgeProcess(plugins=[f"p{i}" for i in range(10)]) as bp:
            bp.fake.publish(...); open(bp.url) in a browser (the URL with the token); bp.port, bp.token
    """

    def __init__(self, plugins: list[str] = (), extra_env: dict[str, str] | None = None, timeout: float = 20.0):
        import os
        import subprocess
        import sys
        import tempfile
        self.tmp = tempfile.mkdtemp(prefix="omni-fakebridge-")
        self.runtime = os.path.join(self.tmp, "run")
        os.mkdir(self.runtime, 0o700)
        control, events = f"ipc://{self.runtime}/control.sock", f"ipc://{self.runtime}/events.sock"
        self.plugins = list(plugins)
        self.fake = FakeBroker(control, events, self.plugins).start()
        env = dict(os.environ, OMNI_RUNTIME_DIR=self.runtime, OMNI_BRIDGE_PORT="0", OMNI_CONTROL=control,
                   OMNI_EVENTS=events)
        env.update(extra_env or {})
        self.env = env
        self.log_path = os.path.join(self.tmp, "omnibridge.log")
        self._log = open(self.log_path, "w")
        self.exe = os.path.join(os.path.dirname(sys.executable), "omnibridge")
        self.proc = subprocess.Popen([self.exe], env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.token = ""
        self.port, self.token = self._wait_files(timeout)

    def restart(self, timeout: float = 20.0) -> None:
        """Stop the bridge and start a new one (same environment: a fixed OMNI_BRIDGE_PORT keeps the port)."""
        import subprocess
        self._stop_proc()
        self.proc = subprocess.Popen([self.exe], env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.port, self.token = self._wait_files(timeout)

    def _wait_files(self, timeout: float) -> tuple[int, str]:
        """(port, token) from <runtime>/bridge.url, the file the bridge writes last (a new one after a restart)."""
        import os
        from urllib.parse import parse_qs, urlsplit
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"omnibridge exited {self.proc.returncode}: {self.logs()}")
            try:
                with open(os.path.join(self.runtime, "bridge.url")) as f:
                    url = urlsplit(f.read().strip())
                token = parse_qs(url.query)["token"][0]
                if token and token != self.token:
                    return int(url.port), token
            except (OSError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.05)        # files written once by another process: nothing to wait on
        raise TimeoutError(f"omnibridge did not write its URL within {timeout}s: {self.logs()}")

    @property
    def url(self) -> str:
        """The dashboard's URL with the token, as `omnictl dashboard` prints it."""
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    def logs(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def _stop_proc(self) -> None:
        import subprocess
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def close(self) -> None:
        import shutil
        self._stop_proc()
        self._log.close()
        self.fake.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "BridgeProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
