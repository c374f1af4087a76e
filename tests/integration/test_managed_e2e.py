"""Mode A through the whole stack: supervisord -> broker -> worker -> real Vite, real go build, real go-plugin.

One service for the module (a cold start costs a Go build and a Vite start); tests run in file order and each leaves
the plugin managed and ready.
"""
import os
import re
import signal
import urllib.request

import psutil
import pytest

from support.config import plugin_toml
from support.example import GREET, copy_example, greet_reply, greet_request
from support.service import Service, descendants

from omnibroker import protocol


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    plugin = copy_example(tmp_path_factory.mktemp("plugin") / "hello")
    service = Service(plugin_toml("hello", plugin, cookie=None))
    service.plugin_dir = plugin
    service.start()
    yield service
    service.cleanup()


def greet(svc, name="e2e", timeout=10.0) -> str:
    result = svc.call("invoke", wait=timeout + 5, plugin="hello", method=GREET, request=greet_request(name),
                      timeout=timeout)
    return greet_reply(result)


def ready(s):
    return s["mode"] == "managed" and s["goStatus"] == "ready" and s["grpcConnected"] and s["viteStatus"] == "ready"


def set_greeting(svc, text):
    path = svc.plugin_dir / "pkg" / "greeting.go"
    src = re.sub(r'const Greeting = ".*"', f'const Greeting = "{text}"', path.read_text())
    path.write_text(src)


def test_autostart_brings_vite_and_go_up(svc):
    state = svc.wait_state("hello", ready, timeout=90, what="managed and ready")
    assert 15173 <= state["vitePort"] < 15273
    assert state["viteURL"] == f"http://127.0.0.1:{state['vitePort']}"
    body = urllib.request.urlopen(f"{state['viteURL']}/src/entry.tsx", timeout=10).read().decode()
    assert "import" in body and "mount" in body
    assert greet(svc) == "Hello, e2e"
    assert (svc.home / "plugins" / "hello" / "bin" / "plugin").exists()
    entries = svc.call("logs", plugin="hello", count=500)["entries"]
    assert {"go-build", "vite", "plugin"} <= {e["source"] for e in entries}


def test_go_edit_rebuilds_and_reloads(svc):
    events = svc.subscribe()
    set_greeting(svc, "Howdy")
    events.wait(lambda e: e.topic == protocol.STATUS and e.payload["goStatus"] == "building", what="building")
    events.wait(lambda e: e.topic == protocol.RELOAD_COMPLETE, what="dev_reload_complete")
    state = svc.wait_state("hello", ready, what="ready again")
    assert state["lastBuildDuration"] > 0 and state["lastBuildTime"]
    assert greet(svc) == "Howdy, e2e"


def test_compile_error_keeps_old_binary_serving(svc):
    events = svc.subscribe()
    path = svc.plugin_dir / "pkg" / "greeting.go"
    good = path.read_text()
    path.write_text(good.replace('const Greeting = "Howdy"', 'const Greeting = "Howdy" +'))
    err = events.wait(lambda e: e.topic == protocol.ERROR, what="error event")
    first = err.payload["errors"][0]
    assert first["file"].endswith("greeting.go") and first["line"] > 0 and first["column"] > 0, first
    events.wait(lambda e: e.topic == protocol.RELOAD_ERROR, what="legacy dev_reload_error")
    svc.wait_state("hello", lambda s: s["goStatus"] == "error" and s["lastError"], what="goStatus error")
    assert greet(svc) == "Howdy, e2e"
    path.write_text(good)
    svc.wait_state("hello", ready, what="ready after the fix")


def test_rebuild_command_reloads(svc):
    events = svc.subscribe(protocol.RELOAD_COMPLETE)
    assert svc.call("rebuild", plugin="hello")
    events.wait(lambda e: e.payload["id"] == "hello", what="reload after rebuild")
    assert greet(svc) == "Howdy, e2e"


def test_worker_sigkill_leaves_no_orphans_and_state_is_restored(svc):
    state = svc.wait_state("hello", ready)
    worker = svc.wait_program("omniworker-hello")
    children = descendants(worker)
    assert {state["pluginPid"]} <= {p.pid for p in children}
    os.kill(worker, signal.SIGKILL)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphans after kill -9 of the worker: {[(p.pid, p.name()) for p in alive]}"
    svc.wait_program("omniworker-hello", not_pid=worker)
    back = svc.wait_state("hello", lambda s: ready(s) and s["workerPid"] != worker, timeout=60,
                          what="desired state restored by the new worker")
    assert back["vitePort"] == state["vitePort"]       # the port stays the plugin's
    assert greet(svc) == "Howdy, e2e"


def test_broker_sigkill_keeps_plugin_serving(svc):
    before = svc.wait_state("hello", ready)
    broker = svc.wait_program("omnibroker")
    os.kill(broker, signal.SIGKILL)
    svc.wait_program("omnibroker", not_pid=broker)
    svc.wait_ping()
    after = svc.wait_state("hello", lambda s: ready(s) and s["workerPid"] == before["workerPid"],
                           what="worker re-registered with its real state")
    assert after["pluginPid"] == before["pluginPid"] and after["vitePort"] == before["vitePort"]
    assert greet(svc) == "Howdy, e2e"


def test_stop_leaves_no_processes_then_start_again(svc):
    worker = svc.wait_program("omniworker-hello")
    svc.call("stop", plugin="hello")
    state = svc.wait_state("hello", lambda s: s["mode"] == "idle", what="idle")
    assert state["viteStatus"] == "stopped" and state["goStatus"] == "stopped" and not state["grpcConnected"]
    assert descendants(worker) == []
    reply = svc.request("invoke", plugin="hello", method=GREET, request="")
    assert reply.status == "error" and reply.code == "not_running"
    svc.call("start", plugin="hello")
    svc.wait_state("hello", ready, timeout=60, what="ready after start")
