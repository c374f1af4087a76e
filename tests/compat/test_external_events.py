"""omni's real events in external mode, read the way Omniview's frontend reads them (omniview_facts): a real service,
the example plugin run by the developer with `omnictl run-external --vite`, and `.devinfo` files as the SDK writes them.
"""
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from support.example import VENV_BIN, copy_example, go_build
from support.service import Service

from omnibroker import protocol

import omniview_facts as facts


def run_external(svc, plugin_id: str, plugin: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([str(VENV_BIN / "omnictl"), "run-external", plugin_id, *flags, "--dir", str(plugin), "--",
                             str(plugin / "build" / "bin" / "plugin")],
                            env=svc.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
    return err.decode(errors="replace")


def replace_devinfo(path: Path, doc: dict) -> None:
    """As the SDK does it: a temp file in the same directory, renamed over `.devinfo`."""
    tmp = path.with_name(".devinfo.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@pytest.fixture
def svc(tmp_path):
    plugin = copy_example(tmp_path / "hello")
    go_build(plugin)
    service = Service()
    try:                        # a failed setup (start, add) must not leave the service running
        service.plugin_dir = plugin
        service.start()
        service.call("add", path=str(plugin))
        service.events = service.subscribe(protocol.STATUS)
        yield service
    finally:
        service.cleanup()


def test_attach_says_where_the_sdk_writes_when_omniview_home_moves_it(svc):
    state = svc.call("attach", plugin="hello")
    sdk_file = os.path.expanduser("~/.omniview/plugins/hello/.devinfo")
    assert svc.env["OMNIVIEW_HOME"] != os.path.expanduser("~/.omniview")
    assert sdk_file in state["lastError"] and "omnictl run-external hello" in state["lastError"], state
    assert str(svc.home / "plugins" / "hello" / ".devinfo") in state["lastError"]


def test_external_statuses_read_as_omniview_would(svc):
    svc.call("attach", plugin="hello")
    runner = run_external(svc, "hello", svc.plugin_dir, "--vite")
    devinfo = svc.home / "plugins" / "hello" / ".devinfo"
    try:
        up = svc.events.wait(lambda e: e.payload["grpcConnected"] and e.payload["viteStatus"] == "ready",
                             timeout=120, what="attached with Vite ready").payload
        # Omniview's external mode: Vite "ready" as soon as the .devinfo names a vitePort that answers
        assert up["mode"] == "external" and up["goStatus"] == "running" and up["lastError"] == ""
        assert facts.aggregate_status(up) == "ready" and facts.frontend_loads_dev_ui(up), up
        print(f"\n--- external, attached\n{json.dumps(up, indent=1)}")

        # An invalid .devinfo replaces the valid one: omni lets go, and the state says so consistently.
        good = json.loads(devinfo.read_text())
        replace_devinfo(devinfo, dict(good, pluginId="someone-else"))
        bad = svc.events.wait(lambda e: not e.payload["grpcConnected"], timeout=30, what="detached").payload
        assert bad["goStatus"] == "error" and "someone-else" in bad["lastError"], bad     # the first such event
        assert facts.aggregate_status(bad) == "error" and not facts.frontend_loads_dev_ui(bad)
        print(f"\n--- external, after an invalid .devinfo\n{json.dumps(bad, indent=1)}")

        # The SDK's optional fields left out (omitempty): the directory names the plugin.
        bare = {k: v for k, v in good.items() if k not in ("pluginId", "version", "startedAt")}
        replace_devinfo(devinfo, bare)
        back = svc.events.wait(lambda e: e.payload["grpcConnected"], timeout=30, what="attached again").payload
        assert back["goStatus"] == "running" and back["pluginPid"] == good["pid"] and back["lastError"] == ""
        for ev in svc.events.seen:
            assert facts.state_problems(ev.payload) == [], ev.payload
    finally:
        stop(runner)
    gone = svc.wait_state("hello", lambda s: not s["grpcConnected"], timeout=30, what="plugin gone")
    assert gone["goStatus"] == "stopped" and facts.aggregate_status(gone) in ("stopped", "connecting")
    assert facts.state_problems(gone) == []


def test_run_external_takes_the_handshake_from_omni_toml(tmp_path):
    """The example binary wants the cookie OMNIVIEW=hello; registered as "greeter", only omni.toml's
    `[plugins.greeter.handshake] cookie_value` makes run-external hand it over."""
    plugin = copy_example(tmp_path / "greeter", ui=False)
    go_build(plugin)
    svc = Service(f'[plugins.greeter]\npath = "{plugin}"\n[plugins.greeter.handshake]\ncookie_value = "hello"\n')
    try:
        svc.start()
        svc.call("attach", plugin="greeter")
        runner = run_external(svc, "greeter", plugin)
        try:
            state = svc.wait_state("greeter", lambda s: s["grpcConnected"], timeout=60, what="attached")
            assert state["goStatus"] == "running"
        finally:
            err = stop(runner)
        assert "magic cookie" not in err, err
    finally:
        svc.cleanup()
