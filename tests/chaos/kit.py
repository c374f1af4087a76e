"""Tools for the chaos suite (and the fuzz/security suites): load generators, an event watcher, orphan checks and
recovery timing, all against a real service (tests/support/service.py).

- InvokeLoad: a thread calling `invoke` through the client library (omnibroker.client.Client, Lazy Pirate retries),
  recording every call's outcome and when it was made.
- Ledger:     a thread sending control requests on a raw DEALER with unique ids and never resending: it proves each
  request is answered exactly once (a REQ socket would hide a second answer).
- SubWatch:   a thread running omnibroker.client.Subscriber (snapshot + epoch/seq resync) and keeping what it saw.
- service_procs / orphans: every process carrying this service's OMNI_RUNTIME_DIR in its environment (supervisord,
  its programs, the workers' Vite, go build and plugin children) and which of them are outside the tree they belong to.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import psutil
import zmq

from support.config import plugin_toml, toml_str  # noqa: F401 - the chaos tests import them from here
from support.example import (EXAMPLE, GO_ENV, GREET, REPO, copy_example, greet_reply,  # noqa: F401
                             greet_request, greeter_pb, set_greeting)
from support.service import Service, descendants  # noqa: F401

from omnibroker import protocol
from omnibroker.client import BrokerUnavailable, Client, CommandFailed, Subscriber


def greet(svc: Service, plugin: str = "hello", name: str = "chaos", timeout: float = 15.0) -> str:
    result = svc.call("invoke", plugin=plugin, method=GREET, request=greet_request(name), timeout=timeout)
    return greet_reply(result)


# --- load: invoke through the client library ------------------------------------------------------------------------
class InvokeLoad(threading.Thread):
    """Calls `invoke` in a loop through omnibroker.client.Client. Each call ends in exactly one outcome:
    ("ok", greeting) | ("error", code) | ("unavailable", "") (no broker answered after all the retries)."""

    def __init__(self, svc: Service, plugin: str = "hello", interval: float = 0.02, try_timeout: float = 4.0,
                 retries: int = 10):
        super().__init__(name=f"invoke-load-{plugin}", daemon=True)
        self.ctx = zmq.Context()
        self.client = Client(svc.endpoint("control"), timeout=try_timeout, retries=retries, context=self.ctx)
        self.plugin = plugin
        self.interval = interval
        self.records: list[tuple[float, float, str, str, str]] = []     # (sent, done, outcome, code/greeting, reason)
        self._halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        body = greet_request("load")
        while not self._halt.is_set():
            t0 = time.monotonic()
            try:
                reply = self.client.request("invoke", plugin=self.plugin, method=GREET, request=body)
            except BrokerUnavailable as e:
                rec = (t0, time.monotonic(), "unavailable", "", str(e))
            else:
                if reply.status == "ok":
                    try:
                        text = greet_reply(reply.result)
                        rec = (t0, time.monotonic(), "ok", text, "")
                    except Exception as e:      # noqa: BLE001 - an ok reply we cannot read is a failure
                        rec = (t0, time.monotonic(), "bad", "", repr(e))
                else:
                    rec = (t0, time.monotonic(), "error", reply.code, reply.reason)
            with self.lock:
                self.records.append(rec)
            self._halt.wait(self.interval)      # load pacing, not synchronisation

    def stop(self) -> None:
        self._halt.set()
        self.join(120)
        self.client.close()
        self.ctx.destroy(linger=0)

    def window(self, t0: float, t1: float) -> list[tuple]:
        with self.lock:
            return [r for r in self.records if t0 <= r[0] <= t1 or t0 <= r[1] <= t1]

    def summary(self, t0: float = 0.0, t1: float = float("inf")) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.window(t0, t1):
            key = r[2] if r[2] != "error" else f"error:{r[3]}"
            out[key] = out.get(key, 0) + 1
        return out

    def latency_ms(self) -> dict[str, float]:
        with self.lock:
            lat = sorted((r[1] - r[0]) * 1000 for r in self.records if r[2] == "ok")
        if not lat:
            return {}
        return {"p50": round(lat[len(lat) // 2], 1), "p99": round(lat[int(len(lat) * 0.99)], 1),
                "max": round(lat[-1], 1)}

    def ok_after(self, t: float, timeout: float = 30.0) -> float:
        """Monotonic time of the first ok reply to a call made after t (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for r in self.records:
                    if r[0] >= t and r[2] == "ok":
                        return r[1]
            time.sleep(0.05)    # polling the thread's list
        raise AssertionError(f"no successful invoke after the fault within {timeout}s; "
                             f"last: {self.records[-3:] if self.records else None}")


# --- exactly-once ledger: raw DEALER, unique ids, never resent ---------------------------------------------------------
class Ledger(threading.Thread):
    def __init__(self, svc: Service, plugin: str = "hello", interval: float = 0.1):
        super().__init__(name="ledger", daemon=True)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
        self.sock.connect(svc.endpoint("control"))
        self.plugin = plugin
        self.interval = interval
        self.sent: dict[str, float] = {}
        self.replies: dict[str, list[tuple[float, str, str]]] = {}
        self.unknown: list[Any] = []
        self.undecodable = 0
        self._sending = threading.Event()
        self._sending.set()
        self._halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        n = 0
        body = greet_request("ledger")
        next_send = time.monotonic()
        while not self._halt.is_set():
            now = time.monotonic()
            if self._sending.is_set() and now >= next_send:
                n += 1
                rid = f"L-{n}"
                if n % 2:
                    req = protocol.Request(id=rid, command="invoke",
                                           properties={"plugin": self.plugin, "method": GREET, "request": body})
                else:
                    req = protocol.Request(id=rid, command="status", properties={"plugin": self.plugin})
                with self.lock:
                    self.sent[rid] = now
                self.sock.send_multipart([b"", protocol.encode(req)])
                next_send = now + self.interval
            if self.sock.poll(20):
                frames = self.sock.recv_multipart()
                try:
                    reply = protocol.decode_reply(frames[-1])
                except Exception:       # noqa: BLE001
                    self.undecodable += 1
                    continue
                with self.lock:
                    if str(reply.id) in self.sent:
                        self.replies.setdefault(str(reply.id), []).append(
                            (time.monotonic(), reply.status, reply.code))
                    else:
                        self.unknown.append(reply.id)

    def finish(self, grace: float = 40.0) -> None:
        """Stop sending; wait (bounded) for the outstanding requests' replies; stop."""
        self._sending.clear()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self.lock:
                outstanding = [r for r in self.sent if r not in self.replies]
                oldest = min((self.sent[r] for r in outstanding), default=None)
            if not outstanding or (oldest is not None and time.monotonic() - oldest > 35.0):
                break
            time.sleep(0.1)     # waiting for the thread to read replies
        self._halt.set()
        self.join(10)
        self.sock.close(0)
        self.ctx.destroy(linger=0)

    def accounting(self) -> dict[str, Any]:
        with self.lock:
            lost = sorted((t, rid) for rid, t in self.sent.items() if rid not in self.replies)
            dup = {rid: r for rid, r in self.replies.items() if len(r) > 1}
            codes: dict[str, int] = {}
            for rs in self.replies.values():
                key = rs[0][1] if rs[0][1] == "ok" else f"error:{rs[0][2]}"
                codes[key] = codes.get(key, 0) + 1
            return {"sent": len(self.sent), "answered": len(self.replies), "lost": lost, "duplicates": dup,
                    "unknown": list(self.unknown), "undecodable": self.undecodable, "codes": codes}


# --- subscriber -------------------------------------------------------------------------------------------------------
class SubWatch(threading.Thread):
    """omnibroker.client.Subscriber in a thread; keeps status/error events with the time they arrived."""

    def __init__(self, svc: Service):
        super().__init__(name="subwatch", daemon=True)
        self.ctx = zmq.Context()
        self.client = Client(svc.endpoint("control"), timeout=2.0, retries=2, context=self.ctx)
        self.sub = Subscriber(self.client, svc.endpoint("events"))
        self.events: list[tuple[float, str, str, Any]] = []     # (t, topic, pluginID, payload) of status/error
        self.count = 0
        self.failures = 0
        self._halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                for ev in self.sub.events(timeout=0.2):
                    self.count += 1
                    if ev.topic in (protocol.STATUS, protocol.ERROR, protocol.RELOAD_ERROR):
                        with self.lock:
                            self.events.append((time.monotonic(), ev.topic, ev.meta.pluginID, ev.payload))
                    if self._halt.is_set():
                        break
            except (BrokerUnavailable, CommandFailed):
                self.failures += 1      # snapshot during a broker outage: the next event retries it
            except zmq.ZMQError:
                if self._halt.is_set():
                    break
                raise

    def stop(self) -> None:
        self._halt.set()
        self.join(30)
        self.sub.close()
        self.client.close()
        self.ctx.destroy(linger=0)

    def view(self) -> dict[str, Any]:
        s = self.sub
        return {"epoch": s.epoch, "seq": s.seq, "resyncs": s.resyncs, "gaps": s.gaps, "states": dict(s.states)}

    def first(self, t0: float, pred: Callable[[str, str, Any], bool], timeout: float = 30.0,
              what: str = "event") -> float:
        """Arrival time of the first status/error event after t0 matching pred(topic, plugin, payload)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for t, topic, plugin, payload in self.events:
                    if t >= t0 and pred(topic, plugin, payload):
                        return t
            time.sleep(0.02)    # polling the thread's list
        raise AssertionError(f"no {what} within {timeout}s")

    def wait_synced(self, svc: Service, plugin: str, timeout: float = 20.0) -> dict:
        """The subscriber's view equals the broker's: same epoch, same state for `plugin`."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            pong = svc.request("ping", wait=1.0)
            status = svc.request("status", plugin=plugin, wait=1.0)
            view = self.view()
            if pong is not None and status is not None and status.status == "ok":
                last = (pong.result["epoch"], view["epoch"], status.result, view["states"].get(plugin))
                if view["epoch"] == pong.result["epoch"] and view["states"].get(plugin) == status.result:
                    return view
            time.sleep(0.05)    # the subscriber thread applies events asynchronously
        raise AssertionError(f"subscriber not resynced within {timeout}s: {last}")


# --- processes ------------------------------------------------------------------------------------------------------
def service_procs(svc: Service) -> list[psutil.Process]:
    """Live processes belonging to this service instance: they carry its OMNI_RUNTIME_DIR in their environment."""
    want = str(svc.runtime)
    out = []
    for p in psutil.process_iter(["status"]):
        if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if p.environ().get("OMNI_RUNTIME_DIR") == want:
                out.append(p)
        except psutil.Error:
            continue
    return out


def kind_of(p: psutil.Process) -> str:
    try:
        name = p.name()
        cmd = p.cmdline()
    except psutil.Error:
        return "gone"
    joined = " ".join(cmd)
    if name == "node" or "/.bin/vite" in joined or "vite/bin" in joined:
        return "vite"
    if cmd and cmd[0].endswith("/bin/plugin"):
        return "plugin"
    if name in ("go", "compile", "link", "asm", "cgo", "vet") or (cmd and os.path.basename(cmd[0]) == "go"):
        return "go"
    if "omniworker.worker" in joined:
        return "worker"
    if name == "setpriv":
        return "setpriv"
    return name


def wait_dead(procs: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """Wait until every process is gone or a zombie (dead, waiting for its new parent to reap it); the live rest."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)    # polling the process table


def tree_pids(pid: int | None) -> set[int]:
    if not pid:
        return set()
    return {pid} | {p.pid for p in descendants(pid)}


def orphans(svc: Service, plugins: list[str]) -> list[tuple[int, str, str]]:
    """Processes of this service outside the tree they belong in: anything not under supervisord, and any Vite, go or
    plugin process not under its plugin's live worker."""
    sup = svc.proc.pid if svc.proc is not None and svc.proc.poll() is None else None
    sup_tree = tree_pids(sup)
    worker_tree: set[int] = set()
    if sup is not None:
        for plugin in plugins:
            worker_tree |= tree_pids(svc.program_pid(f"omniworker-{plugin}"))
    bad = []
    for p in service_procs(svc):
        kind = kind_of(p)
        if kind == "gone":
            continue
        if p.pid not in sup_tree or (kind in ("vite", "plugin", "go") and p.pid not in worker_tree):
            try:
                bad.append((p.pid, kind, " ".join(p.cmdline())[:120]))
            except psutil.Error:
                continue
    return bad


def wait_no_orphans(svc: Service, plugins: list[str], timeout: float = 10.0,
                    allow: Callable[[tuple], bool] | None = None) -> list[tuple]:
    """Wait until no orphan is left (PDEATHSIG and process-group kills take a moment); returns the allowed ones left."""
    deadline = time.monotonic() + timeout
    while True:
        left = orphans(svc, plugins)
        allowed = [o for o in left if allow is not None and allow(o)]
        rest = [o for o in left if o not in allowed]
        if not rest:
            return allowed
        if time.monotonic() > deadline:
            raise AssertionError(f"orphan processes {timeout}s after the fault: {rest}")
        time.sleep(0.1)     # polling the process table: no event to wait on


def worker_children(svc: Service, plugin: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    worker = svc.program_pid(f"omniworker-{plugin}")
    for p in descendants(worker) if worker else []:
        out.setdefault(kind_of(p), []).append(p.pid)
    return out


def settled_children(svc: Service, plugin: str, timeout: float = 5.0) -> dict[str, list[int]]:
    """worker_children once at most one plugin process is left: a plugin replaced by a reload is retired
    RETIRE_AFTER (0.25 s) after the switch, so until then there are two (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while len((children := worker_children(svc, plugin)).get("plugin", [])) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)    # polling the process table: no event to wait on
    return children


def find_child(svc: Service, plugin: str, kind: str, timeout: float = 20.0, poll: float = 0.02) -> psutil.Process:
    """A live child of the plugin's worker of the given kind (polling the process table)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker = svc.program_pid(f"omniworker-{plugin}")
        for p in descendants(worker) if worker else []:
            if kind_of(p) == kind:
                return p
        time.sleep(poll)    # polling the process table
    raise AssertionError(f"no {kind} process under the {plugin} worker within {timeout}s")


# --- state ------------------------------------------------------------------------------------------------------------
def managed_ready(s: dict, vite: bool = True) -> bool:
    return (s["mode"] == "managed" and s["goStatus"] == "ready" and s["grpcConnected"] and s["workerStatus"] == "up"
            and (s["viteStatus"] == "ready" if vite else True))


def wait_status(svc: Service, plugin: str, pred: Callable[[dict], bool], timeout: float = 30.0,
                what: str = "state") -> tuple[dict, float]:
    """Service.wait_state, plus the monotonic time it held (recovery times are measured with it)."""
    return svc.wait_state(plugin, pred, timeout, what), time.monotonic()


# --- the faults table (docs/reliability.md has the same rows; test_faults checks both) ------------------------------
class Fault:
    def __init__(self, key: str, fault: str, behaviour: str, bound: float, allowed_errors: tuple[str, ...] = ()):
        self.key = key
        self.fault = fault
        self.behaviour = behaviour
        self.bound = bound                      # seconds: recovery must be faster than this
        self.allowed_errors = allowed_errors    # invoke error codes acceptable while this fault is recovering


FAULTS = {f.key: f for f in [
    Fault("broker", "kill -9 omnibroker",
          "supervisord restarts it with a new epoch; workers re-register with their real state (plugin, Vite and "
          "port untouched); clients' Lazy Pirate retries reach the new broker", 10.0),
    Fault("worker", "kill -9 omniworker-hello",
          "pidfd: `workerStatus: exited` at once, its Vite/plugin die with it (PDEATHSIG); supervisord restarts it; "
          "the broker re-applies the desired state on the same Vite port", 30.0,
          ("worker_unavailable", "not_running", "timeout")),
    Fault("vite", "kill -9 the Vite (node) process",
          "`viteStatus: error` + error event, restarted on the same port after a 1 s backoff; invokes unaffected",
          15.0),
    Fault("plugin", "kill -9 the plugin binary",
          "`grpcConnected: false` at once, restarted from the installed binary after 0.25 s; invokes in flight wait "
          "for it", 10.0, ("not_running",)),
    Fault("gobuild", "kill -9 the process group of a running `go build`",
          "error event naming the signal, `goStatus: error`, the old binary keeps serving; the next save or "
          "`rebuild` installs the new one", 30.0),
    Fault("listener", "kill -9 omnievents",
          "supervisord restarts the listener; nothing else changes (the broker's pidfd watch does not depend on it)",
          10.0),
    Fault("bridge", "kill -9 omnibridge",
          "supervisord restarts it; a new token, the new instance resnapshots from the broker", 15.0),
    Fault("sigstop-cont", "SIGSTOP the worker, SIGCONT after it is marked lost",
          "`workerStatus: lost` after 3 s of silence; after SIGCONT it re-registers (same pid), no duplicate "
          "children, calls made meanwhile are answered", 10.0, ("timeout",)),
    Fault("sigstop", "SIGSTOP the worker and leave it",
          "`workerStatus: lost` after 3 s; after 10 s more the broker SIGKILLs it and supervisord restarts it; the "
          "calls it held get `worker_unavailable`; a later SIGCONT finds nothing to resume", 30.0,
          ("worker_unavailable", "not_running", "timeout")),
    Fault("supervisord", "kill -9 supervisord, then start it again on the same runtime dir",
          "broker and workers die with it (PDEATHSIG), their children too; the new supervisord restores every "
          "plugin's desired state from state.json/omni.toml, same Vite port", 45.0,
          ("worker_unavailable", "not_running", "timeout")),
]}

RESULTS: dict[str, dict[str, Any]] = {}


def record(key: str, **values: Any) -> None:
    RESULTS.setdefault(key, {}).update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in values.items()})
