"""The plugins the broker knows, what the user wants of each (desired state), and their ports.

Two sources: `omni.toml` (declared plugins, checked against the settings schema, read again on `reload`, never
rewritten) and the runtime dir's `state.json` (plugins added or removed at run time, desired states, port
preferences), written atomically before every change takes effect so a restarted broker resumes where the killed one
was, and a write that fails (a full disk) leaves everything as it was.
"""
from __future__ import annotations

import errno
import os
import re
import tomllib
from typing import Any

import msgspec

from . import pluginmeta, protocol, settings
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
    ports: dict[str, Any] = {}        # the Vite PortAllocator's state (preferred port per plugin)
    debug_ports: dict[str, Any] = {}  # the debug PortAllocator's state


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


def storage_error(e: OSError, path: str) -> CommandError:
    """The reply for a state file that could not be written: a full runtime dir says so."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CommandError(ErrorCode.NO_SPACE, f"the runtime dir {protocol.runtime_dir()} is full: cannot write "
                                                f"{path} ({e.strerror}); nothing was changed")
    return CommandError(ErrorCode.STORAGE, f"cannot write {path}: {e.strerror or e}; nothing was changed")


class Config(msgspec.Struct, kw_only=True):
    """What one reading of omni.toml gave: the valid entries, `[service]`, and every problem found."""
    records: dict[str, PluginRecord] = {}
    service: settings.ServiceSettings | None = None     # None: absent or refused (the defaults, or what was in use)
    errors: list[str] = []
    bad: list[str] = []                 # ids of [plugins.<id>] entries refused (they keep their previous version)
    readable: bool = True               # False: a syntax error or an unreadable file; nothing in it was used


def load_config(path: str) -> Config:
    """Parse and check omni.toml: `[service]` and `[plugins.<id>]` tables (`path` relative to the file).

    A bad entry is refused alone (its error names the file and line); a syntax error refuses the whole file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return Config(service=settings.ServiceSettings())
    except OSError as e:
        return Config(errors=[f"{path}: cannot read: {e.strerror or e}"], readable=False)
    text = raw.decode("utf-8", errors="replace")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\s*\(at line (\d+), column \d+\)$", str(e))
        where = f"{path}:{m.group(1)}" if m else path
        return Config(errors=[f"{where}: {str(e)[:m.start()] if m else e}"], readable=False)

    def at(*keys: str) -> str:
        line = settings.locate(text, keys)
        return f"{path}:{line}" if line else path

    cfg = Config()
    if not isinstance(doc.get("service", {}), dict):
        doc["service"] = None
    for key in doc:
        if key not in ("service", "plugins"):
            cfg.errors.append(f"{at(key)}: unknown top-level key {key!r} (known: service, plugins)")
    try:
        cfg.service = settings.check_service(doc.get("service", {}))
    except settings.SettingsError as e:
        key = re.sub(r"\[\d+\]", "", e.key)
        cfg.errors.append(f"{at('service', *key.split('.'))}: [service] {e}")
    plugins = doc.get("plugins", {})
    if not isinstance(plugins, dict):
        cfg.errors.append(f"{at('plugins')}: 'plugins' must be a table of [plugins.<id>] tables")
        plugins = {}
    base = os.path.dirname(os.path.abspath(path))
    for pid, table in plugins.items():
        try:
            if not protocol.valid_plugin_id(pid):
                raise settings.SettingsError("", "not a valid plugin id (1-64 of A-Z a-z 0-9 . _ -, starting with "
                                                 "a letter or digit, no '..')")
            if not isinstance(table, dict):
                raise settings.SettingsError("", "must be a table")
            rel = table.get("path")
            if not isinstance(rel, str) or not rel:
                raise settings.SettingsError("path", "required: the plugin's source directory (a string)")
            typed, worker_table = settings.check_plugin({k: v for k, v in table.items() if k != "path"})
        except settings.SettingsError as e:
            key = re.sub(r"\[\d+\]", "", e.key)
            cfg.errors.append(f"{at('plugins', pid, *filter(None, key.split('.')))}: [plugins.{pid}] {e} "
                              "(entry ignored)")
            cfg.bad.append(pid)
            continue
        worker_table.pop("autostart", None)      # the broker's, not the worker's: a change restarts nothing
        spec = PluginSpec(id=pid, path=os.path.normpath(os.path.join(base, os.path.expanduser(rel))),
                          settings=worker_table)
        desired = Desired(mode="managed" if typed.autostart else "idle", vite=typed.run_vite, go=typed.run_go)
        cfg.records[pid] = PluginRecord(spec=spec, desired=desired, declared=True)
    return cfg


class ReloadResult(msgspec.Struct, kw_only=True):
    """What a reload changed, by plugin id."""
    added: list[str] = []
    removed: list[str] = []
    changed: list[str] = []


class Registry:
    """Every change is all-or-nothing: the new state file is written first, and memory changes only once it is on
    disk; a failed write raises (no_space / storage_error) with nothing changed."""

    def __init__(self, config_path: str, state_path: str):
        self.config_path = config_path
        self.state_path = state_path
        config = load_config(config_path)
        self.config_error = "; ".join(config.errors)
        self.service = config.service or settings.ServiceSettings()
        self.declared = config.records
        self.state = self._load_state()
        self.plugins: dict[str, PluginRecord] = {}
        for pid, record in self.declared.items():
            if pid not in self.state.removed:
                self.plugins[pid] = record
        for pid, spec in self.state.added.items():
            self.plugins[pid] = PluginRecord(spec=spec)
        for pid, desired in self.state.desired.items():
            if pid in self.plugins:
                self.plugins[pid].desired = desired

    def reload(self) -> ReloadResult:
        """Read omni.toml again. Entries new in the file are registered, entries gone from it are forgotten, changed
        ones take the new spec (desired states are kept); plugins added or removed at run time are the user's and
        stay as they are. A refused entry keeps its previous version; an unreadable file changes nothing."""
        config = load_config(self.config_path)
        self.config_error = "; ".join(config.errors)
        result = ReloadResult()
        if not config.readable:
            return result
        if config.service is not None:
            self.service = config.service
        declared = dict(config.records)
        for pid in config.bad:
            if pid in self.declared:
                declared[pid] = self.declared[pid]
        runtime = set(self.state.added) | set(self.state.removed)
        for pid, record in declared.items():
            current = self.plugins.get(pid)
            if pid in runtime:
                continue
            if current is None:
                record.desired = self.state.desired.get(pid, record.desired)
                self.plugins[pid] = record
                result.added.append(pid)
            elif current.spec != record.spec:
                current.spec = record.spec
                result.changed.append(pid)
        for pid in set(self.declared) - set(declared) - runtime:
            if self.plugins.pop(pid, None) is not None:
                result.removed.append(pid)
        self.declared = declared
        return result

    def _load_state(self) -> StateFile:
        try:
            with open(self.state_path, "rb") as f:
                return msgspec.json.decode(f.read(), type=StateFile)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return StateFile()

    def save(self) -> None:
        """Write the state file as it is in memory (the port preferences changed in place)."""
        self._write(self.state)

    def _write(self, state: StateFile) -> None:
        try:
            write_atomic(self.state_path, msgspec.json.encode(state))
        except OSError as e:
            raise storage_error(e, self.state_path) from None

    def _commit(self, change) -> None:
        """Write the state `change` makes of a copy of the current one; adopt it only once it is on disk."""
        new = StateFile(added=dict(self.state.added), removed=list(self.state.removed),
                        desired=dict(self.state.desired), ports=self.state.ports,
                        debug_ports=self.state.debug_ports)         # shared with the PortAllocators
        change(new)
        self._write(new)
        for key in ("ports", "debug_ports"):
            shared, written = getattr(self.state, key), getattr(new, key)
            if written is not shared:           # replaced by `change`: update the shared dict in place
                shared.clear()
                shared.update(written)
                setattr(new, key, shared)
        self.state = new

    # ---------------------------------------------------------------------------------------------------------------
    def get(self, plugin: Any) -> PluginRecord:
        if not isinstance(plugin, str) or plugin not in self.plugins:
            raise CommandError(ErrorCode.UNKNOWN_PLUGIN, f"no plugin {plugin!r} is registered")
        return self.plugins[plugin]

    def add(self, plugin: str, path: str, plugin_settings: dict[str, Any]) -> tuple[PluginRecord, bool]:
        """Register (or re-point) a plugin; returns (record, changed)."""
        spec = PluginSpec(id=plugin, path=path, settings=plugin_settings)
        old = self.plugins.get(plugin)
        if old is not None and old.spec == spec:
            return old, False

        def change(state: StateFile) -> None:
            state.added[plugin] = spec
            if plugin in state.removed:
                state.removed.remove(plugin)
        self._commit(change)
        record = self.plugins[plugin] = PluginRecord(spec=spec, desired=old.desired if old else Desired())
        return record, True

    def remove(self, plugin: str) -> None:
        """Forget a plugin, its desired state and its preferred ports."""
        record = self.get(plugin)

        def change(state: StateFile) -> None:
            state.added.pop(plugin, None)
            state.desired.pop(plugin, None)
            if record.declared and plugin not in state.removed:
                state.removed.append(plugin)
            for key in ("ports", "debug_ports"):
                ports = getattr(state, key)
                preferred = ports.get("preferred")
                if isinstance(preferred, dict) and plugin in preferred:
                    setattr(state, key, dict(ports, preferred={k: v for k, v in preferred.items() if k != plugin}))
        self._commit(change)
        del self.plugins[plugin]

    def set_mode(self, plugin: str, mode: str) -> None:
        """Change only the desired mode; which halves run (vite, go) and debug mode stay as last asked."""
        old = self.get(plugin).desired
        self.set_desired(plugin, Desired(mode=mode, vite=old.vite, go=old.go, debug=old.debug))

    def set_desired(self, plugin: str, desired: Desired) -> None:
        record = self.get(plugin)
        self._commit(lambda state: state.desired.__setitem__(plugin, desired))
        record.desired = desired
