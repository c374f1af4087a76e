"""Grandchildren that leave their process group and session (`setsid`) die with the part that started them.

The plugin is a copy of the example with one more file: an `init()` that starts `setsid sleep 7777.<unique>` with the
plugin's stderr (as a shell's `setsid sleep 7777 &` would), so the test finds exactly its process and the sleep holds
the plugin's pipe. That process must be gone within 2 s after `stop`, after `restart`, after kill -9 of the worker
(once the new worker runs), and after supervisord's shutdown — and the worker reaps those it adopted (no zombie).
"""
from __future__ import annotations

import os
import random
import signal
import time

import psutil
import pytest

from kit import Service, copy_example, managed_ready, plugin_toml, wait_status

PLUGIN = "hello"
GONE_WITHIN = 2.0

ESCAPE_GO = """package main

import (
	"os"
	"os/exec"
)

func init() {
	cmd := exec.Command("setsid", "sleep", "%s")
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	_ = cmd.Start()
}
"""


def sleepers(duration: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["cmdline"] == ["sleep", duration] and p.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(p)
    return out


def wait_sleeper(duration: str, not_pid: int | None = None, timeout: float = 30.0) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in sleepers(duration) if p.pid != not_pid]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)    # polling the process table
    raise AssertionError(f"no `sleep {duration}` started by the plugin within {timeout}s")


def gone_after(proc: psutil.Process, t0: float, zombie_ok: bool = False) -> float:
    """Seconds after t0 at which proc no longer exists (reaped; or a zombie when zombie_ok); fails past GONE_WITHIN."""
    while True:
        try:
            status = proc.status()
            gone = not proc.is_running() or (zombie_ok and status == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            gone = True
        now = time.monotonic()
        if gone:
            return now - t0
        if now - t0 > GONE_WITHIN:
            raise AssertionError(f"`{' '.join(proc.cmdline())}` (pid {proc.pid}, {status}, parent {proc.ppid()}) "
                                 f"still there {now - t0:.1f}s later")
        time.sleep(0.01)    # polling the process table


@pytest.fixture
def escaping(tmp_path):
    plugin_dir = copy_example(tmp_path / PLUGIN)
    duration = f"7777.{random.randrange(10**6):06d}"
    (plugin_dir / "pkg" / "escape.go").write_text(ESCAPE_GO % duration)
    svc = Service(plugin_toml(PLUGIN, plugin_dir, cookie=None))
    try:
        svc.start()
        wait_status(svc, PLUGIN, managed_ready, timeout=90, what="managed and ready")
        yield svc, duration
    finally:
        svc.cleanup()
        for p in sleepers(duration):
            p.kill()


def test_setsid_grandchild_dies_with_the_plugin(escaping):
    svc, duration = escaping
    first = wait_sleeper(duration)
    assert first.ppid() != svc.program_pid(f"omniworker-{PLUGIN}")     # the plugin's child, until the plugin goes

    svc.call("stop", plugin=PLUGIN)
    print(f"\nstop: gone after {gone_after(first, time.monotonic()):.3f}s")

    svc.call("start", plugin=PLUGIN)
    wait_status(svc, PLUGIN, managed_ready, timeout=60, what="managed and ready again")
    second = wait_sleeper(duration, not_pid=first.pid)
    svc.call("restart", plugin=PLUGIN)
    print(f"restart: gone after {gone_after(second, time.monotonic()):.3f}s")
    wait_status(svc, PLUGIN, managed_ready, timeout=60, what="managed and ready after restart")
    third = wait_sleeper(duration, not_pid=second.pid)

    worker = svc.wait_program(f"omniworker-{PLUGIN}")
    os.kill(worker, signal.SIGKILL)
    svc.wait_program(f"omniworker-{PLUGIN}", not_pid=worker)
    print(f"worker kill -9: gone after {gone_after(third, time.monotonic(), zombie_ok=True):.3f}s "
          f"(from the new worker's start)")
    wait_status(svc, PLUGIN, managed_ready, timeout=60, what="managed and ready under the new worker")
    fourth = wait_sleeper(duration, not_pid=third.pid)

    svc.stop()
    print(f"supervisord shutdown: gone after {gone_after(fourth, time.monotonic(), zombie_ok=True):.3f}s "
          f"(from supervisord's exit)")


def test_sweep_spares_other_runtime_dirs_and_plugins(escaping, tmp_path):
    """The start-up sweep kills only this runtime dir's processes of this plugin, and only this user's."""
    import subprocess
    svc, _ = escaping
    duration = f"7778.{random.randrange(10**6):06d}"
    others = []
    for mark in (f"{svc.runtime}-other|{PLUGIN}|x", f"{svc.runtime}|other|x", f"{tmp_path}|{PLUGIN}|x"):
        env = dict(os.environ, OMNI_CHILD=mark)
        others.append(subprocess.Popen(["sleep", duration], env=env, start_new_session=True))
    if os.getuid() == 0:
        # another user's process carrying this very plugin's mark (runuser waits for it: its exit shows the sleep's)
        others.append(subprocess.Popen(["runuser", "-u", "nobody", "--", "env", f"OMNI_CHILD={svc.runtime}|{PLUGIN}|x",
                                        "sleep", duration], start_new_session=True))
    try:
        worker = svc.wait_program(f"omniworker-{PLUGIN}")    # RUNNING (supervisord may still say STARTING)
        os.kill(worker, signal.SIGKILL)
        svc.wait_program(f"omniworker-{PLUGIN}", not_pid=worker)
        wait_status(svc, PLUGIN, managed_ready, timeout=60, what="managed and ready under the new worker")
        assert all(p.poll() is None for p in others)
        assert len(sleepers(duration)) == len(others)
    finally:
        for p in sleepers(duration):
            p.kill()
        for p in others:
            p.kill()
            p.wait()
