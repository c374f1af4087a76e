"""A plugin's `plugin.yaml`: the one place omni reads it.

Omniview requires `plugin.yaml` at the plugin's root (its SDK's `config.PluginMeta`, decoded with yaml.v3): `id`,
`name` and `version` are required here, the other keys are optional and unknown keys are ignored, as yaml.v3 does.
Omni uses it twice:
- `add` / `start --path`: the plugin id comes from it when none is given, and a given id that differs is refused;
- the legacy `plugin/dev_reload_*` events carry it as PluginMeta (Omniview's frontend reads `meta.id`).

A plugin without a readable plugin.yaml (registered by id before omni read the file, or one whose file is being
edited) still runs: its events carry the minimal metadata `{"id": <plugin id>}` and the worker logs why (`for_events`).

Bounds: at most MAX_BYTES are read; YAML anchors and aliases are refused (an alias bomb would expand exponentially in
the type check), so the document's size bounds the work.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import msgspec

from . import protocol

if TYPE_CHECKING:
    import yaml

FILENAME = "plugin.yaml"
MAX_BYTES = 256 * 1024
REQUIRED = ("id", "name", "version")


class PluginMetaError(Exception):
    """plugin.yaml is unusable; the message names the file and, when known, the line (`<file>:<line>: <problem>`)."""


class PluginMetaMissing(PluginMetaError):
    pass


class Maintainer(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    name: str = ""
    email: str = ""


class Author(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    name: str = ""
    email: str = ""
    url: str = ""


class ThemeColors(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    primary: str = ""
    secondary: str = ""
    tertiary: str = ""


class Theme(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    colors: ThemeColors = msgspec.field(default_factory=ThemeColors)


class Components(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    resource: list[dict[str, Any]] = []


class PluginMeta(msgspec.Struct, kw_only=True, forbid_unknown_fields=False, omit_defaults=False):
    """Omniview's PluginMeta, with its JSON names (the same as its YAML keys). `author` is left out when absent, as
    Omniview's `omitempty` does; every other key is always present."""
    id: str
    version: str
    name: str
    icon: str = ""
    icon_url: str = ""
    description: str = ""
    repository: str = ""
    website: str = ""
    category: str = ""
    license: str = ""
    author: Author | None = None
    maintainers: list[Maintainer] = []
    tags: list[str] = []
    dependencies: list[str] = []
    capabilities: list[str] = []
    theme: Theme = msgspec.field(default_factory=Theme)
    components: Components = msgspec.field(default_factory=Components)
    schema_version: int = 0
    sdk_protocol_version: int = 0

    def to_payload(self) -> dict[str, Any]:
        doc = msgspec.to_builtins(self)
        if doc.get("author") is None:
            doc.pop("author", None)
        return doc


def path_of(plugin_dir: str) -> str:
    return os.path.join(plugin_dir, FILENAME)


def _line_of(root: yaml.Node | None, key: str) -> int:
    """1-based line of a top-level key (the mapping's first line when the key is absent)."""
    import yaml
    if isinstance(root, yaml.MappingNode):
        for k, _ in root.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return k.start_mark.line + 1
    return root.start_mark.line + 1 if root is not None else 1


def parse(text: str, where: str) -> PluginMeta:
    """Parse and check plugin.yaml's text; `where` names the file in messages. Raises PluginMetaError. (PyYAML is
    imported here, by the first parse: a worker that runs no plugin never loads it.)"""
    import yaml
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                line = event.start_mark.line + 1
                raise PluginMetaError(f"{where}:{line}: YAML anchors and aliases are not supported in plugin.yaml")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f"{mark.line + 1}:" if mark is not None else ""
        problem = " ".join(p for p in (e.context, e.problem) if p) or str(e)
        raise PluginMetaError(f"{where}:{line} invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise PluginMetaError(f"{where}: invalid YAML: {e}") from None
    if not isinstance(doc, dict):
        kind = "empty" if doc is None else f"a {type(doc).__name__}"
        raise PluginMetaError(f"{where}: plugin.yaml must be a mapping of keys (id, name, version, ...); it is {kind}")
    missing = [k for k in REQUIRED if doc.get(k) in (None, "")]
    if missing:
        raise PluginMetaError(f"{where}: required {'key' if len(missing) == 1 else 'keys'} "
                              f"{', '.join(missing)} missing or empty (plugin.yaml needs id, name and version)")
    for key in REQUIRED:
        if isinstance(doc[key], (int, float)) and not isinstance(doc[key], bool):
            doc[key] = str(doc[key])       # `version: 1.0` is a float to YAML, a string to yaml.v3 into a string
    try:
        meta = msgspec.convert(doc, PluginMeta, str_keys=True)
    except msgspec.ValidationError as e:
        # msgspec names the field as `$.key...`: point at the key's line
        text_e = str(e)
        key = text_e.split("`$.", 1)[1].split("`", 1)[0].split(".", 1)[0].split("[", 1)[0] if "`$." in text_e else ""
        raise PluginMetaError(f"{where}:{_line_of(root, key)}: {text_e}") from None
    if not protocol.valid_plugin_id(meta.id):
        raise PluginMetaError(f"{where}:{_line_of(root, 'id')}: id {meta.id!r} is not a valid plugin id (1-64 of "
                              "A-Z a-z 0-9 . _ -, starting with a letter or digit, no '..')")
    return meta


def read(plugin_dir: str) -> PluginMeta:
    """plugin.yaml of `plugin_dir`. Raises PluginMetaMissing when there is none, PluginMetaError when unusable."""
    where = path_of(plugin_dir)
    try:
        with open(where, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise PluginMetaMissing(f"{where}: no plugin.yaml (Omniview needs one at the plugin's root with id, name "
                                "and version)") from None
    except OSError as e:
        raise PluginMetaError(f"{where}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise PluginMetaError(f"{where}: larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PluginMetaError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
    return parse(text, where)


def plugin_id_for(given: str | None, plugin_dir: str) -> str:
    """The id to register `plugin_dir` under: plugin.yaml's, or `given` when they agree.

    Without plugin.yaml a given id is accepted (the worker warns at run time); without both there is no id.
    Raises PluginMetaError with a sentence for every refusal."""
    try:
        meta = read(plugin_dir)
    except PluginMetaMissing as e:
        if given is None:
            raise PluginMetaMissing(f"no plugin id given and {e}") from None
        return given
    if given is not None and given != meta.id:
        raise PluginMetaError(f"plugin id {given!r} differs from the id {meta.id!r} in {path_of(plugin_dir)}: "
                              "use the same id, or leave it out to take plugin.yaml's")
    return meta.id


def for_events(plugin_id: str, plugin_dir: str) -> tuple[dict[str, Any], str]:
    """(metadata for the legacy reload events, warning or ""). The metadata is plugin.yaml's when it is valid and
    names this plugin, else the minimal `{"id": plugin_id}` with the reason as the warning."""
    try:
        meta = read(plugin_dir)
    except PluginMetaError as e:
        return {"id": plugin_id}, f"{e}; the reload events carry only {json.dumps({'id': plugin_id})}"
    if meta.id != plugin_id:
        return {"id": plugin_id}, (f"{path_of(plugin_dir)}: id {meta.id!r} differs from the registered plugin id "
                                   f"{plugin_id!r}; the reload events carry only {json.dumps({'id': plugin_id})}")
    return meta.to_payload(), ""
