"""omni's real events in managed mode, read the way Omniview's frontend reads them (omniview_facts).

One real service (supervisord, broker, worker, Vite, go build, go-plugin) runs a copy of the example plugin, registered
with `add` and only a path (the id comes from plugin.yaml); a subscriber sees every event from before the start on.
Tests run in file order on that service.
"""
import json
import re
import urllib.request

import pytest

from support.example import GO_ENV, copy_example
from support.service import Service

from omnibroker import protocol

import omniview_facts as facts

PLUGIN = "hello"


def show(label: str, payload) -> None:
    """The payloads the report quotes (visible with pytest -s)."""
    print(f"\n--- {label}\n{json.dumps(payload, indent=1)[:1500]}")


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    plugin = copy_example(tmp_path_factory.mktemp("compat") / PLUGIN)
    service = Service()
    try:                        # a failed setup must not leave the service running
        service.plugin_dir = plugin
        service.start()
        service.events = service.subscribe(*protocol.TOPICS)
        yield service
    finally:
        service.cleanup()


def statuses(svc) -> list[dict]:
    return [e.payload for e in svc.events.seen if e.topic == protocol.STATUS and e.payload["pluginID"] == PLUGIN]


def test_add_with_only_a_path_takes_the_id_from_plugin_yaml(svc):
    state = svc.call("add", path=str(svc.plugin_dir), settings={"build": {"env": GO_ENV}})
    assert state["pluginID"] == PLUGIN
    assert state["lastBuildTime"] == facts.GO_ZERO_TIME, state        # before any build: Go's zero time
    assert facts.state_problems(state) == []


def test_start_to_ready_every_status_reads_as_omniview_would(svc):
    svc.call("start", plugin=PLUGIN)
    final = svc.events.wait(lambda e: e.topic == protocol.STATUS and e.payload["pluginID"] == PLUGIN
                            and facts.aggregate_status(e.payload) == "ready" and facts.frontend_loads_dev_ui(e.payload),
                            timeout=240, what="a status Omniview calls ready and would load the UI from").payload
    seen = statuses(svc)
    for st in seen:
        assert facts.state_problems(st) == [], st
    # Omniview loads the dev UI only from a Vite that answers: never while omni still says starting
    loads = [st for st in seen if facts.frontend_loads_dev_ui(st)]
    assert loads and all(st["viteURL"] for st in loads)
    first_load = loads[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{first_load['vitePort']}/", timeout=10) as r:
        assert r.status == 200                                       # it did answer when omni said ready
    assert [st["viteStatus"] for st in seen if st["viteStatus"] != "idle"][:1] == ["starting"]
    first_build = next(i for i, st in enumerate(seen) if st["goStatus"] == "building")
    assert first_build > 0 and all(st["lastBuildTime"] == facts.GO_ZERO_TIME for st in seen[:first_build + 1])
    assert facts.js_date_ok(final["lastBuildTime"]) and final["lastBuildTime"] != facts.GO_ZERO_TIME
    assert final["goStatus"] == "ready" and final["grpcConnected"]
    show("final status (managed)", final)
    show("aggregate statuses, in order", [facts.aggregate_status(st) for st in seen])


def test_the_entry_omniview_imports_is_served_and_exports_the_plugin_object(svc):
    state = svc.call("status", plugin=PLUGIN)
    with urllib.request.urlopen(f"{state['viteURL']}/src/entry.ts", timeout=10) as r:
        body = r.read().decode()
    # Vite's transform of ui/src/entry.ts: the named `plugin` export Omniview's validatePluginExports requires,
    # with a Routes array whose index route renders App
    assert r.status == 200 and re.search(r"export const plugin\s*=", body), body[:500]
    assert "Routes" in body and 'path: ""' in body and "Component: App" in body, body[:800]


def test_reload_events_carry_plugin_meta_and_build_errors_have_severity(svc):
    greeting = svc.plugin_dir / "pkg" / "greeting.go"
    good = greeting.read_text()
    mark = len(svc.events.seen)
    greeting.write_text(good.replace('const Greeting = "Hello"', 'const Greeting = "Hello" +'))
    err = svc.events.wait(lambda e: e.topic == protocol.RELOAD_ERROR, timeout=120, what="dev_reload_error")
    start = next(e for e in svc.events.seen[mark:] if e.topic == protocol.RELOAD_START)
    assert facts.reload_meta_problems(start.payload, PLUGIN) == []
    assert start.payload["name"] == "Hello" and start.payload["version"] == "0.1.0"    # from plugin.yaml
    assert facts.reload_error_problems(err.payload, PLUGIN) == []
    meta, text = err.payload
    assert meta == start.payload and "greeting.go" in text
    errors = [e for e in svc.events.seen[mark:] if e.topic == protocol.ERROR]
    assert errors and errors[-1].payload["pluginID"] == PLUGIN
    for e in errors[-1].payload["errors"]:
        assert facts.build_error_problems(e) == [], e
    first = errors[-1].payload["errors"][0]
    assert first["severity"] == "error" and first["file"] == "pkg/greeting.go" and first["line"] > 0
    failed = svc.wait_state(PLUGIN, lambda s: s["goStatus"] == "error", what="goStatus error")
    assert facts.aggregate_status(failed) == "error" and facts.state_problems(failed) == []
    show("plugin/dev_reload_start", start.payload)
    show("plugin/dev_reload_error", err.payload)
    show("plugin/devserver/error", errors[-1].payload)

    mark = len(svc.events.seen)
    greeting.write_text(good)
    done = svc.events.wait(lambda e: e.topic == protocol.RELOAD_COMPLETE, timeout=120, what="dev_reload_complete")
    assert facts.reload_meta_problems(done.payload, PLUGIN) == [] and done.payload == meta
    show("plugin/dev_reload_complete", done.payload)
    for st in statuses(svc):
        assert facts.state_problems(st) == [], st


def test_a_plugin_yaml_edit_shows_in_the_next_reload(svc):
    yaml_path = svc.plugin_dir / "plugin.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("version: 0.1.0", "version: 0.2.0"))
    svc.call("rebuild", plugin=PLUGIN)
    done = svc.events.wait(lambda e: e.topic == protocol.RELOAD_COMPLETE and e.payload.get("version") == "0.2.0",
                           timeout=120, what="dev_reload_complete with the new version")
    assert done.payload["id"] == PLUGIN


def test_an_invalid_plugin_yaml_leaves_reloads_working_with_the_minimal_meta_and_says_why(svc):
    yaml_path = svc.plugin_dir / "plugin.yaml"
    yaml_path.write_text("id: hello\nname: [Hello\nversion: 0.1.0\n")
    mark = len(svc.events.seen)
    svc.call("rebuild", plugin=PLUGIN)
    done = svc.events.wait(lambda e: e.topic == protocol.RELOAD_COMPLETE, timeout=120, what="dev_reload_complete")
    assert done.payload == {"id": PLUGIN}
    warn = [entry["message"] for e in svc.events.seen[mark:] if e.topic == protocol.LOG for entry in e.payload
            if entry["level"] == "warn" and "plugin.yaml" in entry["message"]]
    assert warn and f"{yaml_path}:3:" in warn[0] and "invalid YAML" in warn[0], warn
    show("dev_reload_complete with an invalid plugin.yaml, and the warning", [done.payload, warn[0]])


def test_the_plugin_ends_in_a_state_omniview_loads_from(svc):
    state = svc.call("status", plugin=PLUGIN)
    assert facts.frontend_loads_dev_ui(state) and facts.aggregate_status(state) == "ready", state
    assert facts.state_problems(state) == [], state
