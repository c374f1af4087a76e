"""A stand-in broker for the bridge's load tests and benchmarks (no supervisord, no workers).

It binds a control ROUTER and an events PUB on the endpoints given, answers `ping`, `snapshot` and `logs` (and every
other command with an empty ok), and publishes events stamped exactly like omnibroker/events.py (epoch, seq, ts,
pluginID), so the real `omnibridge` and the real dashboard run against it unchanged:

    fake = FakeBroker(control="ipc:///tmp/x/control.sock", events="ipc:///tmp/x/events.sock", plugins=["a", "b"])
    fake.start()                          # a thread answers control requests
    fake.publish(protocol.LOG, protocol.log_payload("a", "go-build", "info", "hi"), "a")
    fake.close()
"""
from __future__ import annotations

import threading
import time
from typing import Any

import zmq

from omnibroker import protocol
from omnibroker.events import new_epoch
from omnibroker.protocol import DevServerState, EventMeta


def running_state(plugin: str, vite_port: int = 0) -> DevServerState:
    return DevServerState(pluginID=plugin, mode="managed", devPath=f"/src/{plugin}", goStatus="ready",
                          viteStatus="idle", vitePort=vite_port, grpcConnected=True, workerStatus="up",
                          lastBuildTime=protocol.now_rfc3339(), lastBuildDuration=700_000_000)


class FakeBroker:
    def __init__(self, control: str, events: str, plugins: list[str] = ()):
        self.ctx = zmq.Context()
        self.control_endpoint = control
        self.events_endpoint = events
        self.epoch = new_epoch()
        self.seq = 0
        self.states: dict[str, DevServerState] = {p: running_state(p) for p in plugins}
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.log_tail: dict[str, list[dict]] = {}      # what `logs` answers, per plugin
        self.config_error = ""                          # `configError` in ping/list/snapshot
        self.answering = threading.Event()              # clear it to play a broker that does not answer
        self.answering.set()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, protocol.EVENTS_SNDHWM)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(events)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-broker", daemon=True)

    def start(self) -> "FakeBroker":
        self._thread.start()
        return self

    # --- events (call from the thread that created the broker) --------------------------------------------------------
    def publish(self, topic: str, payload: Any, plugin: str) -> EventMeta:
        with self.lock:
            self.seq += 1
            meta = EventMeta(epoch=self.epoch, seq=self.seq, ts=time.time(), pluginID=plugin)
            if topic == protocol.STATUS:
                self.states[plugin] = payload
        self.pub.send_multipart(protocol.event_frames(topic, payload, meta))
        return meta

    def status(self, state: DevServerState) -> EventMeta:
        return self.publish(protocol.STATUS, state, state.pluginID)

    def config(self, error: str, path: str = "/src/omni.toml") -> EventMeta:
        """What the broker does when omni.toml's problems change: `configError` and an omni/config event."""
        with self.lock:
            self.config_error = error
        from .hub import CONFIG
        return self.publish(CONFIG, {"path": path, "error": error}, "")

    def restart(self) -> None:
        """What a broker restart looks like to subscribers: a new epoch, seq from 0."""
        with self.lock:
            self.epoch = new_epoch()
            self.seq = 0

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
                except protocol.CommandError as e:
                    reply = protocol.error_reply(protocol.request_id_of([body]), e.code, e.reason)
                sock.send_multipart(envelope + [protocol.encode(reply)])
        finally:
            sock.close(0)

    def _answer(self, req: protocol.Request) -> protocol.Reply:
        with self.lock:
            self.requests.append({"command": req.command, "properties": req.properties})
            if req.command == "ping":
                return protocol.ok_reply(req.id, {"epoch": self.epoch, "version": protocol.VERSION,
                                                  "configError": self.config_error})
            if req.command == "snapshot":
                return protocol.ok_reply(req.id, {"epoch": self.epoch, "seq": self.seq, "plugins": {
                    pid: protocol.to_builtins(s) for pid, s in self.states.items()},
                    "configError": self.config_error})
            if req.command == "logs":
                return protocol.ok_reply(req.id, {"entries": self.log_tail.get(req.properties.get("plugin"), [])})
            if req.command == "list":
                return protocol.ok_reply(req.id, {"plugins": [protocol.to_builtins(s) for s in self.states.values()],
                                                  "configError": self.config_error})
        return protocol.ok_reply(req.id, {})

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
