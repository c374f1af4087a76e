"""The spine, with real supervisord, real ZeroMQ sockets and real processes."""
import json
import os
import signal
import stat
import time

import pytest
import zmq

from support.example import EXAMPLE, copy_example

from omnibroker import protocol


def test_add_creates_worker_program_that_registers(service):
    events = service.subscribe(protocol.STATUS)
    state = service.call("add", plugin="hello", path=str(EXAMPLE))
    assert state["pluginID"] == "hello" and state["mode"] == "idle"
    pid = service.wait_program("omniworker-hello")
    ev = events.wait(lambda e: e.payload["pluginID"] == "hello" and e.payload["workerStatus"] == "up",
                     what="worker up")
    assert ev.payload["workerPid"] == pid
    assert (service.runtime / "workers" / "omniworker-hello.conf").exists()
    listed = service.call("list")["plugins"]
    assert [p["pluginID"] for p in listed] == ["hello"]
    # remove: the program disappears from supervisord; a last status says so
    service.call("remove", plugin="hello")
    events.wait(lambda e: e.payload["pluginID"] == "hello" and not e.payload["registered"], what="removed status")
    names = [p["name"] for p in service.supervisor().getAllProcessInfo()]
    assert "omniworker-hello" not in names
    assert service.request("status", plugin="hello").code == "unknown_plugin"


def test_worker_kill_is_seen_and_restarted(service, tmp_path):
    service.call("add", plugin="hello", path=str(EXAMPLE))
    pid = service.wait_program("omniworker-hello")
    service.wait_state("hello", lambda s: s["workerStatus"] == "up", what="worker up")
    events = service.subscribe(protocol.STATUS)
    # Prove the subscription is live before the fault: another plugin's status event must arrive.
    service.call("add", plugin="probe", path=str(copy_example(tmp_path / "probe", ui=False, go=False)))
    events.wait(lambda e: e.payload["pluginID"] == "probe", what="subscription live")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    gone = events.wait(lambda e: e.payload["pluginID"] == "hello" and e.payload["workerStatus"] in ("exited", "lost"),
                       what="worker gone")
    seen_after = time.monotonic() - t0
    events.wait(lambda e: e.payload["workerStatus"] == "up" and e.payload["workerPid"] != pid, what="worker back")
    assert gone.payload["workerStatus"] == "exited"     # seen directly, not after the 3 s heartbeat timeout
    assert seen_after < 0.2, f"worker death took {seen_after:.3f}s to show"


def test_broker_kill_new_epoch_and_same_snapshot(service):
    service.call("add", plugin="hello", path=str(EXAMPLE))
    service.wait_state("hello", lambda s: s["workerStatus"] == "up", what="worker up")
    before = service.call("snapshot")
    broker = service.wait_program("omnibroker")
    os.kill(broker, signal.SIGKILL)
    service.wait_program("omnibroker", not_pid=broker)
    pong = service.wait_ping()
    assert pong["epoch"] != before["epoch"]
    service.wait_state("hello", lambda s: s["workerStatus"] == "up" and s["workerPid"] ==
                       before["plugins"]["hello"]["workerPid"], what="worker re-registered")
    after = service.call("snapshot")
    assert after["plugins"]["hello"] == before["plugins"]["hello"]


@pytest.mark.parametrize("frames, code", [
    (b"not json", "bad_request"),
    (b"{}", "bad_request"),
    (b'{"id": "x", "command": 42}', "bad_request"),
    (b'{"id": "x", "command": "status", "properties": []}', "bad_request"),
    (b'{"id": "x", "command": "nope", "properties": {}}', "unknown_command"),
    (b'{"id": "x", "command": "status", "properties": {"plugin": "ghost"}}', "unknown_plugin"),
    (b'{"id": "x", "command": "status", "properties": {"plugin": 7}}', "bad_property"),
    (b'{"id": "x", "command": "status", "properties": {"plugin": "a", "colour": 1}}', "bad_property"),
    (b"[" * 100_000, "bad_request"),
    ([b"a", b"b", b"c"], "bad_request"),
])
def test_malformed_requests_get_structured_errors(shared_service, frames, code):
    reply = shared_service.raw(frames)
    assert reply["status"] == "error" and reply["code"] == code and reply["reason"], reply
    assert shared_service.call("ping")["epoch"]


@pytest.mark.parametrize("plugin", ["../x", "a b", "", "x/y", ".hidden", "a" * 65, "..", "ä"])
def test_unsafe_plugin_ids_refused(shared_service, plugin):
    reply = shared_service.request("add", plugin=plugin, path=str(EXAMPLE))
    assert reply.status == "error" and reply.code == "bad_property", reply


def test_add_refuses_paths_that_are_not_directories(shared_service, tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    for path in (str(f), str(tmp_path / "missing"), "relative\x00nul"):
        reply = shared_service.request("add", plugin="p", path=path)
        assert reply.status == "error" and reply.code == "bad_property", reply


def test_burst_of_10000_events_has_no_gaps(shared_service, tmp_path):
    """A fake worker (a real DEALER on the worker socket) floods log events; a subscriber sees every seq."""
    svc = shared_service
    svc.call("add", plugin="flood", path=str(copy_example(tmp_path / "flood", ui=False, go=False)))
    # The real worker for `flood` registers first; our DEALER then registers as a newer incarnation and takes over.
    svc.wait_state("flood", lambda s: s["workerStatus"] == "up", what="worker up")
    sub = svc.subscribe(protocol.LOG)
    dealer = svc.ctx.socket(zmq.DEALER)
    dealer.connect(svc.endpoint("workers"))
    state = protocol.DevServerState(pluginID="flood")
    dealer.send_multipart([protocol.K_REGISTER, protocol.encode(protocol.Register(plugin="flood", pid=1,
                                                                                    state=state))])
    assert dealer.poll(5000) and dealer.recv_multipart()[0] == protocol.K_WELCOME
    time.sleep(0.2)     # SUB connect/subscription propagation has no event to wait on
    payload = protocol.encode(protocol.log_payload("flood", "manager", "info", "x" * 100))
    for _ in range(10_000):
        dealer.send_multipart([protocol.K_EVENT, protocol.LOG.encode(), payload])
    seqs = []
    while len(seqs) < 10_000:
        ev = sub.next(timeout=10)
        assert ev is not None, f"only {len(seqs)} of 10000 events arrived"
        if ev.meta.pluginID == "flood":
            seqs.append(ev.meta.seq)
    assert seqs == list(range(seqs[0], seqs[0] + 10_000))
    dealer.close(0)
    svc.call("remove", plugin="flood")


def test_runtime_dir_and_sockets_are_private(shared_service):
    mode = stat.S_IMODE(os.stat(shared_service.runtime).st_mode)
    assert mode == 0o700
    for name in ("control.sock", "events.sock", "workers.sock", "supervisor.sock"):
        st = os.stat(shared_service.runtime / name)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0, f"{name} is {oct(st.st_mode)}"


def test_desired_state_persists_across_broker_restart(service):
    service.call("add", plugin="hello", path=str(EXAMPLE))
    state_file = service.runtime / "state.json"
    doc = json.loads(state_file.read_text())
    assert "hello" in doc["added"]


def test_omnictl_table_json_and_exit_codes(shared_service):
    import subprocess
    env = shared_service.env
    out = subprocess.run(["omnictl", "ping"], env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.startswith("pong"), out
    out = subprocess.run(["omnictl", "--json", "list"], env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "plugins" in json.loads(out.stdout)
    out = subprocess.run(["omnictl", "status", "ghost"], env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 1 and "unknown_plugin" in out.stderr
    dead = dict(env, OMNI_CONTROL=f"ipc://{shared_service.tmp}/nobody.sock")
    out = subprocess.run(["omnictl", "--timeout", "0.2", "ping"], env=dead, capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 3 and "nobody.sock" in out.stderr
