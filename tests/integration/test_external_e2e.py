"""Mode B through the whole stack: the developer runs the plugin (`omnictl run-external`), omni attaches."""
import os
import signal
import subprocess

import psutil
import pytest

from support.example import GREET, VENV_BIN, copy_example, go_build, greet_reply, greet_request
from support.service import Service

from omnibroker import protocol


@pytest.fixture
def svc(tmp_path):
    plugin = copy_example(tmp_path / "hello", ui=False)
    go_build(plugin)
    service = Service()
    service.plugin_dir = plugin
    service.start()
    service.call("add", plugin="hello", path=str(plugin))
    yield service
    service.cleanup()


def greet(svc, name):
    return greet_reply(svc.call("invoke", plugin="hello", method=GREET, request=greet_request(name)))


def run_external(svc) -> subprocess.Popen:
    return subprocess.Popen([str(VENV_BIN / "omnictl"), "run-external", "hello", "--",
                             str(svc.plugin_dir / "build" / "bin" / "plugin")],
                            env=svc.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def connected(s):
    return s["mode"] == "external" and s["grpcConnected"]


def test_attach_invoke_detach_and_the_plugin_lives_on(svc):
    svc.call("attach", plugin="hello")
    runner = run_external(svc)
    try:
        state = svc.wait_state("hello", connected, what="attached")
        assert greet(svc, "ext") == "Hello, ext"
        info = svc.call("external_info", plugin="hello")["info"]
        assert info["pid"] == state["pluginPid"] and info["pluginId"] == "hello"
        plugin = psutil.Process(state["pluginPid"])
        # The worker dies: the developer's plugin does not, and the new worker attaches again.
        worker = svc.wait_program("omniworker-hello")
        os.kill(worker, signal.SIGKILL)
        svc.wait_state("hello", lambda s: connected(s) and s["workerPid"] != worker, what="reattached")
        assert plugin.is_running()
        svc.call("detach", plugin="hello")
        svc.wait_state("hello", lambda s: s["mode"] == "idle" and not s["grpcConnected"], what="detached")
        assert plugin.is_running() and runner.poll() is None
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(15)
    assert not (svc.home / "plugins" / "hello" / ".devinfo").exists()


def test_external_death_is_noticed_and_restart_followed(svc):
    svc.call("attach", plugin="hello")
    events = svc.subscribe(protocol.STATUS, protocol.RELOAD_COMPLETE)
    first = run_external(svc)
    try:
        state = svc.wait_state("hello", connected, what="attached")
        os.kill(state["pluginPid"], signal.SIGKILL)
        events.wait(lambda e: e.topic == protocol.STATUS and not e.payload["grpcConnected"]
                    and e.payload["mode"] == "external", timeout=2, what="death noticed within 2 s")
        first.wait(15)      # run-external exits with its plugin
        second = run_external(svc)
        try:
            events.wait(lambda e: e.topic == protocol.RELOAD_COMPLETE, what="followed the new process")
            new = svc.wait_state("hello", connected, what="connected to the new process")
            assert new["pluginPid"] != state["pluginPid"]
            assert greet(svc, "again") == "Hello, again"
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(15)
    finally:
        if first.poll() is None:
            first.kill()
