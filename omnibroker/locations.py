"""Where omni's sockets and files live (docs/protocol.md "Locations"). Stdlib only: omnictl imports it, and so does
every interpreter start in the venv (supervisor_defaults, through the .pth file `make setup` installs)."""
from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPERVISOR_CONF = os.path.join(REPO, "supervisor.d", "omni.conf")


def runtime_dir() -> str:
    """$OMNI_RUNTIME_DIR, else $XDG_RUNTIME_DIR/omni, else /tmp/omni-<uid>: the one place this default is computed."""
    env = os.environ.get("OMNI_RUNTIME_DIR")
    if env:
        return env
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "omni") if xdg else f"/tmp/omni-{os.getuid()}"


def ensure_runtime_dir(path: str | None = None) -> str:
    """Create the runtime dir 0700 (or tighten it); refuse one owned by someone else."""
    path = path or runtime_dir()
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
    return os.path.join(REPO, "omni.toml")


def plugin_home(plugin: str) -> str:
    return os.path.join(home_dir(), "plugins", plugin)


def _config_arg(argv: list[str]) -> str | None:
    """The -c/--configuration value of a supervisord or supervisorctl command line."""
    for i, arg in enumerate(argv):
        if arg in ("-c", "--configuration"):
            return argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith("--configuration="):
            return arg.split("=", 1)[1]
        if arg.startswith("-c") and not arg.startswith("--"):
            return arg[2:]
    return None


def supervisor_defaults(argv: list[str]) -> None:
    """Give supervisord and supervisorctl, started on omni's config, the runtime dir omni would use.

    supervisor.d/omni.conf names its socket, pid and log files with %(ENV_OMNI_RUNTIME_DIR)s, and supervisord can
    expand only variables that are set; it cannot compute a default. The venv runs this at interpreter start-up
    (`make setup` installs omni-supervisor-defaults.pth), so `supervisord -c supervisor.d/omni.conf` typed with no
    variable uses runtime_dir() like every other omni program, and a set OMNI_RUNTIME_DIR (make run, the tests, the
    systemd unit) is left alone. Any other program, or supervisord on another config, is not touched.
    """
    if os.environ.get("OMNI_RUNTIME_DIR") or not argv:
        return
    program = os.path.basename(argv[0])
    if program not in ("supervisord", "supervisorctl"):
        return
    conf = _config_arg(argv[1:])
    if conf is None or os.path.realpath(conf) != os.path.realpath(SUPERVISOR_CONF):
        return
    path = runtime_dir()
    if program == "supervisord":
        try:
            ensure_runtime_dir(path)
        except (OSError, SystemExit) as e:      # supervisord then says what it cannot open
            print(f"omni: runtime dir {path}: {e}", file=__import__("sys").stderr)
    os.environ["OMNI_RUNTIME_DIR"] = path
