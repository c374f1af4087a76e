"""The plugins the broker knows, what the user wants of each (desired state), and their ports.

Two sources: `omni.toml` (declared plugins, read, never rewritten) and the runtime dir's `state.json` (plugins added or
removed at run time, desired states, port preferences), written atomically on every change so a restarted broker
resumes where the killed one was.
"""
from __future__ import annotations

import os
import tomllib
from typing import Any

import msgspec

from . import pluginmeta, protocol
from .files import write_atomic
from .protocol import CommandError, Desired, ErrorCode, PluginSpec


class PluginRecord(msgspec.Struct, kw_only=True):
    spec: PluginSpec
    desired: Desired = msgspec.field(default_factory=Desired)
    declared: bool = False          # from omni.toml


class StateFile(msgspec.Struct, kw_only=True):
    added: dict[str, PluginSpec] = {}
    removed: list[str] = []
    desired: dict[str, Desired] = {}
    ports: dict[str, Any] = {}        # PortAllocator state (preferred port per plugin)


def validate_plugin_dir(path: Any) -> str:
    """An absolute, existing directory owned by us; anything else is refused with a sentence."""
    if not isinstance(path, str) or not path:
        raise CommandError(ErrorCode.BAD_PROPERTY, "'path' must be a non-empty string")
    if "\x00" in path:
        raise CommandError(ErrorCode.BAD_PROPERTY, "'path' contains a NUL byte")
    if not os.path.isabs(os.path.expanduser(path)):
        # resolved against the broker's working directory it would name some other directory than the user meant
        raise CommandError(ErrorCode.BAD_PROPERTY, f"plugin path {path!r} is relative; give an absolute path")
    real = os.path.realpath(os.path.expanduser(path))
    if not os.path.isdir(real):
        raise CommandError(ErrorCode.BAD_PROPERTY, f"plugin path {path!r} is not a directory")
    if os.stat(real).st_uid != os.getuid():
        raise CommandError(ErrorCode.BAD_PROPERTY, f"plugin path {path!r} is not owned by this user")
    return real


def check_plugin_id(plugin: Any) -> str:
    if not protocol.valid_plugin_id(plugin):
        raise CommandError(ErrorCode.BAD_PROPERTY,
                           f"plugin id {plugin!r} is not allowed: use 1-64 of A-Z a-z 0-9 . _ -, "
                           "starting with a letter or digit, no '..'")
    return plugin


def plugin_id_for_dir(given: str | None, path: str) -> str:
    """The id to register the plugin directory `path` under, from its plugin.yaml (see pluginmeta.plugin_id_for):
    no id given takes plugin.yaml's, a different one is refused naming both, an unusable plugin.yaml is refused with
    its line. A directory without plugin.yaml is accepted under a given id (its worker warns)."""
    try:
        return pluginmeta.plugin_id_for(None if given is None else check_plugin_id(given), path)
    except pluginmeta.PluginMetaError as e:
        raise CommandError(ErrorCode.BAD_PROPERTY, str(e)) from None


def load_config(path: str) -> tuple[dict[str, PluginRecord], dict[str, Any]]:
    """Parse omni.toml: `[service]` settings and `[plugins.<id>]` tables (`path` relative to the file)."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return {}, {}
    base = os.path.dirname(os.path.abspath(path))
    records: dict[str, PluginRecord] = {}
    for pid, table in (doc.get("plugins") or {}).items():
        if not protocol.valid_plugin_id(pid) or not isinstance(table, dict) or "path" not in table:
            raise SystemExit(f"{path}: [plugins.{pid}] needs a valid id and a 'path'")
        settings = {k: v for k, v in table.items() if k not in ("path", "autostart")}
        spec = PluginSpec(id=pid, path=os.path.normpath(os.path.join(base, table["path"])), settings=settings)
        desired = Desired(mode="managed" if table.get("autostart") else "idle",
                          vite=bool(table.get("vite", True)), go=bool(table.get("go", True)))
        records[pid] = PluginRecord(spec=spec, desired=desired, declared=True)
    return records, doc.get("service") or {}


class Registry:
    def __init__(self, config_path: str, state_path: str):
        self.state_path = state_path
        self.plugins, self.service = load_config(config_path)
        self.state = self._load_state()
        for pid in self.state.removed:
            self.plugins.pop(pid, None)
        for pid, spec in self.state.added.items():
            self.plugins[pid] = PluginRecord(spec=spec)
        for pid, desired in self.state.desired.items():
            if pid in self.plugins:
                self.plugins[pid].desired = desired

    def _load_state(self) -> StateFile:
        try:
            with open(self.state_path, "rb") as f:
                return msgspec.json.decode(f.read(), type=StateFile)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return StateFile()

    def save(self) -> None:
        write_atomic(self.state_path, msgspec.json.encode(self.state))

    # ---------------------------------------------------------------------------------------------------------------
    def get(self, plugin: Any) -> PluginRecord:
        if not isinstance(plugin, str) or plugin not in self.plugins:
            raise CommandError(ErrorCode.UNKNOWN_PLUGIN, f"no plugin {plugin!r} is registered")
        return self.plugins[plugin]

    def add(self, plugin: str, path: str, settings: dict[str, Any]) -> tuple[PluginRecord, bool]:
        """Register (or re-point) a plugin; returns (record, changed)."""
        spec = PluginSpec(id=plugin, path=path, settings=settings)
        old = self.plugins.get(plugin)
        if old is not None and old.spec == spec:
            return old, False
        record = PluginRecord(spec=spec, desired=old.desired if old else Desired())
        self.plugins[plugin] = record
        self.state.added[plugin] = spec
        if plugin in self.state.removed:
            self.state.removed.remove(plugin)
        self.save()
        return record, True

    def remove(self, plugin: str) -> None:
        record = self.plugins.pop(plugin)
        self.state.added.pop(plugin, None)
        self.state.desired.pop(plugin, None)
        if record.declared and plugin not in self.state.removed:
            self.state.removed.append(plugin)
        self.save()

    def set_mode(self, plugin: str, mode: str) -> None:
        """Change only the desired mode; which halves run (vite, go) stays as last asked."""
        old = self.get(plugin).desired
        self.set_desired(plugin, Desired(mode=mode, vite=old.vite, go=old.go))

    def set_desired(self, plugin: str, desired: Desired) -> None:
        self.plugins[plugin].desired = desired
        self.state.desired[plugin] = desired
        self.save()
