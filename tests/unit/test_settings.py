"""The typed settings schema (omnibroker/settings.py) and the registry built on it: keys refused by name, types and
ranges checked, docs/protocol.md's table in step with the schema, every key the worker reads declared, errors located
by file:line, reload semantics, and registry changes that are all-or-nothing when the state file cannot be written."""
from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest

from omnibroker import registry, settings
from omnibroker.protocol import CommandError, Desired

REPO = Path(__file__).resolve().parents[2]


def doc_keys() -> set[str]:
    """The keys of docs/protocol.md's settings tables, dotted (`go.debounce_ms`, `service.vite_ports`)."""
    text = (REPO / "docs" / "protocol.md").read_text()
    body = text[text.index("## Per-plugin settings"):text.index("**Configuration errors.**")]
    keys = set()
    for line in body.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split(" | ")[0].lstrip("| ")
        names = re.findall(r"`([^`]+)`", cell)
        section = ""
        m = re.match(r"\[(\w+)\] (\w+)$", names[0])
        if m:
            section, names[0] = m.group(1) + ".", m.group(2)
        keys |= {section + n for n in names}
    return keys


def test_docs_table_is_the_schema():
    schema = set(settings.fields()) | {"path"} | {f"service.{k}" for k in settings._keys(settings.ServiceSettings)}
    assert doc_keys() == schema


def test_every_key_the_worker_reads_is_in_the_schema():
    """The worker reads typed fields: `ctx.settings.<section>.<key>`, `<part>.settings.<key>` (a part's own section,
    `vite_settings` / `go_settings`) and `ctx.settings.<key>`; no accessor with its own default is left."""
    sections = {"vite_settings": "vite", "go_settings": "go", **{s: s for s in settings.SECTIONS}}
    own = {"vite.py": "vite", "gopath.py": "go"}
    reads = set()
    for path in (REPO / "omniworker").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"\.setting\(|\b_s\(|\b_setting\(|settings\.get\(", text), path.name
        for first, second in re.findall(r"\bctx\.settings\.(\w+)(?:\.(\w+))?", text):
            if first not in sections or second:         # a whole section is read field by field (typed)
                reads.add(f"{sections[first]}.{second}" if first in sections else first)
        if path.name in own:
            reads |= {f"{own[path.name]}.{k}" for k in re.findall(r"\bself\.settings\.(\w+)", text)}
    assert reads, "found no settings reads: the patterns above are out of date"
    assert reads <= set(settings.fields()), reads - set(settings.fields())


@pytest.mark.parametrize("table, key, words", [
    ({"autostart": "yes"}, "autostart", "Expected `bool`, got `str`"),
    ({"autostrat": True}, "autostrat", "unknown key (known: autostart,"),
    ({"go": {"debounce_ms": -5}}, "go.debounce_ms", ">= 0"),
    ({"go": {"dbounce_ms": 5}}, "go.dbounce_ms", "unknown key"),
    ({"go": {"build_on_start": "sometimes"}}, "go.build_on_start", "Invalid enum value 'sometimes'"),
    ({"build": {"timeout_s": 0}}, "build.timeout_s", "> 0"),
    ({"build": {"command": 5}}, "build.command", "got `int`"),
    ({"build": {"env": {"A": [1]}}}, "build.env", "got `array`"),
    ({"handshake": {"min_port": 0}}, "handshake.min_port", ">= 1"),
    ({"handshake": {"min_port": 3000, "max_port": 2000}}, "handshake", "min_port must not exceed max_port"),
    ({"vite": {"start_timeout": "30"}}, "vite.start_timeout", "got `str`"),
    ({"external": {"debounce": 0.1, "debounce_ms": 100}}, "external.debounce_ms", "not both"),
    ({"log_lines": 0}, "log_lines", ">= 1"),
])
def test_bad_plugin_settings_name_the_key(table, key, words):
    with pytest.raises(settings.SettingsError) as info:
        settings.check_plugin(table)
    assert info.value.key == key and words in info.value.message, str(info.value)


@pytest.mark.parametrize("table, key, words", [
    ({"vite_ports": [1, 2]}, "vite_ports[0]", ">= 1024"),
    ({"vite_ports": [16000, 15000]}, "", "first must be below last"),
    ({"vite_ports": [15000]}, "vite_ports", "length >= 2"),
    ({"build_slots": 0}, "build_slots", ">= 1"),
    ({"build_slot": 2}, "build_slot", "unknown key"),
])
def test_bad_service_settings_name_the_key(table, key, words):
    with pytest.raises(settings.SettingsError) as info:
        settings.check_service(table)
    assert info.value.key == key and words in info.value.message, str(info.value)


def test_the_worker_gets_what_the_user_wrote_with_aliases_in_the_names_it_reads():
    table = {"vite": True, "go": {"debounce_ms": 100, "stop_grace_s": 3},
             "external": {"debounce_ms": 20}, "build": {"command": "go build ./pkg"}}
    typed, worker = settings.check_plugin(table)
    assert worker == {"vite": True, "go": {"debounce_ms": 100, "stop_grace": 3},
                      "external": {"debounce": 0.02}, "build": {"command": "go build ./pkg"}}
    assert typed.run_vite and typed.run_go and typed.go.stop_grace == 3.0
    assert typed.build.timeout_s == 600 and typed.external.debounce == pytest.approx(0.02)
    assert settings.check_plugin({"go": False})[0].run_go is False


def test_locate_finds_keys_and_falls_back_to_the_table():
    text = '[service]\nbuild_slots = 0\n\n[plugins.a]\npath = "x"\n[plugins.a.go]\n  debounce_ms = -5 # no\n'
    assert settings.locate(text, ("service", "build_slots")) == 2
    assert settings.locate(text, ("plugins", "a", "go", "debounce_ms")) == 7
    assert settings.locate(text, ("plugins", "a", "vite", "x")) == 4
    assert settings.locate(text, ("plugins", "b")) is None


# --- the registry ---------------------------------------------------------------------------------------------------
def write_config(path: Path, entries: dict[str, str]) -> None:
    path.write_text("".join(f'[plugins.{pid}]\npath = "{rel}"\n' for pid, rel in entries.items()))


@pytest.fixture
def reg(tmp_path) -> registry.Registry:
    for name in ("a", "b", "c", "user"):
        (tmp_path / name).mkdir()
    write_config(tmp_path / "omni.toml", {"a": "a", "b": "b"})
    return registry.Registry(str(tmp_path / "omni.toml"), str(tmp_path / "state.json"))


def test_reload_adds_removes_changes_and_leaves_the_users_plugins(reg, tmp_path):
    reg.add("user", str(tmp_path / "user"), {})
    reg.set_desired("b", Desired(mode="managed"))
    write_config(tmp_path / "omni.toml", {"b": "c", "c": "c", "user": "a"})
    result = reg.reload()
    assert (result.added, result.removed, result.changed) == (["c"], ["a"], ["b"])
    assert reg.config_error == ""
    assert reg.plugins["b"].spec.path == str(tmp_path / "c") and reg.plugins["b"].desired.mode == "managed"
    assert reg.plugins["user"].spec.path == str(tmp_path / "user")
    assert set(reg.plugins) == {"b", "c", "user"}
    nothing = reg.reload()
    assert (nothing.added, nothing.removed, nothing.changed) == ([], [], [])


def test_reload_of_a_broken_file_or_entry_keeps_what_runs(reg, tmp_path):
    config = tmp_path / "omni.toml"
    config.write_text('[plugins.a]\npath = "a"\n[plugins.b\n')
    result = reg.reload()
    assert (result.added, result.removed, result.changed) == ([], [], [])
    assert reg.config_error.startswith(f"{config}:3: ") and set(reg.plugins) == {"a", "b"}
    config.write_text('[plugins.a]\npath = "a"\n[plugins.b]\npath = "c"\nautostart = 1\n')
    result = reg.reload()
    assert (result.added, result.removed, result.changed) == ([], [], [])
    assert reg.config_error == (f"{config}:5: [plugins.b] autostart: Expected `bool`, got `int` (entry ignored)")
    assert reg.plugins["b"].spec.path == str(tmp_path / "b")


def test_a_failed_state_write_changes_nothing(reg, tmp_path, monkeypatch):
    def full(path, data, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    state_before = dict(reg.plugins), json.dumps(registry.msgspec.to_builtins(reg.state))
    monkeypatch.setattr(registry, "write_atomic", full)
    attempts = [lambda: reg.add("c", str(tmp_path / "c"), {}), lambda: reg.remove("a"),
                lambda: reg.set_desired("a", Desired(mode="managed")), lambda: reg.set_mode("b", "external"),
                reg.save]
    for attempt in attempts:
        with pytest.raises(CommandError) as info:
            attempt()
        assert info.value.code == "no_space" and "is full" in info.value.reason
    assert (dict(reg.plugins), json.dumps(registry.msgspec.to_builtins(reg.state))) == state_before
    assert reg.plugins["a"].desired.mode == "idle" and not (tmp_path / "state.json").exists()
