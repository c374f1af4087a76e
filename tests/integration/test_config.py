"""omni.toml at run time, against a real service: a broken file leaves the broker up and says what is wrong, a bad
entry is refused alone, a fixed file is picked up (watch and `reload`) without restarting anything, values are checked
against the settings schema, and a plugin whose directory does not exist is an error naming it."""
import json
import subprocess

import pytest

from support.example import copy_example
from support.service import Service

from omnibroker import protocol


@pytest.fixture
def svc_factory():
    made = []

    def make(text: str) -> Service:
        svc = Service(text)
        made.append(svc)
        svc.start()
        return svc
    yield make
    for svc in made:
        svc.cleanup()


def entry(plugin: str, path, extra: str = "") -> str:
    return f"[plugins.{plugin}]\npath = {json.dumps(str(path))}\n{extra}"


def programs(svc: Service) -> set[str]:
    return {p["name"] for p in svc.supervisor().getAllProcessInfo() if p["name"].startswith("omniworker-")}


def test_syntax_error_keeps_the_broker_up_and_a_fixed_file_is_picked_up(svc_factory, tmp_path):
    plugin_dir = copy_example(tmp_path / "p1", ui=False)
    good = entry("p1", plugin_dir)
    svc = svc_factory(good.replace("[plugins.p1]", "[plugins.p1"))
    ping = svc.call("ping")
    assert ping["configError"].startswith(f"{svc.config}:1: "), ping
    listed = svc.call("list")
    assert listed["plugins"] == [] and listed["configError"] == ping["configError"]
    assert svc.call("snapshot")["configError"] == ping["configError"]
    for command in ("ping", "list"):
        out = subprocess.run(["omnictl", command], env=svc.env, capture_output=True, text=True, timeout=20)
        assert out.returncode == 0 and f"config error: {svc.config}:1: " in out.stdout, out
    epoch = ping["epoch"]

    events = svc.subscribe(protocol.CONFIG, protocol.STATUS)
    tmp = svc.config.with_suffix(".new")
    tmp.write_text(good)
    tmp.replace(svc.config)         # as editors save: a new file renamed over the old one
    ev = events.wait(lambda e: e.topic == protocol.CONFIG, timeout=20, what="omni/config event")
    assert ev.payload == {"path": str(svc.config), "error": ""} and ev.meta.pluginID == ""
    events.wait(lambda e: e.topic == protocol.STATUS and e.payload["pluginID"] == "p1"
                and e.payload["workerStatus"] == "up", timeout=30, what="p1's worker up")
    ping = svc.call("ping")
    assert ping["configError"] == "" and ping["epoch"] == epoch, "the broker was restarted"
    assert programs(svc) == {"omniworker-p1"}

    # broken again: reported, nothing that runs is touched
    svc.config.write_text(good + "[plugins.p2\n")
    ev = events.wait(lambda e: e.topic == protocol.CONFIG, timeout=20, what="omni/config event")
    assert ev.payload["error"].startswith(f"{svc.config}:3: ")
    assert [p["pluginID"] for p in svc.call("list")["plugins"]] == ["p1"]
    assert programs(svc) == {"omniworker-p1"}


def test_bad_entries_are_refused_alone_with_file_and_line(svc_factory, tmp_path):
    ok = copy_example(tmp_path / "ok", ui=False)
    text = (entry("ok", ok) + entry("flag", ok, 'autostart = "yes"\n') + entry("neg", ok)
            + "[plugins.neg.go]\ndebounce_ms = -5\n" + entry("typo", ok, "autostrat = true\n")
            + "[service]\nvite_ports = [1, 2]\n")
    svc = svc_factory(text)
    error = svc.call("ping")["configError"]
    problems = error.split("; ")
    assert f"{svc.config}:5: [plugins.flag] autostart: Expected `bool`, got `str` (entry ignored)" in problems
    assert any(p.startswith(f"{svc.config}:9: [plugins.neg] go.debounce_ms:") for p in problems), problems
    assert any(p.startswith(f"{svc.config}:12: [plugins.typo] autostrat: unknown key") for p in problems), problems
    assert any(p.startswith(f"{svc.config}:14: [service] vite_ports") for p in problems), problems
    assert len(problems) == 4, problems
    assert [p["pluginID"] for p in svc.call("list")["plugins"]] == ["ok"]


def test_reload_adds_changes_and_removes_entries(svc_factory, tmp_path):
    a = copy_example(tmp_path / "a", ui=False)
    b = copy_example(tmp_path / "b", ui=False)
    svc = svc_factory(entry("a", a))
    svc.wait_state("a", lambda s: s["workerStatus"] == "up", what="a's worker up")
    pid_a = svc.program_pid("omniworker-a")
    mine = copy_example(tmp_path / "mine", ui=False)      # its plugin.yaml names "mine", as `add` requires
    svc.call("add", plugin="mine", path=str(mine))     # the user's: a reload never touches it
    svc.config.write_text(entry("b", b))
    result = svc.call("reload")
    assert result == {"configError": "", "added": ["b"], "removed": ["a"], "changed": []}, result
    assert programs(svc) == {"omniworker-b", "omniworker-mine"}
    svc.wait_state("b", lambda s: s["workerStatus"] == "up", what="b's worker up")
    assert svc.request("status", plugin="a").code == "unknown_plugin"
    assert pid_a not in [p["pid"] for p in svc.supervisor().getAllProcessInfo()]

    pid_b = svc.program_pid("omniworker-b")
    svc.config.write_text(entry("b", b, "[plugins.b.go]\ndebounce_ms = 100\n"))
    result = svc.call("reload")
    assert result["changed"] == ["b"] and result["configError"] == ""
    svc.wait_program("omniworker-b", not_pid=pid_b)    # restarted with the new spec
    assert svc.call("reload") == {"configError": "", "added": [], "removed": [], "changed": []}


def test_add_checks_settings_by_name(svc_factory, tmp_path):
    svc = svc_factory("")
    path = str(copy_example(tmp_path / "p", ui=False))
    for settings, words in (({"autostart": "yes"}, "autostart: Expected `bool`, got `str`"),
                            ({"go": {"debounce_ms": -5}}, "go.debounce_ms: Expected `float` >= 0.0"),
                            ({"bogus": 1}, "bogus: unknown key"),
                            ({"build": {"timeout_s": 0}}, "build.timeout_s"),
                            ({"handshake": {"min_port": 3000, "max_port": 2000}}, "min_port must not exceed")):
        reply = svc.request("add", plugin="p", path=path, settings=settings)
        assert reply.status == "error" and reply.code == "bad_property" and words in reply.reason, (settings, reply)
    assert svc.call("list")["plugins"] == []
    svc.call("add", plugin="p", path=path, settings={"external": {"debounce_ms": 20}, "build": {"timeout_s": 5}})
    spec = json.loads((svc.runtime / "state.json").read_text())["added"]["p"]
    assert spec["settings"] == {"external": {"debounce": 0.02}, "build": {"timeout_s": 5}}


def test_missing_plugin_dir_is_an_error_naming_it(svc_factory, tmp_path):
    gone = tmp_path / "gone"
    svc = svc_factory(entry("g", gone, "autostart = true\n"))
    words = f"the plugin directory {gone} does not exist"
    state = svc.wait_state("g", lambda s: s["workerStatus"] == "up" and s["lastError"] == words,
                           what="lastError naming the directory")
    assert state["mode"] == "idle"
    events = svc.subscribe(protocol.ERROR)
    ev = None
    for _ in range(20):     # each start publishes the error again: the first may come before the SUB is connected
        reply = svc.request("start", plugin="g")
        assert reply.status == "error" and reply.code == "no_plugin_dir" and reply.reason == words, reply
        ev = events.next(0.5)
        if ev is not None:
            break
    assert ev is not None and ev.payload["pluginID"] == "g" and ev.payload["errors"][0]["message"] == words, ev
    # checked again at each start: once the directory exists, start goes through
    gone.mkdir()
    svc.call("start", plugin="g", vite=False, go=False)
    state = svc.wait_state("g", lambda s: s["mode"] == "managed", what="managed")
    assert state["lastError"] != words
