"""A full runtime dir (a small tmpfs mounted over it, then filled): every registry change is refused with `no_space`
and changes nothing — not the plugin list, not supervisord's programs, not the state file — and a broker restarted
once there is room again has exactly the plugins it had (none lost, none resurrected)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kit import RESULTS, Service, copy_example, plugin_toml


def _can_mount(tmp: Path) -> str:
    """"" when a tmpfs can be mounted here, else why not."""
    if os.geteuid() != 0:
        return "needs root for mount(2) of a small tmpfs"
    if not shutil.which("mount"):
        return "no mount(8) on this machine"
    probe = tmp / "mount-probe"
    probe.mkdir(exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        return f"cannot mount a tmpfs: {out.stderr.strip()}"
    subprocess.run(["umount", str(probe)], check=True)
    return ""


def fill(directory: Path) -> Path:
    """Write a file in `directory` until the file system is full; returns it (delete it to make room again)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    return filler


def programs(svc: Service) -> dict[str, tuple[str, int]]:
    """supervisord's worker programs: name -> (state, pid); the same pid means the worker was not restarted."""
    return {p["name"]: (p["statename"], p["pid"]) for p in svc.supervisor().getAllProcessInfo()
            if p["name"].startswith("omniworker-")}


def listed(svc: Service) -> dict[str, tuple[str, bool]]:
    return {p["pluginID"]: (p["mode"], p["registered"]) for p in svc.call("list")["plugins"]}


def test_full_runtime_dir_changes_nothing(tmp_path):
    why = _can_mount(tmp_path)
    if why:
        pytest.skip(why)
    q1 = copy_example(tmp_path / "q1", ui=False)
    q2 = copy_example(tmp_path / "q2", ui=False)
    q3 = copy_example(tmp_path / "q3", ui=False)
    q2_moved = copy_example(tmp_path / "q2-moved", ui=False, plugin_id="q2")
    svc = Service(plugin_toml("q1", q1, autostart=False))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(svc.runtime)], check=True)
    try:
        svc.start()
        svc.call("add", plugin="q2", path=str(q2))
        for plugin in ("q1", "q2"):
            svc.wait_state(plugin, lambda s: s["workerStatus"] == "up", what="worker up")
            svc.wait_program(f"omniworker-{plugin}")
        before = listed(svc)
        programs_before = programs(svc)
        state_file = svc.runtime / "state.json"
        state_before = state_file.read_bytes()
        assert set(before) == {"q1", "q2"} and set(programs_before) == {"omniworker-q1", "omniworker-q2"}

        filler = fill(svc.runtime)
        full = f"the runtime dir {svc.runtime} is full"
        attempts = [("add", {"plugin": "q3", "path": str(q3)}), ("remove", {"plugin": "q2"}),
                    ("remove", {"plugin": "q1"}), ("start", {"plugin": "q1"}), ("attach", {"plugin": "q2"}),
                    ("stop", {"plugin": "q2"}), ("add", {"plugin": "q2", "path": str(q2_moved)})]
        answers = []
        for command, props in attempts:
            t0 = time.monotonic()
            reply = svc.request(command, wait=30, **props)
            answers.append(time.monotonic() - t0)
            assert reply is not None and reply.status == "error", (command, props, reply)
            assert reply.code == "no_space" and reply.reason.startswith(full), (command, props, reply)
        assert svc.call("ping")["epoch"]
        assert listed(svc) == before
        assert programs(svc) == programs_before
        assert state_file.read_bytes() == state_before
        assert not (svc.runtime / "workers" / "omniworker-q3.conf").exists()
        assert json.loads(state_before)["added"]["q2"]["path"] == str(q2)
        for plugin in ("q1", "q2"):
            assert svc.call("status", plugin=plugin)["mode"] == "idle"

        # a broker restarted while the dir is still full, then once there is room again: the same plugins, in the
        # same desired state, the same workers (re-registered: the epoch file changed)
        restarts = []
        for make_room in (False, True):
            if make_room:
                filler.unlink()
            epoch = svc.call("ping")["epoch"]
            sup = svc.supervisor()
            sup.stopProcess("omnibroker")
            t0 = time.monotonic()
            sup.startProcess("omnibroker")
            assert svc.wait_ping()["epoch"] != epoch
            restarts.append(round(time.monotonic() - t0, 2))
            assert listed(svc) == before
            assert programs(svc) == programs_before
            for plugin in ("q1", "q2"):
                state = svc.wait_state(plugin, lambda s: s["workerStatus"] == "up", what="worker registered again")
                assert state["workerPid"] == programs_before[f"omniworker-{plugin}"][1]
        RESULTS["runtime_full"] = {"refusals": len(answers), "slowest_answer_s": round(max(answers), 3),
                                   "broker_restart_full_s": restarts[0], "broker_restart_s": restarts[1]}
        # and the refused changes now go through
        svc.call("remove", plugin="q2")
        assert set(listed(svc)) == {"q1"}
    finally:
        svc.stop()
        subprocess.run(["umount", "-l", str(svc.runtime)], check=False)
        shutil.rmtree(svc.tmp, ignore_errors=True)
