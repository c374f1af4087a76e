"""Fault injection on the whole stack, under load: every component is killed in turn with real signals.

One service for the module (supervisord, broker, listener, bridge, one managed plugin with real Vite, real go build,
real go-plugin). While the faults happen, three threads run:
- InvokeLoad: `invoke` through the client library, ~20 calls/s, every outcome recorded;
- Ledger:     `invoke`/`status` on a raw DEALER with unique ids, never resent: each must be answered exactly once;
- SubWatch:   omnibroker.client.Subscriber, which must follow every broker restart through epoch/seq.
After each fault: the time to recover (measured, bounded by kit.FAULTS — the table of docs/reliability.md), no orphan
process, the desired state again, one plugin process and one Vite, the subscriber in sync with the broker.

Tests run in file order and each leaves the stack healthy for the next one.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time

import psutil
import pytest

import kit
from kit import (FAULTS, InvokeLoad, wait_dead, Ledger, Service, SubWatch, copy_example, find_child, greet, managed_ready,
                 plugin_toml, record, service_procs, set_greeting, settled_children, wait_no_orphans, wait_status,
                 worker_children)
from omnibroker import protocol

PLUGIN = "hello"
WORKER = f"omniworker-{PLUGIN}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    plugin_dir = copy_example(tmp_path_factory.mktemp("chaos") / PLUGIN)
    svc = Service(plugin_toml(PLUGIN, plugin_dir, cookie=None))
    svc.plugin_dir = plugin_dir
    svc.greeting = "Hello"
    svc.deaths = []             # (kill sent, broker gone): requests it had read, or that were on their way, may be lost
    svc.windows = []            # (fault key, t0, t_recovered)
    t0 = time.monotonic()
    try:
        svc.start()
        state, t_ready = wait_status(svc, PLUGIN, managed_ready, timeout=90, what="managed and ready")
    except BaseException:
        svc.cleanup()
        raise
    record("cold-start", ready_s=t_ready - t0)
    svc.vite_port = state["vitePort"]
    svc.subw = SubWatch(svc)
    svc.subw.start()
    svc.load = InvokeLoad(svc)
    svc.load.start()
    svc.ledger = Ledger(svc)
    svc.ledger.start()
    yield svc
    svc.load.stop()
    if svc.ledger.is_alive():
        svc.ledger.finish(grace=5)
    svc.subw.stop()
    svc.cleanup()


# --- helpers -----------------------------------------------------------------------------------------------------
NOTICE_S = 0.5      # after a broker's death, how long a client's libzmq may take to see its connection closed: a request
                    # written into the dead connection until then is lost (TCP acknowledges bytes, not their reading)


def broker_died(svc: Service, broker: int, t_kill: float) -> None:
    """Record a broker's death: from the signal that kills it (it may read requests until it is gone) to its end."""
    proc = psutil.Process(broker) if psutil.pid_exists(broker) else None
    assert not (proc and wait_dead([proc])), f"the broker {broker} survived its kill"
    svc.deaths.append((t_kill, time.monotonic()))


def desired(svc: Service, **extra):
    def pred(s: dict) -> bool:
        return (managed_ready(s) and s["vitePort"] == svc.vite_port
                and s["workerPid"] == svc.program_pid(WORKER)
                and all(s[k] == v for k, v in extra.items()))
    return pred


def healthy(svc: Service, timeout: float = 60.0, **extra) -> tuple[dict, float]:
    """The desired state, one plugin process and one Vite under the live worker, no orphan, subscriber in sync."""
    state, t = wait_status(svc, PLUGIN, desired(svc, **extra), timeout=timeout, what="the desired state")
    children = settled_children(svc, PLUGIN)
    assert len(children.get("plugin", [])) == 1 and len(children.get("vite", [])) == 1, children
    assert state["pluginPid"] in children["plugin"], (state["pluginPid"], children)
    assert "go" not in children, children
    wait_no_orphans(svc, [PLUGIN])
    svc.subw.wait_synced(svc, PLUGIN)
    return state, t


def recovered(svc: Service, key: str, t0: float, t_state: float, **values) -> float:
    """A fresh invoke answers; record the recovery (first good answer after the fault) and check its bound."""
    assert greet(svc) == f"{svc.greeting}, chaos"
    t_ok = time.monotonic()
    recovery = max(t_state, t_ok) - t0
    svc.windows.append((key, t0, t_ok))
    record(key, recovery_s=recovery, invokes=svc.load.summary(t0, t_ok), **values)
    bound = FAULTS[key].bound
    assert recovery < bound, f"{key}: recovered in {recovery:.2f}s, over the {bound}s bound"
    return recovery


# --- the faults, in order ----------------------------------------------------------------------------------------
def test_baseline(stack):
    svc = stack
    healthy(svc)
    assert svc.load.ok_after(0.0) and greet(svc) == "Hello, chaos"
    assert svc.load.summary() == {"ok": svc.load.summary().get("ok", 0)}, svc.load.summary()


def test_kill_broker(stack):
    svc = stack
    before, _ = healthy(svc)
    view0 = svc.subw.view()
    broker = svc.program_pid("omnibroker")
    t0 = time.monotonic()
    os.kill(broker, signal.SIGKILL)
    broker_died(svc, broker, t0)
    svc.wait_program("omnibroker", not_pid=broker)
    pong = svc.wait_ping()
    t_ping = time.monotonic()
    assert pong["epoch"] != view0["epoch"]
    state, t_state = wait_status(svc, PLUGIN, desired(svc, workerPid=before["workerPid"],
                                                      pluginPid=before["pluginPid"]), what="re-registered")
    # the worker's children were not touched: same plugin process, same Vite port
    assert state["pluginPid"] == before["pluginPid"] and state["vitePort"] == before["vitePort"]
    view = svc.subw.wait_synced(svc, PLUGIN)
    assert view["epoch"] == pong["epoch"] and view["resyncs"] > view0["resyncs"]
    healthy(svc)
    recovered(svc, "broker", t0, t_state, answers_s=t_ping - t0)


def test_kill_worker(stack):
    svc = stack
    before, _ = healthy(svc)
    worker = svc.program_pid(WORKER)
    children = [psutil.Process(p) for pids in worker_children(svc, PLUGIN).values() for p in pids]
    t0 = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    t_seen = svc.subw.first(t0, lambda topic, p, s: topic == protocol.STATUS and p == PLUGIN
                            and s["workerStatus"] == "exited", what="workerStatus exited")
    alive = wait_dead(children)
    assert not alive, f"children of the killed worker survive: {[(p.pid, p.name()) for p in alive]}"
    t_children = time.monotonic()
    svc.wait_program(WORKER, not_pid=worker)
    state, t_state = healthy(svc)
    assert state["workerPid"] != worker and state["vitePort"] == before["vitePort"]
    recovered(svc, "worker", t0, t_state, detected_s=t_seen - t0, children_dead_s=t_children - t0)


def test_kill_vite(stack):
    svc = stack
    before, _ = healthy(svc)
    vite = find_child(svc, PLUGIN, "vite")
    t0 = time.monotonic()
    vite.kill()
    t_seen = svc.subw.first(t0, lambda topic, p, s: topic == protocol.STATUS and p == PLUGIN
                            and s["viteStatus"] == "error", what="viteStatus error")
    svc.subw.first(t0, lambda topic, p, s: topic == protocol.ERROR and p == PLUGIN, what="error event")
    state, t_state = healthy(svc, workerPid=before["workerPid"], pluginPid=before["pluginPid"])
    assert find_child(svc, PLUGIN, "vite").pid != vite.pid
    recovered(svc, "vite", t0, t_state, detected_s=t_seen - t0)


def test_kill_plugin_binary(stack):
    svc = stack
    before, _ = healthy(svc)
    plugin = psutil.Process(before["pluginPid"])
    t0 = time.monotonic()
    plugin.kill()
    t_seen = svc.subw.first(t0, lambda topic, p, s: topic == protocol.STATUS and p == PLUGIN
                            and not s["grpcConnected"], what="grpcConnected false")
    state, t_state = healthy(svc, workerPid=before["workerPid"])
    assert state["pluginPid"] != before["pluginPid"] and state["restarts"] > before["restarts"]
    recovered(svc, "plugin", t0, t_state, detected_s=t_seen - t0)


def test_kill_running_go_build(stack):
    svc = stack
    before, _ = healthy(svc)
    binary = svc.home / "plugins" / PLUGIN / "bin" / "plugin"
    old_inode = binary.stat().st_ino
    build = None
    for attempt in range(3):                # a warm build can finish before we see it: edit again
        set_greeting(svc.plugin_dir, f"Chaos{attempt}")
        try:
            build = find_child(svc, PLUGIN, "go", timeout=10, poll=0.005)
            break
        except AssertionError:
            continue
    assert build is not None, "never caught a running go build"
    t0 = time.monotonic()
    os.killpg(os.getpgid(build.pid), signal.SIGKILL)
    t_err = svc.subw.first(t0, lambda topic, p, s: topic == protocol.ERROR and p == PLUGIN, what="error event")
    state, _ = wait_status(svc, PLUGIN, lambda s: s["goStatus"] == "error" and s["lastError"],
                           what="goStatus error")
    assert state["grpcConnected"] and state["pluginPid"] == before["pluginPid"], state
    assert re.search(r"signal|killed", state["lastError"], re.I), state["lastError"]
    # the old binary keeps serving, untouched on disk
    assert binary.stat().st_ino == old_inode
    assert greet(svc) == f"{svc.greeting}, chaos"
    wait_no_orphans(svc, [PLUGIN])
    assert "go" not in worker_children(svc, PLUGIN)
    # the next rebuild installs the new sources
    svc.call("rebuild", plugin=PLUGIN)
    svc.greeting = f"Chaos{attempt}"
    state, t_state = healthy(svc, workerPid=before["workerPid"])
    assert binary.stat().st_ino != old_inode
    recovered(svc, "gobuild", t0, t_state, error_event_s=t_err - t0)


def test_kill_event_listener(stack):
    svc = stack
    before, _ = healthy(svc)
    pid = svc.program_pid("omnievents")
    assert pid, "omnievents is not RUNNING"
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    svc.wait_program("omnievents", not_pid=pid)
    t_back = time.monotonic()
    state, t_state = healthy(svc, workerPid=before["workerPid"], pluginPid=before["pluginPid"])
    assert state == before, "killing the listener changed the plugin's state"
    recovered(svc, "listener", t0, max(t_state, t_back), restarted_s=t_back - t0)


def _bridge_ready(svc: Service, not_token: str | None, timeout: float = 20.0) -> tuple[int, str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            port = int((svc.runtime / "bridge.port").read_text())
            token = (svc.runtime / "bridge.token").read_text().strip()
            if token and token != not_token:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                try:
                    conn.request("GET", "/stats", headers={"Host": f"127.0.0.1:{port}"})
                    resp = conn.getresponse()
                    if resp.status == 200 and json.loads(resp.read()).get("brokerConnected"):
                        return port, token, time.monotonic()
                finally:
                    conn.close()
        except (OSError, ValueError):
            pass
        time.sleep(0.05)        # polling files another process writes, and its HTTP port
    raise AssertionError(f"the bridge did not come back within {timeout}s\n{svc.logs('omnibridge.log')}")


def test_kill_bridge(stack):
    svc = stack
    pid = svc.program_pid("omnibridge")
    if not pid:
        pytest.skip("the omnibridge program is not RUNNING")
    before, _ = healthy(svc)
    _, token, _ = _bridge_ready(svc, None)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    svc.wait_program("omnibridge", not_pid=pid, timeout=20)
    _, new_token, t_back = _bridge_ready(svc, token)
    state, t_state = healthy(svc, workerPid=before["workerPid"], pluginPid=before["pluginPid"])
    recovered(svc, "bridge", t0, max(t_state, t_back), serving_s=t_back - t0)


def first_lost(svc: Service, t0: float) -> float:
    """When the first status event after `t0` said the worker is lost."""
    return svc.subw.first(t0, lambda topic, p, s: topic == protocol.STATUS and p == PLUGIN
                          and s["workerStatus"] == "lost", timeout=6, what="workerStatus lost")


def test_sigstop_worker_then_sigcont(stack):
    svc = stack
    before, _ = healthy(svc)
    worker = svc.program_pid(WORKER)
    t0 = time.monotonic()
    os.kill(worker, signal.SIGSTOP)
    try:
        t_lost = first_lost(svc, t0)
    finally:
        os.kill(worker, signal.SIGCONT)
    t_cont = time.monotonic()
    assert t_lost - t0 < 4.0, f"marked lost after {t_lost - t0:.2f}s"
    state, t_state = healthy(svc, workerPid=worker, pluginPid=before["pluginPid"])
    assert svc.program_pid(WORKER) == worker, "SIGCONT in time must not restart the worker"
    recovered(svc, "sigstop-cont", t_cont, t_state, lost_after_s=t_lost - t0)


def test_sigstop_worker_is_restarted_and_late_sigcont_is_harmless(stack):
    svc = stack
    before, _ = healthy(svc)
    worker = svc.program_pid(WORKER)
    t0 = time.monotonic()
    os.kill(worker, signal.SIGSTOP)
    try:
        t_lost = first_lost(svc, t0)
        new = svc.wait_program(WORKER, not_pid=worker, timeout=25)
        t_restart = time.monotonic()
    finally:
        try:
            os.kill(worker, signal.SIGCONT)     # late: the old worker was SIGKILLed; nothing may come back to life
            late_cont = "delivered"
        except ProcessLookupError:
            late_cont = "no such process"
    assert t_lost - t0 < 4.0, f"marked lost after {t_lost - t0:.2f}s"
    state, t_state = healthy(svc)
    assert state["workerPid"] == new != worker
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
    recovered(svc, "sigstop", t0, t_state, lost_after_s=t_lost - t0, restarted_s=t_restart - t0,
              late_sigcont=late_cont)


def test_kill_supervisord_and_start_again(stack):
    svc = stack
    before, _ = healthy(svc)
    view0 = svc.subw.view()
    broker = svc.program_pid("omnibroker")
    assert broker, "omnibroker is not RUNNING"
    t0 = time.monotonic()
    os.kill(svc.proc.pid, signal.SIGKILL)
    svc.proc.wait(10)
    broker_died(svc, broker, t0)       # by its PDEATHSIG, a moment after supervisord
    # everything it ran dies with it: broker and workers by PDEATHSIG, the workers' children with them
    left = wait_no_orphans(svc, [PLUGIN], timeout=15)
    t_clean = time.monotonic()
    assert not left, f"left behind by supervisord's death: {left}"
    assert not service_procs(svc)
    svc.start()
    t_ping = time.monotonic()
    state, t_state = healthy(svc)
    assert state["vitePort"] == before["vitePort"] and state["workerPid"] != before["workerPid"]
    view = svc.subw.wait_synced(svc, PLUGIN)
    assert view["epoch"] != view0["epoch"] and view["resyncs"] > view0["resyncs"]
    recovered(svc, "supervisord", t0, t_state, all_dead_s=t_clean - t0, answers_s=t_ping - t0)


def test_every_request_answered_exactly_once(stack):
    svc = stack
    assert svc.windows, "no fault ran"
    svc.load.stop()
    svc.ledger.finish()
    acc = svc.ledger.accounting()
    view = svc.subw.view()
    record("accounting", ledger_sent=acc["sent"], ledger_lost=len(acc["lost"]), ledger_codes=acc["codes"],
           invokes=svc.load.summary(), invoke_ms=svc.load.latency_ms(), subscriber_resyncs=view["resyncs"], subscriber_gaps=view["gaps"],
           subscriber_events=svc.subw.count)
    # ledger: never a second answer, never an answer to something not asked
    assert not acc["duplicates"], f"answered twice: {acc['duplicates']}"
    assert not acc["unknown"] and not acc["undecodable"], acc
    # lost only what a dying broker had read or was sent as it died (within the command timeout before its death)
    for t, rid in acc["lost"]:
        assert any(kill - 30.0 <= t <= gone + NOTICE_S for kill, gone in svc.deaths), \
            f"request {rid} was never answered (sent at {t:.1f}; broker deaths {svc.deaths})"
    assert len(acc["lost"]) <= 3 * len(svc.deaths), acc["lost"]
    # the client library: every call got exactly one answer, ok or a clear error allowed by the fault at hand
    starts = sorted((t0, key) for key, t0, _ in svc.windows)
    unexpected = []
    for sent, done, outcome, code, reason in svc.load.window(0.0, float("inf")):
        if outcome == "ok":
            continue
        fault = next((key for t0, key in reversed(starts) if t0 <= done), None)
        if outcome != "error" or fault is None or code not in FAULTS[fault].allowed_errors or not reason:
            unexpected.append((fault, outcome, code, reason[:100]))
    assert not unexpected, f"calls not answered ok or with an allowed, clear error: {unexpected[:10]}"
    assert view["gaps"] == 0, f"the subscriber saw {view['gaps']} missing events"


def test_reliability_doc_has_the_same_table():
    """docs/reliability.md lists exactly the faults of kit.FAULTS with the same bounds."""
    doc = (kit.REPO / "docs" / "reliability.md").read_text()
    rows = {}
    for line in doc.splitlines():
        m = re.match(r"^\|\s*`([\w-]+)`\s*\|.*\|\s*<\s*([\d.]+)\s*s\s*\|", line)
        if m:
            rows[m.group(1)] = float(m.group(2))
    assert rows == {k: f.bound for k, f in FAULTS.items()}, rows
