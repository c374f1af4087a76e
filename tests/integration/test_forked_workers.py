"""Workers forked from a supervisord that preloaded them (omniworker/preload.py), against the exec'd workers of
`OMNI_WORKER_EXEC=1`, through the real supervisord: either way the worker is supervisord's own child, shows its
command line, runs with its program's environment (its plugin inherits it), stops on supervisord's TERM by itself,
and starts again."""
from __future__ import annotations

import subprocess

import psutil
import pytest

from support.config import plugin_toml
from support.example import REPO, VENV_BIN, copy_example
from support.service import Service

PROGRAM = "omniworker-hello"


@pytest.fixture(scope="module", params=["forked", "exec"])
def svc(request, tmp_path_factory):
    plugin = copy_example(tmp_path_factory.mktemp("plugin") / "hello", ui=False)
    env = {"OMNI_WORKER_EXEC": "1"} if request.param == "exec" else {}
    service = Service(plugin_toml("hello", plugin), extra_env=env)
    service.mode = request.param
    service.start()
    yield service
    service.cleanup()


def ready(s: dict) -> bool:
    return s["goStatus"] == "ready" and s["grpcConnected"]


def environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(e.decode().partition("=")[::2] for e in f.read().split(b"\0") if b"=" in e)


def test_supervisord_says_how_it_starts_workers(svc):
    state = svc.rpc().omniworker.getPreload()
    assert state["forked"] is (svc.mode == "forked"), state
    if svc.mode == "exec":
        assert state["why_not"] == "OMNI_WORKER_EXEC=1"


def test_the_worker_is_supervisords_child_with_its_command_line(svc):
    state = svc.wait_state("hello", ready, timeout=120, what="ready")
    pid = state["workerPid"]
    assert pid == svc.wait_program(PROGRAM)         # RUNNING once up for startsecs
    worker = psutil.Process(pid)
    assert worker.ppid() == svc.proc.pid
    args = " ".join(worker.cmdline()).split()
    assert args[-4:] == ["-m", "omniworker.worker", "--plugin", "hello"]
    if svc.mode == "forked":
        assert args[0] == "python"           # the title where supervisord's command line was
        assert environ(pid).get("OMNI_RUNTIME_DIR") == str(svc.runtime)     # /proc/PID/environ left readable


def test_the_plugin_inherits_the_programs_environment(svc):
    state = svc.wait_state("hello", ready, timeout=120, what="ready")
    env = environ(state["pluginPid"])
    # set by supervisord for this program only, and by the program's `environment=` line: not in supervisord's own
    assert env.get("SUPERVISOR_PROCESS_NAME") == PROGRAM
    assert env.get("MALLOC_ARENA_MAX") == "2"
    assert env.get("OMNI_RUNTIME_DIR") == str(svc.runtime)


def test_supervisorctl_stop_and_start(svc):
    svc.wait_state("hello", ready, timeout=120, what="ready")
    ctl = [str(VENV_BIN / "supervisorctl"), "-c", "supervisor.d/omni.conf"]
    out = subprocess.run([*ctl, "stop", PROGRAM], env=svc.env, cwd=REPO, capture_output=True, text=True,
                         timeout=30)
    assert "stopped" in out.stdout, out
    info = svc.supervisor().getProcessInfo(PROGRAM)
    assert info["statename"] == "STOPPED" and info["exitstatus"] == 0, info      # it exited on TERM by itself
    assert "stopping" in svc.logs(f"logs/{PROGRAM}.log", lines=200)
    out = subprocess.run([*ctl, "start", PROGRAM], env=svc.env, cwd=REPO, capture_output=True, text=True,
                         timeout=30)
    assert "started" in out.stdout, out
    svc.wait_state("hello", lambda s: ready(s) and s["workerPid"] == svc.program_pid(PROGRAM), timeout=60,
                   what="ready under the new worker")


def test_supervisorctl_reload_starts_them_the_same_way(svc):
    """A reload makes supervisord's rpcinterfaces again: the worker comes back as supervisord's child, started as
    before (forked without a second preload, or exec'd)."""
    old = svc.wait_state("hello", ready, timeout=120, what="ready")["workerPid"]
    ctl = [str(VENV_BIN / "supervisorctl"), "-c", "supervisor.d/omni.conf"]
    out = subprocess.run([*ctl, "reload"], env=svc.env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "Restarted supervisord" in out.stdout, out
    svc.wait_ping(60)
    state = svc.wait_state("hello", lambda s: ready(s) and s["workerPid"] not in (0, old), timeout=120,
                           what="ready under a new worker")
    assert psutil.Process(state["workerPid"]).ppid() == svc.proc.pid
    assert svc.rpc().omniworker.getPreload()["forked"] is (svc.mode == "forked")
    args = " ".join(psutil.Process(state["workerPid"]).cmdline()).split()
    assert (args[0] == "python") is (svc.mode == "forked")
