"""The typed settings schema: every key omni.toml (or `add`'s `settings`) may set, with its type, range and default,
defined once here.

- `ServiceSettings` is `[service]`; `PluginSettings` is `[plugins.<id>]` (minus `path`) with one Struct per section
  (`[build]`, `[go]`, `[vite]`, `[handshake]`, `[plugin]`, `[external]`).
- `check_plugin` / `check_service` validate a raw table: an unknown key is refused by name (with the known ones), a
  wrong type or an out-of-range value names its key. They return the typed object and the table the worker receives
  (the user's own keys, unit-suffixed aliases rewritten to the names the worker reads: the worker applies its
  defaults to absent keys, so nothing the user did not write is sent).
- `locate` finds a key's line in omni.toml, so errors read `<file>:<line>: <message>`.

Seconds-valued keys also accept a name with the unit (`stop_grace_s` for `stop_grace`); `[external] debounce`
(seconds) also accepts `debounce_ms`, like `[go] debounce_ms`. docs/protocol.md's settings table is checked against
`FIELDS` by tests/unit/test_settings.py.
"""
from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .ports import DEBUG_RANGE_END, DEBUG_RANGE_START, DEFAULT_RANGE_END, DEFAULT_RANGE_START

Seconds = Annotated[float, Meta(ge=0, le=86_400)]
Timeout = Annotated[float, Meta(gt=0, le=86_400)]
BackoffSeconds = Annotated[float, Meta(ge=0, le=3_600)]
Port = Annotated[int, Meta(ge=1, le=65_535)]
Argv = str | list[str]           # a shell-like string (split with shlex) or an argv list
EnvMap = dict[str, str | int | float | bool]     # values are passed as str(value)


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every section: unknown keys are errors."""


class BuildSettings(Section):
    command: Argv | None = None          # None: gobuild.DEFAULT_BUILD_COMMAND (go build -ldflags="-s -w" -o ...)
    env: EnvMap = {}
    dir: str = ""
    output: str | None = None            # None: the command's -o, else build/bin/plugin
    timeout_s: Timeout = 600.0


class RestartingSection(Section):
    """A part that restarts its process after a crash (Go plugin, Vite): `restart_backoff` doubling up to
    `restart_backoff_max`, the streak forgotten after `restart_reset` seconds of running. Each subclass declares the
    three with its own defaults."""
    restart_reset: Seconds = 10.0
    restart_backoff: BackoffSeconds = 0.25
    restart_backoff_max: BackoffSeconds = 10.0

    def __post_init__(self) -> None:
        if self.restart_backoff > self.restart_backoff_max:
            raise ValueError("restart_backoff must not exceed restart_backoff_max")


class GoSettings(RestartingSection):
    enabled: bool | None = None          # None: when the plugin has a pkg/ dir (or an explicit command and watch)
    watch: list[str] | None = None       # None: ["pkg/**/*.go", "go.mod", "go.sum"]
    ignore: list[str] = []
    debounce_ms: Annotated[float, Meta(ge=0, le=60_000)] = 20     # the quiet window (docs/performance.md)
    build_on_start: Literal["changed", "always", "missing"] = "changed"
    reload_order: Literal["start-first", "stop-first"] = "start-first"
    stop_grace: Seconds = 2.0
    drain_timeout: Seconds = 2.0
    restart_reset: Seconds = 10.0
    restart_backoff: BackoffSeconds = 0.25
    restart_backoff_max: BackoffSeconds = 10.0


class ViteSettings(RestartingSection):
    command: Argv | None = None          # None: <plugin>/ui/node_modules/.bin/vite
    args: Argv | None = None             # None: --host 127.0.0.1 --port {port} --strictPort --cors --clearScreen false
    env: EnvMap = {}
    entry: str | None = None             # the dashboard's fallback UI entry module
    install: bool = False
    start_timeout: Timeout = 30.0
    install_timeout: Timeout = 600.0
    stop_grace: Seconds = 5.0
    restart_reset: Seconds = 60.0
    restart_backoff: BackoffSeconds = 1.0
    restart_backoff_max: BackoffSeconds = 30.0


class HandshakeSettings(Section):
    cookie_key: Annotated[str, Meta(min_length=1)] = "OMNIVIEW"
    cookie_value: str | None = None      # None: the plugin id
    protocol_versions: int | str | list[int] = "1"
    min_port: Port = 10_000
    max_port: Port = 25_000
    timeout: Timeout = 15.0

    def __post_init__(self) -> None:
        if self.min_port > self.max_port:
            raise ValueError("min_port must not exceed max_port")


class ProcessSettings(Section):
    env: EnvMap = {}


class ExternalSettings(Section):
    health_interval: Timeout = 5.0
    debounce: Annotated[float, Meta(ge=0, le=60)] = 0.05
    connect_timeout: Timeout = 5.0
    pid_start_slack: Annotated[float, Meta(ge=0, le=60)] = 1.0


class PluginSettings(Section):
    """`[plugins.<id>]` without `path`. `vite`/`go` are a bool (run that half in managed mode) or that half's
    section (which means true)."""
    autostart: bool = False
    vite: bool | ViteSettings = True
    go: bool | GoSettings = True
    log_lines: Annotated[int, Meta(ge=1, le=1_000_000)] = 5000
    log_lines_per_source: Annotated[int, Meta(ge=1, le=1_000_000)] = 2000
    build: BuildSettings = msgspec.field(default_factory=BuildSettings)
    handshake: HandshakeSettings = msgspec.field(default_factory=HandshakeSettings)
    plugin: ProcessSettings = msgspec.field(default_factory=ProcessSettings)
    external: ExternalSettings = msgspec.field(default_factory=ExternalSettings)

    @property
    def run_vite(self) -> bool:
        return self.vite is not False

    @property
    def run_go(self) -> bool:
        return self.go is not False

    @property
    def vite_settings(self) -> ViteSettings:
        """`[vite]` whether it was written as a table or as a bool."""
        return self.vite if isinstance(self.vite, ViteSettings) else ViteSettings()

    @property
    def go_settings(self) -> GoSettings:
        """`[go]` whether it was written as a table or as a bool."""
        return self.go if isinstance(self.go, GoSettings) else GoSettings()


class ServiceSettings(Section):
    vite_ports: Annotated[list[Annotated[int, Meta(ge=1024, le=65_536)]], Meta(min_length=2, max_length=2)] = \
        msgspec.field(default_factory=lambda: [DEFAULT_RANGE_START, DEFAULT_RANGE_END])
    debug_ports: Annotated[list[Annotated[int, Meta(ge=1024, le=65_536)]], Meta(min_length=2, max_length=2)] = \
        msgspec.field(default_factory=lambda: [DEBUG_RANGE_START, DEBUG_RANGE_END])
    build_slots: Annotated[int, Meta(ge=1, le=256)] | None = None     # None: the number of cores

    def __post_init__(self) -> None:
        for key in ("vite_ports", "debug_ports"):
            first, last = getattr(self, key)
            if first >= last:
                raise ValueError(f"{key} is [first, last): first must be below last")

    @property
    def slots(self) -> int:
        return self.build_slots or os.cpu_count() or 2


SECTIONS: dict[str, type[Section]] = {"build": BuildSettings, "go": GoSettings, "vite": ViteSettings,
                                      "handshake": HandshakeSettings, "plugin": ProcessSettings,
                                      "external": ExternalSettings}
# Other names for a key, with the factor that turns the alias's unit into the key's.
ALIASES: dict[str, dict[str, tuple[str, float]]] = {
    "external": {"debounce_ms": ("debounce", 0.001), "health_interval_s": ("health_interval", 1.0),
                 "connect_timeout_s": ("connect_timeout", 1.0), "pid_start_slack_s": ("pid_start_slack", 1.0)},
    "go": {"stop_grace_s": ("stop_grace", 1.0), "drain_timeout_s": ("drain_timeout", 1.0),
           "restart_reset_s": ("restart_reset", 1.0), "restart_backoff_s": ("restart_backoff", 1.0),
           "restart_backoff_max_s": ("restart_backoff_max", 1.0)},
    "vite": {"start_timeout_s": ("start_timeout", 1.0), "install_timeout_s": ("install_timeout", 1.0),
             "stop_grace_s": ("stop_grace", 1.0), "restart_reset_s": ("restart_reset", 1.0),
             "restart_backoff_s": ("restart_backoff", 1.0), "restart_backoff_max_s": ("restart_backoff_max", 1.0)},
    "handshake": {"timeout_s": ("timeout", 1.0)},
}


def _keys(cls: type[Section]) -> list[str]:
    return [f.name for f in msgspec.structs.fields(cls)]


def fields() -> list[str]:
    """Every settable key, dotted as in docs/protocol.md's table (`autostart`, `build.command`, ...)."""
    out = [k for k in _keys(PluginSettings) if k not in SECTIONS or k in ("vite", "go")]
    for name, cls in SECTIONS.items():
        out += [f"{name}.{k}" for k in _keys(cls)]
        out += [f"{name}.{k}" for k in ALIASES.get(name, {})]
    return out


class SettingsError(Exception):
    """One bad key: `key` is its dotted path inside the checked table ("" for the table itself)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


def _normalise(table: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown keys by name; rewrite unit aliases to the keys the worker reads."""
    out = dict(table)
    known = _keys(PluginSettings)
    for key, value in table.items():
        if key not in known:
            raise SettingsError(key, f"unknown key (known: {', '.join(known)})")
        section = SECTIONS.get(key)
        if section is None or not isinstance(value, dict):
            continue
        sec_known = _keys(section)
        aliases = ALIASES.get(key, {})
        new: dict[str, Any] = {}
        for k, v in value.items():
            if k in aliases:
                target, factor = aliases[k]
                if target in value:
                    raise SettingsError(f"{key}.{k}", f"give {k} or {target}, not both")
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise SettingsError(f"{key}.{k}", f"expected a number, got {type(v).__name__}")
                new[target] = v * factor
            elif k in sec_known:
                new[k] = v
            else:
                raise SettingsError(f"{key}.{k}",
                                    f"unknown key (known: {', '.join(sec_known + list(aliases))})")
        out[key] = new
    return out


_PATH = re.compile(r"- at `\$((?:\.[^`.\[]+|\[\d+\]|\[\.\.\.\])*)`")


def _convert(table: dict[str, Any], cls: type) -> Any:
    try:
        return msgspec.convert(table, cls)
    except msgspec.ValidationError as e:
        text = str(e)
        m = _PATH.search(text)
        key = ""
        if m:
            key = m.group(1).lstrip(".").replace("[...]", "")      # [...]: some value of a table
            text = text[:m.start()].rstrip(" -")
        raise SettingsError(key, text) from None


def check_plugin(table: dict[str, Any]) -> tuple[PluginSettings, dict[str, Any]]:
    """Validate `[plugins.<id>]` (without `path`): (typed settings, the table for the worker)."""
    if not isinstance(table, dict):
        raise SettingsError("", f"settings must be a table, not {type(table).__name__}")
    worker_table = _normalise(table)
    return _convert(worker_table, PluginSettings), worker_table


def check_service(table: dict[str, Any]) -> ServiceSettings:
    if not isinstance(table, dict):
        raise SettingsError("", "[service] must be a table")
    known = _keys(ServiceSettings)
    for key in table:
        if key not in known:
            raise SettingsError(key, f"unknown key (known: {', '.join(known)})")
    return _convert(table, ServiceSettings)


# --- where a key is in omni.toml ------------------------------------------------------------------------------------
_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\- ]+?)\s*=""")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip().strip("\"'") for p in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', dotted))


def locate(text: str, path: tuple[str, ...]) -> int | None:
    """The 1-based line that sets `path` (table names then key), else the line of the deepest table header on the way
    to it; None when neither is in the file. A reading good enough for messages, not a TOML parser."""
    best, best_depth = None, 0
    table: tuple[str, ...] = ()
    for n, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            table = _parts(m.group(1))
            depth = len(table)
            if path[:depth] == table and depth > best_depth:
                best, best_depth = n, depth
            continue
        k = _KEY.match(line)
        if k:
            full = table + _parts(k.group(1))
            depth = len(full)
            if path[:depth] == full and depth > best_depth:
                best, best_depth = n, depth
    return best
