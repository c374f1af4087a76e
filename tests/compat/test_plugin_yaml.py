"""plugin.yaml on `add` against a real service, through `omnictl` as a user types it."""
import json
import subprocess

import pytest

from support.example import VENV_BIN, copy_example


def omnictl(svc, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "omnictl"), *args], env=svc.env, capture_output=True, text=True,
                          timeout=60)


def plugin_dir(tmp_path, name: str, yaml_text: str | None = None):
    d = copy_example(tmp_path / name, ui=False, go=False)
    if yaml_text is not None:
        (d / "plugin.yaml").write_text(yaml_text)
    return d


def test_omnictl_add_with_only_a_path_registers_plugin_yaml_id(shared_service, tmp_path):
    d = plugin_dir(tmp_path, "from-yaml")
    done = omnictl(shared_service, "--json", "add", "--path", str(d))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pluginID"] == "from-yaml"
    assert shared_service.call("status", plugin="from-yaml")["devPath"] == str(d)


def test_an_id_that_differs_from_plugin_yaml_is_refused_naming_both(shared_service, tmp_path):
    d = plugin_dir(tmp_path, "yaml-id")
    done = omnictl(shared_service, "add", "other-id", "--path", str(d))
    assert done.returncode == 1
    assert "'other-id'" in done.stderr and "'yaml-id'" in done.stderr and "bad_property" in done.stderr, done.stderr
    assert shared_service.request("status", plugin="other-id").code == "unknown_plugin"


@pytest.mark.parametrize("text, where", [
    ("id: bad\nname: [x\nversion: 1\n", "plugin.yaml:3: invalid YAML"),
    ("id: bad\nname: x\n", "plugin.yaml: required key version missing"),
    ("id: bad\nname: x\nversion: 1\ncapabilities: ui\n", "plugin.yaml:4: Expected `array`"),
])
def test_an_unusable_plugin_yaml_is_refused_with_its_line(shared_service, tmp_path, text, where):
    d = plugin_dir(tmp_path, "bad", text)
    for args in (["add", "--path", str(d)], ["add", "bad", "--path", str(d)], ["start", "bad", "--path", str(d)]):
        done = omnictl(shared_service, *args)
        assert done.returncode == 1 and f"{d}/{where}" in done.stderr, (args, done.stderr)
    assert shared_service.request("status", plugin="bad").code == "unknown_plugin"


def test_without_plugin_yaml_an_id_is_needed_and_enough(shared_service, tmp_path):
    d = tmp_path / "bare"
    d.mkdir()
    done = omnictl(shared_service, "add", "--path", str(d))
    assert done.returncode == 1 and "no plugin id given" in done.stderr and "plugin.yaml" in done.stderr, done.stderr
    assert omnictl(shared_service, "add", "bare", "--path", str(d)).returncode == 0
    assert shared_service.call("status", plugin="bare")["pluginID"] == "bare"

