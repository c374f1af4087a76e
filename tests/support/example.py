"""The example plugin (examples/hello-plugin) as the tests use it: private copies, its Go build, its gRPC codec.

Every test that runs the example works on a copy in its own temp dir, so a build, a Vite cache or a `.devinfo` never
lands in the repository's example, and two tests never share one.
"""
from __future__ import annotations

import base64
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
EXAMPLE = REPO / "examples" / "hello-plugin"
EXAMPLE_UI = EXAMPLE / "ui"
GO_ENV = {"GO111MODULE": "off", "GOPATH": "/usr/share/gocode"}
GREET = "/hello.Greeter/Greet"
GREETING_FILE = Path("pkg") / "greeting.go"


def _load_greeter_pb():
    """examples/hello-plugin/greeter_pb.py, the example's hand-written protobuf codec, imported from its file."""
    spec = importlib.util.spec_from_file_location("greeter_pb", EXAMPLE / "greeter_pb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


greeter_pb = _load_greeter_pb()


def copy_example(dest: Path, ui: bool = True, go: bool = True, plugin_id: str | None = None) -> Path:
    """A private copy of the example plugin (sources only; node_modules linked, not copied). Its plugin.yaml names
    `plugin_id` (default: the directory's name), the id the copy is registered under."""
    dest.mkdir(parents=True, exist_ok=True)
    write_plugin_yaml(dest, plugin_id or dest.name)
    if go:
        shutil.copytree(EXAMPLE / "pkg", dest / "pkg")
    if ui:
        copy_ui(dest)
    return dest


def copy_ui(dest: Path, node_modules: bool = True) -> Path:
    """The example's ui/ into dest/ui, without its build outputs; node_modules linked entry by entry."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(EXAMPLE_UI, dest / "ui", ignore=shutil.ignore_patterns("node_modules", "dist", ".vite"))
    if node_modules and (EXAMPLE_UI / "node_modules").exists():
        link_node_modules(EXAMPLE_UI, dest / "ui")
    return dest


def copy_go_tree(src: Path, dest: Path) -> Path:
    """Everything of a plugin tree but its UI (ui/, node_modules, .git, __pycache__), links kept as links."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("ui", "node_modules", ".git", "__pycache__"),
                    symlinks=True)
    return dest


def write_plugin_yaml(dest: Path, plugin_id: str) -> Path:
    """The example's plugin.yaml with its `id` line naming `plugin_id`."""
    text = re.sub(r"(?m)^id: .*$", f"id: {plugin_id}", (EXAMPLE / "plugin.yaml").read_text(), count=1)
    (dest / "plugin.yaml").write_text(text)
    return dest / "plugin.yaml"


def link_node_modules(src_ui: Path, dest_ui: Path) -> None:
    """A real node_modules dir whose entries link to the example's: Vite's caches (.vite, .vite-temp) then live in
    the copy, not in the shared example."""
    nm = dest_ui / "node_modules"
    nm.mkdir()
    for entry in os.listdir(src_ui / "node_modules"):
        if entry not in (".vite", ".vite-temp"):
            (nm / entry).symlink_to(src_ui / "node_modules" / entry)


def go_build(src: Path, *flags: str, timeout: float = 300) -> Path:
    """`go build <flags> -o build/bin/plugin ./pkg` in a copy of the example (GOPATH mode, the system's go-plugin);
    the binary's path. A failed build fails the test with go's output."""
    r = subprocess.run(["go", "build", *flags, "-o", "build/bin/plugin", "./pkg"], cwd=src,
                       env=dict(os.environ, **GO_ENV), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"go build in {src}: {r.stderr}"
    return src / "build" / "bin" / "plugin"


def set_greeting(plugin_dir: Path, text: str, atomic: bool = False) -> None:
    """Change the example's greeting constant: written in place, or (atomic) the way an editor saves, a temp file
    renamed over the original."""
    path = plugin_dir / GREETING_FILE
    new = re.sub(r'const Greeting = ".*"', f'const Greeting = "{text}"', path.read_text())
    if not atomic:
        path.write_text(new)
        return
    tmp = path.with_name(".greeting.go.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


def greet_request(name: str) -> str:
    """A Greet request as `invoke` takes it: the protobuf message, base64."""
    return base64.b64encode(greeter_pb.encode_greet_request(name)).decode()


def greet_reply(result: dict) -> str:
    """The greeting in an `invoke` result."""
    return greeter_pb.decode_greet_reply(base64.b64decode(result["response"]))
