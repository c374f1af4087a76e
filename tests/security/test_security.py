"""Security of the local service, tested against a real one (tests/support/service.py):

- the runtime dir is 0700 and its sockets 0600: another local user (`nobody`, when we run as root) can neither connect
  to any socket nor read the bridge token — even with the dir opened up, the socket files alone refuse;
- plugin ids are restricted to a safe charset (no `..`, no `/`): refused by every command, nothing created on disk;
- `add` refuses paths that are not directories the user owns (files, missing, relative, NUL, someone else's dir,
  a symlink to someone else's dir);
- a `.devinfo` pointing off loopback is never dialled (a canary listener on 0.0.0.0 would see the dial);
- no module passes anything to a shell (AST scan of omnibroker/, omniworker/, omnibridge/);
- the bridge refuses a wrong token and a foreign Origin.
TCP + CURVE is covered by tests/security/test_curve.py.
"""
from __future__ import annotations

import ast
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support.example import REPO
from support.service import Service

from omnibroker import protocol

NOBODY = 65534
ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def svc():
    with Service() as s:
        yield s


# --- runtime dir and sockets -----------------------------------------------------------------------------------------
def test_runtime_dir_is_private_and_sockets_are_0600(svc):
    st = os.stat(svc.runtime)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    socks = sorted(p.name for p in svc.runtime.iterdir() if stat.S_ISSOCK(p.lstat().st_mode))
    assert {"control.sock", "events.sock", "workers.sock", "supervisor.sock"} <= set(socks), socks
    for entry in svc.runtime.rglob("*"):
        mode = stat.S_IMODE(entry.lstat().st_mode)
        assert mode & 0o002 == 0, f"{entry} is writable by others ({mode:o})"
        if stat.S_ISSOCK(entry.lstat().st_mode) or entry.is_dir() or entry.name == "bridge.token":
            assert mode & 0o077 == 0, f"{entry} is open to group/others ({mode:o})"


PROBE = r"""
import json, os, socket, sys
runtime, names = sys.argv[1], sys.argv[2:]
out = {"uid": os.getuid()}
for name in names:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.path.join(runtime, name))
        out[name] = "connected"
    except OSError as e:
        out[name] = e.__class__.__name__
    finally:
        s.close()
for name in ("bridge.token",):
    try:
        open(os.path.join(runtime, name)).read()
        out[name] = "read"
    except OSError as e:
        out[name] = e.__class__.__name__
try:
    os.listdir(runtime)
    out["listdir"] = "listed"
except OSError as e:
    out["listdir"] = e.__class__.__name__
print(json.dumps(out))
"""


def _probe(runtime: Path, as_nobody: bool) -> dict:
    def drop():
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    names = ["control.sock", "events.sock", "workers.sock", "supervisor.sock"]
    out = subprocess.run(["/usr/bin/python3", "-c", PROBE, str(runtime), *names], capture_output=True, text=True,
                         timeout=30, preexec_fn=drop if as_nobody else None, cwd="/")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not ROOT, reason="switching to another user needs root")
def test_another_user_cannot_reach_any_socket(svc):
    _bridge(svc)                        # its token file is part of what must stay private: wait until it exists
    mine = _probe(svc.runtime, as_nobody=False)
    assert mine["control.sock"] == "connected" and mine["bridge.token"] == "read", mine   # the probe works
    theirs = _probe(svc.runtime, as_nobody=True)
    assert theirs["uid"] == NOBODY
    assert theirs == {"uid": NOBODY, "control.sock": "PermissionError", "events.sock": "PermissionError",
                      "workers.sock": "PermissionError", "supervisor.sock": "PermissionError",
                      "bridge.token": "PermissionError", "listdir": "PermissionError"}, theirs
    # defence in depth: with the directory opened up (0711), the socket files themselves still refuse
    os.chmod(svc.runtime, 0o711)
    try:
        theirs = _probe(svc.runtime, as_nobody=True)
    finally:
        os.chmod(svc.runtime, 0o700)
    for name in ("control.sock", "events.sock", "workers.sock", "supervisor.sock", "bridge.token"):
        assert theirs[name] == "PermissionError", theirs


# --- plugin ids -------------------------------------------------------------------------------------------------------
BAD_IDS = ["..", "../x", "x/..", "x/y", "/abs", "a/../b", ".", ".hidden", "", "a" * 65, "a\x00b", "ä", "a b",
           "-x", "_x", "a..b", "x;id", "$(id)", "`id`", "x\ny", "~root", "x\\y"]


@pytest.mark.parametrize("plugin", BAD_IDS)
def test_unsafe_plugin_ids_are_refused_everywhere(svc, tmp_path, plugin):
    before_workers = sorted(os.listdir(svc.runtime / "workers"))
    for command, props in (("add", {"path": str(tmp_path)}), ("start", {"path": str(tmp_path)}), ("start", {}),
                           ("status", {}), ("remove", {}), ("attach", {}), ("logs", {}), ("external_info", {}),
                           ("invoke", {"method": "/a.B/C"})):
        reply = svc.request(command, plugin=plugin, **props)
        assert reply is not None and reply.status == "error", (command, reply)
        assert reply.code in ("bad_property", "unknown_plugin"), (command, reply)
        if command in ("add", "start") and props:
            assert reply.code == "bad_property" and "not allowed" in reply.reason, (command, reply)
    assert sorted(os.listdir(svc.runtime / "workers")) == before_workers
    assert not (svc.home / "plugins").exists() or os.listdir(svc.home / "plugins") == []
    assert svc.call("list")["plugins"] == []


def test_worker_refuses_an_unsafe_id(tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, OMNI_RUNTIME_DIR=str(runtime), OMNIVIEW_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-m", "omniworker.worker", "--plugin", "../../etc"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "invalid plugin id" in out.stderr
    assert list(runtime.iterdir()) == [] and not (tmp_path / "home").exists()


# --- add: directories the user owns, nothing else ------------------------------------------------------------------------
def test_add_refuses_what_is_not_a_directory_we_own(svc, tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    cases = {"a file": str(f), "missing": str(tmp_path / "missing"), "relative": "examples/hello-plugin",
             "dot": ".", "NUL": f"{tmp_path}\x00x", "empty": ""}
    if ROOT:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, NOBODY, NOBODY)
        link = tmp_path / "link-to-theirs"
        link.symlink_to(theirs)
        cases.update({"someone else's dir": str(theirs), "a symlink to someone else's dir": str(link)})
    for what, path in cases.items():
        reply = svc.request("add", plugin="p", path=path)
        assert reply.status == "error" and reply.code == "bad_property" and reply.reason, (what, reply)
    if ROOT:
        assert "not owned" in svc.request("add", plugin="p", path=str(tmp_path / "theirs")).reason
    # the control: a directory we own is accepted
    mine = tmp_path / "mine"
    mine.mkdir()
    assert svc.call("add", plugin="p", path=str(mine))["pluginID"] == "p"
    svc.call("remove", plugin="p")


# --- .devinfo off loopback is never dialled ----------------------------------------------------------------------------------
class Canary:
    """A TCP listener on 0.0.0.0:<port>: a dial to ANY local address of this port (0.0.0.0, 127.x, a name that
    resolves here) lands on it and is counted."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._halt.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self._halt.set()
        self.thread.join(5)
        self.sock.close()


def _write_devinfo(home: Path, plugin: str, addr: str, pid: int) -> Path:
    d = home / "plugins" / plugin
    d.mkdir(parents=True, exist_ok=True)
    doc = {"pid": pid, "protocol": "grpc", "protocolVersion": 1, "addr": addr, "pluginId": plugin,
           "vitePort": 0, "version": "0.1.0", "startedAt": protocol.now_rfc3339()}
    tmp = d / ".devinfo.tmp"
    tmp.write_text(json.dumps(doc))
    tmp.chmod(0o600)
    os.replace(tmp, d / ".devinfo")
    return d / ".devinfo"


def test_devinfo_off_loopback_is_never_dialled(svc, tmp_path):
    plugin_dir = tmp_path / "ext"
    plugin_dir.mkdir()
    svc.call("add", plugin="ext", path=str(plugin_dir), settings={"external": {"health_interval": 0.3}})
    sleeper = subprocess.Popen(["sleep", "120"])        # a live process of ours, older than the files below
    canary = Canary()
    sub = svc.subscribe(protocol.ERROR)
    try:
        svc.call("attach", plugin="ext")
        svc.wait_state("ext", lambda s: s["mode"] == "external", what="external mode")
        for addr in (f"0.0.0.0:{canary.port}", f"localhost.:{canary.port}", f"[::]:{canary.port}",
                     f"[::ffff:0.0.0.0]:{canary.port}"):
            _write_devinfo(svc.home, "ext", addr, sleeper.pid)
            ev = sub.wait(lambda e: e.meta.pluginID == "ext" and "devinfo_addr" in e.payload["errors"][0]["message"]
                          and addr.split(":")[0] in e.payload["errors"][0]["message"], what=f"refusal of {addr}")
            assert "not on loopback" in ev.payload["errors"][0]["message"] or \
                "not a loopback" in ev.payload["errors"][0]["message"] or \
                "devinfo_addr_invalid" in ev.payload["errors"][0]["message"], ev.payload
            # a few health ticks re-read the file meanwhile: still nothing may be dialled (absence has no event)
            time.sleep(1.0)
            assert canary.accepted == 0, f"{addr} was dialled"
            state = svc.call("status", plugin="ext")
            assert not state["grpcConnected"] and state["pluginPid"] == 0, state
        # the control: the same canary on loopback IS dialled (so its silence above means something); the file names
        # the process that listens there (this one), as a .devinfo must
        _write_devinfo(svc.home, "ext", f"127.0.0.1:{canary.port}", os.getpid())
        deadline = time.monotonic() + 15
        while canary.accepted == 0 and time.monotonic() < deadline:
            time.sleep(0.05)    # polling the canary's counter
        assert canary.accepted >= 1, "the loopback control was not dialled: the canary is blind"
    finally:
        sub.close()
        canary.close()
        sleeper.kill()
        sleeper.wait()
        svc.request("remove", plugin="ext")


# --- no shell -------------------------------------------------------------------------------------------------------------
SHELL_CALLS = {"system", "popen", "getoutput", "getstatusoutput", "create_subprocess_shell", "subprocess_shell",
               "spawnlp", "spawnvp", "spawnl", "spawnv", "execl", "execlp", "execle", "execlpe"}
SHELLS = {"sh", "bash", "dash", "zsh", "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash", "/usr/bin/env"}


def _shell_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in SHELL_CALLS:
                found.append(f"{path.name}:{node.lineno}: {name}()")
            if name in ("eval", "exec") and isinstance(node.func, ast.Name):
                found.append(f"{path.name}:{node.lineno}: {name}()")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{path.name}:{node.lineno}: shell={ast.unparse(kw.value)}")
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            first = node.elts[0]
            if isinstance(first, ast.Constant) and first.value in SHELLS and any(
                    isinstance(e, ast.Constant) and e.value == "-c" for e in node.elts[1:]):
                found.append(f"{path.name}:{node.lineno}: [{first.value!r}, ..., '-c', ...]")
    return found


def test_no_module_passes_anything_to_a_shell():
    files = [p for pkg in ("omnibroker", "omniworker", "omnibridge") for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 20
    found = [hit for f in files for hit in _shell_uses(f)]
    assert not found, found


def test_the_scan_sees_shell_uses(tmp_path):
    """Control for the scan above."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os, subprocess, asyncio\nos.system('x')\nsubprocess.run('x', shell=True)\n"
                   "subprocess.run(['sh', '-c', m])\nasyncio.create_subprocess_shell(m)\nsubprocess.run(a, shell=s)\n")
    assert len(_shell_uses(bad)) == 5


def test_worker_program_command_line_is_quoted(svc, tmp_path):
    """The worker's supervisord program line is built from the validated id with shlex quoting (supervisord splits
    it itself, without a shell)."""
    d = tmp_path / "q"
    d.mkdir()
    svc.call("add", plugin="a.b-c_1", path=str(d))
    try:
        conf = (svc.runtime / "workers" / "omniworker-a.b-c_1.conf").read_text()
        line = next(l for l in conf.splitlines() if l.startswith("command="))
        assert line.endswith("--plugin a.b-c_1") and "$" not in line and "`" not in line, line
    finally:
        svc.call("remove", plugin="a.b-c_1")


# --- the bridge --------------------------------------------------------------------------------------------------------------
def _bridge(svc) -> tuple[int, str]:
    """The bridge is part of every service: its port and token files must appear."""
    return svc.bridge_address(20)


def _upgrade(port: int, token: str | None, origin: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest("GET", "/ws" + (f"?token={token}" if token is not None else ""), skip_host=True)
        headers = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
        if origin:
            headers["Origin"] = origin
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_bridge_refuses_wrong_tokens_and_foreign_origins(svc):
    if not svc.program_pid("omnibridge"):
        pytest.skip("the omnibridge program is not RUNNING")
    port, token = _bridge(svc)
    own = f"http://127.0.0.1:{port}"
    assert _upgrade(port, token, own) == 101                   # the control
    assert _upgrade(port, "wrong", own) == 403
    assert _upgrade(port, None, own) == 403
    assert _upgrade(port, token + "x", own) == 403
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port}.evil.example", "http://127.0.0.1:1"):
        assert _upgrade(port, token, origin) == 403, origin
