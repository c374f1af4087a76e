"""omni.toml text for tests: a [plugins.<id>] table for a copy of the example plugin."""
from __future__ import annotations

import json
from pathlib import Path

from .example import GO_ENV


def toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value)


def plugin_toml(plugin: str, path: Path, *, autostart: bool = True, build_env: dict | None = None,
                extra: str = "", cookie: str | None = "hello", build_command: list[str] | None = None) -> str:
    """A [plugins.<id>] table for a copy of the example (its handshake cookie value is "hello" whatever the id):
    GO_ENV plus build_env for its builds, `build_command` as its [build] command, `extra` lines in the table, and no
    [handshake] table when cookie is None."""
    env = dict(GO_ENV, **(build_env or {}))
    env_s = ", ".join(f"{k} = {toml_str(v)}" for k, v in env.items())
    text = (f"[plugins.{plugin}]\npath = {toml_str(str(path))}\nautostart = {'true' if autostart else 'false'}\n"
            f"{extra}"
            f"[plugins.{plugin}.build]\nenv = {{ {env_s} }}\n")
    if build_command is not None:
        text += f"command = [{', '.join(toml_str(a) for a in build_command)}]\n"
    if cookie:
        text += f"[plugins.{plugin}.handshake]\ncookie_value = {toml_str(cookie)}\n"
    return text
