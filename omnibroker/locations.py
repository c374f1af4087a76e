"""Where omni's sockets and files live (docs/protocol.md "Locations"). Stdlib only: omnictl imports it."""
from __future__ import annotations

import os


def runtime_dir() -> str:
    env = os.environ.get("OMNI_RUNTIME_DIR")
    if env:
        return env
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "omni") if xdg else f"/tmp/omni-{os.getuid()}"


def ensure_runtime_dir() -> str:
    """Create the runtime dir 0700 (or tighten it); refuse one owned by someone else."""
    path = runtime_dir()
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise SystemExit(f"runtime dir {path} is owned by uid {st.st_uid}, not us ({os.getuid()})")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def endpoint(name: str) -> str:
    env = os.environ.get(f"OMNI_{name.upper()}")
    return env or f"ipc://{runtime_dir()}/{name}.sock"


def alive_dir() -> str:
    return os.path.join(runtime_dir(), "alive")


def alive_path(plugin: str) -> str:
    """The file a plugin's worker touches every second (the broker watches its mtime: see protocol.py)."""
    return os.path.join(alive_dir(), plugin)


def epoch_path() -> str:
    """The running broker's epoch; a worker that finds a new one there registers again."""
    return os.path.join(runtime_dir(), "broker.epoch")


def home_dir() -> str:
    return os.environ.get("OMNIVIEW_HOME") or os.path.expanduser("~/.omniview")


def config_path() -> str:
    env = os.environ.get("OMNI_CONFIG")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "omni.toml")


def plugin_home(plugin: str) -> str:
    return os.path.join(home_dir(), "plugins", plugin)
