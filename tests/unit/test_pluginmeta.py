"""plugin.yaml (omnibroker.pluginmeta) and the legacy reload payloads a worker builds from it (PluginContext)."""
from pathlib import Path

import pytest

from support.example import EXAMPLE

from omnibroker import pluginmeta, protocol
from omnibroker.pluginmeta import PluginMetaError, PluginMetaMissing
from omniworker.context import NullSink, PluginContext

GOOD = "id: demo\nname: Demo\nversion: 0.1.0\n"


def write(tmp_path: Path, text: str | bytes) -> Path:
    (tmp_path / "plugin.yaml").write_bytes(text.encode() if isinstance(text, str) else text)
    return tmp_path


def error_of(tmp_path: Path, text: str | bytes) -> str:
    with pytest.raises(PluginMetaError) as ei:
        pluginmeta.read(str(write(tmp_path, text)))
    return str(ei.value)


def test_the_example_plugin_yaml_is_valid_and_names_hello():
    meta = pluginmeta.read(str(EXAMPLE))
    assert (meta.id, meta.name, meta.version) == ("hello", "Hello", "0.1.0")


def test_payload_has_omniviews_plugin_meta_keys(tmp_path):
    doc = pluginmeta.read(str(write(tmp_path, GOOD + "capabilities: [ui]\nunknown_key: 1\n"))).to_payload()
    assert doc["id"] == "demo" and doc["capabilities"] == ["ui"] and "unknown_key" not in doc
    # plugin-sdk pkg/config/meta.go PluginMeta's json names; author is omitempty there
    assert set(doc) == {"id", "version", "name", "icon", "icon_url", "description", "repository", "website",
                        "category", "license", "maintainers", "tags", "dependencies", "capabilities", "theme",
                        "components", "schema_version", "sdk_protocol_version"}
    with_author = pluginmeta.read(str(write(tmp_path, GOOD + "author: {name: A}\n"))).to_payload()
    assert with_author["author"] == {"name": "A", "email": "", "url": ""}


def test_a_numeric_version_is_a_string_as_yaml_v3_makes_it():
    assert pluginmeta.parse("id: d\nname: D\nversion: 1.0\n", "f").version == "1.0"


@pytest.mark.parametrize("text, expected", [
    ("id: demo\nname: [Demo\nversion: 1\n", "plugin.yaml:3: invalid YAML"),
    ("id: demo\n\tname: x\n", "plugin.yaml:2: invalid YAML"),
    ("id: demo\nname: Demo\nversion: 1\ntags: 3\n", "plugin.yaml:4: Expected `array`, got `int`"),
    ("id: demo\nname: Demo\n", "required key version missing"),
    ("id: demo\nversion: 1\nname: ''\n", "required key name missing or empty"),
    ("- a\n", "must be a mapping"),
    ("", "it is empty"),
    ("id: ../x\nname: Demo\nversion: 1\n", "plugin.yaml:1: id '../x' is not a valid plugin id"),
    ("id: demo\nname: &n Demo\nversion: 1\nicon: *n\n", "plugin.yaml:2: YAML anchors and aliases are not supported"),
    (b"id: demo\nname: \xff\n", "not UTF-8"),
    ("id: demo\nname: Demo\nversion: 1\ndescription: " + "x" * pluginmeta.MAX_BYTES + "\n", "larger than"),
])
def test_unusable_plugin_yaml_is_an_error_naming_file_and_line(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert message.startswith(str(tmp_path / "plugin.yaml")) and expected in message, message


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    assert "anchors and aliases" in error_of(tmp_path, GOOD + bomb)


def test_plugin_id_for_add(tmp_path):
    write(tmp_path, GOOD)
    assert pluginmeta.plugin_id_for(None, str(tmp_path)) == "demo"
    assert pluginmeta.plugin_id_for("demo", str(tmp_path)) == "demo"
    with pytest.raises(PluginMetaError) as ei:
        pluginmeta.plugin_id_for("other", str(tmp_path))
    assert "'other'" in str(ei.value) and "'demo'" in str(ei.value)        # names both
    bare = tmp_path / "bare"
    bare.mkdir()
    assert pluginmeta.plugin_id_for("legacy", str(bare)) == "legacy"       # no plugin.yaml: the given id
    with pytest.raises(PluginMetaMissing) as ei:
        pluginmeta.plugin_id_for(None, str(bare))
    assert "no plugin id given" in str(ei.value) and "plugin.yaml" in str(ei.value)


def test_reload_payloads_follow_plugin_yaml_and_fall_back_to_the_id_with_one_warning(tmp_path):
    """What the worker publishes: PluginMeta for start/complete, [PluginMeta, text] for error; without a usable
    plugin.yaml {"id"} and a warning log, once per version of the file."""
    sink = NullSink()
    ctx = PluginContext(protocol.PluginSpec(id="demo", path=str(tmp_path)), sink)

    def published(topic):
        return [p for t, p in sink.events if t == topic]

    def warnings():
        return [e["message"] for p in published(protocol.LOG) for e in p if e["level"] == "warn"]

    ctx.reload_start()
    ctx.reload_error("build failed")
    assert published(protocol.RELOAD_START) == [{"id": "demo"}]
    assert published(protocol.RELOAD_ERROR) == [[{"id": "demo"}, "build failed"]]
    assert len(warnings()) == 1 and "no plugin.yaml" in warnings()[0]
    write(tmp_path, GOOD)
    ctx.reload_complete()
    assert published(protocol.RELOAD_COMPLETE)[-1]["name"] == "Demo" and len(warnings()) == 1
    write(tmp_path, GOOD.replace("demo", "other") + "# grown\n")
    ctx.reload_complete()
    assert published(protocol.RELOAD_COMPLETE)[-1] == {"id": "demo"}
    assert len(warnings()) == 2 and "'other' differs from the registered plugin id 'demo'" in warnings()[1]

