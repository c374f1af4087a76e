"""Resource faults on the real service: each one is a clear error event, and nothing else breaks (the other plugins
keep working, the broker answers).

- the Vite port range exhausted (`[service] vite_ports` of one port, two plugins);
- a read-only plugin home and a full disk while a new binary is installed (a read-only bind mount and a tiny tmpfs
  over `<home>/plugins/<id>/bin` when we may mount, else `chmod 0555` as a normal user): the old binary is kept;
- the Go toolchain missing from PATH, `node_modules` missing, the plugin dir deleted while watched;
- the inotify watch limit reached: the service runs in a throwaway user namespace whose own
  `/proc/sys/user/max_inotify_watches` is tiny (a per-namespace limit; the host's fs.inotify.* is not touched), so the
  kernel really answers ENOSPC to the worker's inotify_add_watch.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kit import (Service, SubWatch, copy_example, greet, managed_ready, plugin_toml, record, set_greeting,
                 wait_no_orphans, wait_status)
from omnibroker import protocol


def errors_for(subw: SubWatch, plugin: str, t0: float, pred, timeout: float = 30.0, what: str = "error event",
               key: str | None = None):
    """The first error event for `plugin` after t0 whose errors satisfy pred(list of errors); with `key`, the time
    from t0 to that event is recorded for docs/reliability.md."""
    found = {}

    def match(topic, p, payload):
        if topic == protocol.ERROR and p == plugin and pred(payload["errors"]):
            found["errors"] = payload["errors"]
            return True
        return False
    t = subw.first(t0, match, timeout=timeout, what=f"{what} for {plugin}")
    if key:
        record(key, error_event_s=t - t0)
    return found["errors"]


def text_of(errors: list[dict]) -> str:
    return "\n".join(e["message"] for e in errors)


def still_fine(svc: Service, healthy: str, vite: bool = False) -> None:
    """The broker answers and the healthy plugin still serves."""
    assert svc.call("ping", wait=5)["epoch"]
    state, _ = wait_status(svc, healthy, lambda s: managed_ready(s, vite=vite), what=f"{healthy} still ready")
    assert greet(svc, healthy).endswith(", chaos")


# --- the Vite port range exhausted ----------------------------------------------------------------------------------
def _free_port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            return port
    raise RuntimeError("no free port")


def test_port_range_exhausted(tmp_path):
    port = _free_port()
    a = copy_example(tmp_path / "a", go=False)
    b = copy_example(tmp_path / "b", go=False)
    svc = Service(f"[service]\nvite_ports = [{port}, {port + 1}]\n\n"
                  + plugin_toml("a", a) + plugin_toml("b", b))
    try:
        svc.start()
        subw = SubWatch(svc)
        subw.start()
        t0 = time.monotonic()
        # both autostart: exactly one gets the only port, the other says why it has none
        states = {}
        for p in ("a", "b"):
            states[p], _ = wait_status(svc, p, lambda s: s["viteStatus"] in ("ready", "error"),
                                       what="vite running or error")
        winner = next(p for p, s in states.items() if s["viteStatus"] == "ready")
        loser = "b" if winner == "a" else "a"
        assert states[winner]["vitePort"] == port
        assert "port" in states[loser]["lastError"] and "vite_ports" in states[loser]["lastError"]
        t0 = time.monotonic()
        svc.call("restart", plugin=loser)       # the same again, now that our subscriber listens
        errs = errors_for(subw, loser, t0, lambda es: "port" in text_of(es), key="res:no-port")
        assert "exhausted" in text_of(errs)
        # an explicit start gets the broker's no_port reply, naming the range
        reply = svc.request("start", plugin=loser, wait=10)
        assert reply.status == "error" and reply.code == "no_port", reply
        assert f"{port}-{port}" in reply.reason, reply.reason
        # nothing else broke: the winner still serves its UI, the broker answers
        assert svc.call("status", plugin=winner)["viteStatus"] == "ready"
        assert svc.call("ping")["epoch"]
        # and the port is reusable once the winner stops
        svc.call("stop", plugin=winner)
        wait_status(svc, winner, lambda s: s["mode"] == "idle", what="winner idle")
        svc.call("start", plugin=loser)
        state, _ = wait_status(svc, loser, lambda s: s["viteStatus"] == "ready", what="loser gets the port")
        assert state["vitePort"] == port
        subw.stop()
    finally:
        svc.cleanup()


# --- one service for the per-plugin faults -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def misc(tmp_path_factory):
    base = tmp_path_factory.mktemp("resource")
    dirs = {
        "hello": copy_example(base / "hello", ui=False),          # healthy; its home gets the install faults
        "nogo": copy_example(base / "nogo", ui=False),            # Go missing from PATH
        "nm": copy_example(base / "nm", go=False),                # ui/ without node_modules
        "gone": copy_example(base / "gone", ui=False),            # its dir is deleted while watched
    }
    shutil.rmtree(dirs["nm"] / "ui" / "node_modules")
    config = (plugin_toml("hello", dirs["hello"]) + plugin_toml("nogo", dirs["nogo"], build_env={"PATH": "/nonexistent"})
              + plugin_toml("nm", dirs["nm"]) + plugin_toml("gone", dirs["gone"]))
    svc = Service(config)
    svc.dirs = dirs
    t0 = time.monotonic()
    try:
        svc.start()
        svc.subw = SubWatch(svc)
        svc.subw.start()
        for p in ("hello", "gone"):
            wait_status(svc, p, lambda s: managed_ready(s, vite=False), timeout=90, what="ready")
    except BaseException:
        svc.cleanup()
        raise
    svc.t_start = t0
    yield svc
    svc.subw.stop()
    svc.cleanup()


def test_go_toolchain_missing_from_path(misc):
    svc = misc
    t0 = time.monotonic()
    svc.call("restart", plugin="nogo")      # its first failure may predate our subscriber: fail again
    errs = errors_for(svc.subw, "nogo", t0, lambda es: "PATH" in text_of(es), key="res:no-go")
    text = text_of(errs)
    assert "'go' was not found on PATH" in text and "/nonexistent" in text, text
    state = svc.call("status", plugin="nogo")
    assert state["goStatus"] == "error" and "not found on PATH" in state["lastError"], state
    reply = svc.request("invoke", plugin="nogo", method="/hello.Greeter/Greet", request="", timeout=2)
    assert reply.status == "error" and reply.code == "not_running" and reply.reason, reply
    still_fine(svc, "hello")


def test_node_modules_missing(misc):
    svc = misc
    t0 = time.monotonic()
    svc.call("restart", plugin="nm")
    errs = errors_for(svc.subw, "nm", t0, lambda es: "node_modules" in text_of(es), key="res:no-node_modules")
    assert errs[0]["file"].endswith("ui/package.json") and "npm ci" in errs[0]["message"], errs
    state = svc.call("status", plugin="nm")
    assert state["viteStatus"] == "error" and "npm ci" in state["lastError"], state
    still_fine(svc, "hello")


def test_plugin_dir_deleted_while_watched(misc):
    svc = misc
    before, _ = wait_status(svc, "gone", lambda s: managed_ready(s, vite=False), what="gone ready")
    t0 = time.monotonic()
    shutil.rmtree(svc.dirs["gone"])
    errs = errors_for(svc.subw, "gone", t0, lambda es: f"plugin directory {svc.dirs['gone']} " in text_of(es),
                      key="res:dir-deleted")
    assert "disappeared" in text_of(errs) or "does not exist" in text_of(errs), errs
    # the installed binary keeps serving; the deleted dir is not re-created behind the user's back
    state, _ = wait_status(svc, "gone", lambda s: s["goStatus"] == "error", what="goStatus error")
    assert state["grpcConnected"] and state["pluginPid"] == before["pluginPid"], state
    assert greet(svc, "gone") == "Hello, chaos"
    assert not svc.dirs["gone"].exists(), list(svc.dirs["gone"].rglob("*"))
    still_fine(svc, "hello")


# --- installing a binary into a home we cannot write -----------------------------------------------------------------------
def _can_mount(tmp: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = tmp / "mount-probe"
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    return ok


@contextlib.contextmanager
def read_only(path: Path, tmp: Path):
    """`path` read-only for the worker: a read-only bind mount (root), else chmod 0555 (a normal user)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield "chmod 0555"
        finally:
            path.chmod(0o755)
        return
    if not _can_mount(tmp):
        pytest.skip("running as root without mount(2): root ignores file modes, so nothing can be made read-only")
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield "read-only bind mount"
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def full_disk(path: Path, tmp: Path):
    """A tmpfs over `path` just big enough for the binaries already in it: the next install gets ENOSPC."""
    if not _can_mount(tmp):
        pytest.skip("needs mount(2) (root) for a tiny tmpfs")
    saved = tmp / "saved-bin"
    shutil.copytree(path, saved)
    size = sum(f.stat().st_size for f in saved.iterdir()) + (256 << 10)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        for f in saved.iterdir():
            shutil.copy2(f, path / f.name)
        yield size
    finally:
        subprocess.run(["umount", str(path)], check=True)
        shutil.rmtree(saved)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fault", ["read-only", "disk-full"])
def test_install_into_unwritable_home_keeps_the_old_binary(misc, tmp_path, fault):
    svc = misc
    plugin_dir = svc.dirs["hello"]
    before, _ = wait_status(svc, "hello", lambda s: managed_ready(s, vite=False), what="hello ready")
    old_greeting = greet(svc, "hello").split(",")[0]
    bin_dir = svc.home / "plugins" / "hello" / "bin"
    binary = bin_dir / "plugin"
    ctx = read_only(bin_dir, tmp_path) if fault == "read-only" else full_disk(bin_dir, tmp_path)
    new_greeting = f"Fault{fault.replace('-', '')}"
    with ctx as how:
        old_digest = _digest(binary)
        t0 = time.monotonic()
        set_greeting(plugin_dir, new_greeting)
        want = {"read-only": ("read-only", "permission denied", "not permitted"),
                "disk-full": ("no space left",)}[fault]
        errs = errors_for(svc.subw, "hello", t0, lambda es: "cannot install" in text_of(es), timeout=60,
                          key=f"res:{fault}")
        text = text_of(errs)
        assert any(w in text for w in want) and "previously installed binary is kept" in text, (how, text)
        record(f"res:{fault}", how=str(how), message=text.split(": ", 1)[-1][:60])
        state, _ = wait_status(svc, "hello", lambda s: s["goStatus"] == "error", what="goStatus error")
        assert state["grpcConnected"] and state["pluginPid"] == before["pluginPid"], state
        assert _digest(binary) == old_digest
        assert sorted(p.name for p in bin_dir.iterdir() if p.name.endswith(".tmp")) == []
        assert greet(svc, "hello") == f"{old_greeting}, chaos"          # the old plugin keeps serving
        assert svc.call("ping")["epoch"]
    # writable again: the next build installs
    svc.call("rebuild", plugin="hello")
    wait_status(svc, "hello", lambda s: managed_ready(s, vite=False) and s["pluginPid"] != before["pluginPid"],
                timeout=60, what="ready with the new binary")
    assert greet(svc, "hello") == f"{new_greeting}, chaos"
    wait_no_orphans(svc, ["hello", "nogo", "nm", "gone"])


# --- the inotify watch limit ---------------------------------------------------------------------------------------------------
class NamespacedService(Service):
    """supervisord in a new user namespace (uid mapped to itself) whose own inotify watch limit is `watches`."""

    def __init__(self, config_text: str, watches: int):
        super().__init__(config_text)
        self.watches = watches

    def start(self, timeout: float = 30.0) -> dict:
        from support.example import REPO, VENV_BIN
        self.log = open(self.tmp / "supervisord.out", "w")
        script = (f"echo {self.watches} > /proc/sys/user/max_inotify_watches && "
                  f'exec "$0" -n -c supervisor.d/omni.conf')
        self.proc = subprocess.Popen(["unshare", "--user", "--map-root-user", "--", "sh", "-c", script,
                                      str(VENV_BIN / "supervisord")],
                                     cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self.wait_ping(timeout)


def _userns_limit_works() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False       # --map-root-user as a normal user maps to root inside: file ownership checks would fail
    try:
        out = subprocess.run(["unshare", "--user", "--map-root-user", "--", "sh", "-c",
                              "echo 1 > /proc/sys/user/max_inotify_watches && cat /proc/sys/user/max_inotify_watches"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == "1"


# watches the hello worker needs: the plugin dir, pkg/, pkg/devinfo/. With 1 the pkg/ watch fails (watchdog raises);
# with 2 only pkg/devinfo/ fails, which watchdog swallows (the worker's probe must catch it).
@pytest.mark.parametrize("limit", [1, 2])
def test_inotify_watch_limit_names_the_sysctl(tmp_path, limit):
    if not _userns_limit_works():
        pytest.skip("needs root and unprivileged-style user namespaces with a writable "
                    "/proc/sys/user/max_inotify_watches")
    plugin_dir = copy_example(tmp_path / "hello", ui=False)
    svc = NamespacedService(plugin_toml("hello", plugin_dir), watches=limit)
    try:
        svc.start()
        subw = SubWatch(svc)
        subw.start()
        # the plugin is built and served all the same
        state, _ = wait_status(svc, "hello", lambda s: managed_ready(s, vite=False), timeout=60, what="ready")
        assert greet(svc) == "Hello, chaos"
        logs = svc.call("logs", plugin="hello", source="go-watch")["entries"]
        assert any("fs.inotify.max_user_watches" in e["message"] and e["level"] == "error" for e in logs), logs
        # the error event (again after a restart, now that our subscriber listens)
        t0 = time.monotonic()
        svc.call("restart", plugin="hello")
        errs = errors_for(subw, "hello", t0, lambda es: "inotify" in text_of(es), timeout=60,
                          key=f"res:inotify-limit-{limit}")
        text = text_of(errs)
        assert "fs.inotify.max_user_watches" in text and "watch limit" in text, text
        state, _ = wait_status(svc, "hello", lambda s: managed_ready(s, vite=False), timeout=60, what="ready")
        # `rebuild` works without the watcher; the broker answers
        set_greeting(plugin_dir, "Unwatched")
        svc.call("rebuild", plugin="hello")
        wait_status(svc, "hello", lambda s: managed_ready(s, vite=False) and s["pluginPid"] != state["pluginPid"],
                    timeout=60, what="rebuilt")
        assert greet(svc) == "Unwatched, chaos"
        subw.stop()
    finally:
        svc.cleanup()
