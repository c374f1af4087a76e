"""A real omni service for tests: supervisord -n -c supervisor.d/omni.conf in a temp runtime dir and home.

Waits are on sockets and events with timeouts; nothing here sleeps to synchronise.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from typing import Any, Callable

import psutil
import zmq

from omnibroker import protocol
from omnibroker.client import Client, parse_event, subscribe_socket
from omnibroker.supervisor_link import proxy

from .example import REPO, VENV_BIN


class Service:
    """`with Service(config) as svc:` starts it and cleans it up (processes and temp dir) on the way out, also when
    it fails to start; or start() and cleanup() by hand."""

    def __init__(self, config_text: str = "", extra_env: dict[str, str] | None = None):
        self.tmp = Path(tempfile.mkdtemp(prefix="omni-test-"))
        self.runtime = self.tmp / "run"
        self.home = self.tmp / "home"
        self.runtime.mkdir(mode=0o700)
        self.home.mkdir()
        self.config = self.tmp / "omni.toml"
        self.config.write_text(config_text)
        self.env = dict(os.environ, OMNI_RUNTIME_DIR=str(self.runtime), OMNIVIEW_HOME=str(self.home),
                        OMNI_CONFIG=str(self.config), OMNI_BRIDGE_PORT="0",
                        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        for key in ("OMNI_CONTROL", "OMNI_EVENTS", "OMNI_WORKERS"):
            self.env.pop(key, None)
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self.ctx = zmq.Context()
        self.client = Client(self.endpoint("control"), timeout=5.0, retries=1, context=self.ctx)

    def __enter__(self) -> "Service":
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def endpoint(self, name: str) -> str:
        return f"ipc://{self.runtime}/{name}.sock"

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> dict:
        self.log = open(self.tmp / "supervisord.out", "w")
        self.proc = subprocess.Popen([str(VENV_BIN / "supervisord"), "-n", "-c", "supervisor.d/omni.conf"],
                                     cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self.wait_ping(timeout)

    def wait_ping(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"supervisord exited {self.proc.returncode}: {self.logs('supervisord.out')}")
            reply = self.request("ping", wait=0.5)
            if reply is not None and reply.status == "ok":
                return reply.result
        raise TimeoutError(f"no ping within {timeout}s: {self.logs('supervisord.out')}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.client.close()
        self.ctx.destroy(linger=0)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def logs(self, name: str, lines: int = 30) -> str:
        path = self.tmp / name if name == "supervisord.out" else self.runtime / name
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- control ---------------------------------------------------------------------------------------------------
    def request(self, command: str, wait: float = 5.0, **props: Any) -> protocol.Reply | None:
        try:
            return self.client.request(command, wait=wait, **props)
        except Exception:       # noqa: BLE001 - broker down: None, callers retry
            return None

    def call(self, command: str, wait: float = 30.0, **props: Any) -> Any:
        reply = self.client.request(command, wait=wait, **props)
        assert reply.status == "ok", f"{command} {props}: {reply.code}: {reply.reason}"
        return reply.result

    def raw(self, frames: list[bytes] | bytes, timeout: float = 5.0) -> dict:
        """Send raw frames on a fresh REQ socket; return the decoded reply."""
        sock = self.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint("control"))
        try:
            if isinstance(frames, bytes):
                sock.send(frames)
            else:
                sock.send_multipart(frames)
            assert sock.poll(int(timeout * 1000)), f"no reply to {frames!r:.60}"
            return protocol.decode_json(sock.recv_multipart()[-1])
        finally:
            sock.close(0)

    def wait_state(self, plugin: str, pred: Callable[[dict], bool], timeout: float = 30.0, what: str = "") -> dict:
        """Poll `status` every 50 ms (a cheap request answered inline) until pred holds."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            reply = self.request("status", plugin=plugin, wait=1.0)
            if reply is not None and reply.status == "ok":
                last = reply.result
                if pred(last):
                    return last
            time.sleep(0.05)    # polling a cheap status request; no event carries "the whole state is as desired"
        raise AssertionError(f"{plugin}: {what or 'state'} not reached in {timeout}s; last: {last}\n"
                             f"{self.logs(f'logs/omniworker-{plugin}.log')}")

    # --- events ----------------------------------------------------------------------------------------------------
    def subscribe(self, *topics: str) -> "EventStream":
        return EventStream(subscribe_socket(self.ctx, self.endpoint("events"), topics))

    def bridge_address(self, timeout: float = 30.0) -> tuple[int, str]:
        """The bridge's (port, token), once it has written both files into the runtime dir."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                port = int((self.runtime / "bridge.port").read_text())
                token = (self.runtime / "bridge.token").read_text().strip()
                if token:
                    return port, token
            except (OSError, ValueError):
                pass
            time.sleep(0.05)        # files written once by another process: nothing to wait on
        raise AssertionError(f"omnibridge did not write its port and token in {timeout}s:\n"
                             f"{self.logs('omnibridge.log')}")

    # --- supervisord -------------------------------------------------------------------------------------------------
    def rpc(self) -> xmlrpc.client.ServerProxy:
        """supervisord's XML-RPC root (namespaces `supervisor`, `omniworker`), as the broker reaches it."""
        return proxy(f"unix://{self.runtime}/supervisor.sock")

    def supervisor(self):
        return self.rpc().supervisor

    def program_pid(self, name: str) -> int | None:
        try:
            info = self.supervisor().getProcessInfo(name)
        except (xmlrpc.client.Fault, OSError):
            return None
        return info["pid"] if info["statename"] == "RUNNING" else None

    def wait_program(self, name: str, timeout: float = 20.0, not_pid: int | None = None) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.program_pid(name)
            if pid and pid != not_pid:
                return pid
            time.sleep(0.05)    # polling supervisord's XML-RPC: no event to wait on here
        raise AssertionError(f"program {name} not RUNNING (new pid) within {timeout}s")


class EventStream:
    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self.seen: list = []

    def next(self, timeout: float = 10.0):
        if not self.sock.poll(int(timeout * 1000)):
            return None
        ev = parse_event(self.sock.recv_multipart())
        self.seen.append(ev)
        return ev

    def wait(self, pred: Callable, timeout: float = 30.0, what: str = "event"):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout}s; last events: "
                                     f"{[(e.topic, e.payload) for e in self.seen[-5:]]}")
            ev = self.next(left)
            if ev is not None and pred(ev):
                return ev

    def close(self) -> None:
        self.sock.close(0)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
