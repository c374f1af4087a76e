"""omniworker.preload without supervisord: which commands are forked, the title a forked worker shows, and how the
factory wraps (or leaves alone) supervisord's execve. The forked path itself runs in every integration test
(supervisor.d/omni.conf loads it); tests/integration/test_forked_workers.py checks it from outside."""
from __future__ import annotations

import os
import sys

import pytest

from doubles import FakeSupervisord
from omniworker import preload

PYTHON = os.path.join(sys.prefix, "bin", "python")


@pytest.fixture(autouse=True)
def no_freeze(monkeypatch):
    """The factory freezes the collector's objects for good: not in the test process."""
    monkeypatch.setattr(preload.gc, "freeze", lambda: None)
    monkeypatch.setattr(preload.gc, "disable", lambda: None)
WORKER = [PYTHON, "-m", "omniworker.worker", "--plugin", "hello"]


def test_a_worker_of_this_venv_is_forked():
    assert preload.is_worker_command(PYTHON, WORKER)


@pytest.mark.parametrize("filename, argv", [
    ("/usr/bin/python3", ["/usr/bin/python3", "-m", "omniworker.worker", "--plugin", "hello"]),  # another interpreter
    (os.path.join(sys.prefix, "bin", "omnibroker"), [os.path.join(sys.prefix, "bin", "omnibroker")]),
    (PYTHON, [PYTHON, "-m", "omnibroker.broker"]),
    (PYTHON, [PYTHON, "-c", "omniworker.worker"]),
])
def test_anything_else_is_execd(filename, argv):
    assert not preload.is_worker_command(filename, argv)


def test_the_title_is_the_exec_command_line_with_the_interpreters_name():
    assert preload.worker_title(WORKER) == "python -m omniworker.worker --plugin hello"


def test_the_factory_forks_workers_and_execs_the_rest(monkeypatch):
    monkeypatch.delenv("OMNI_WORKER_EXEC", raising=False)
    sv = FakeSupervisord()
    became = []
    monkeypatch.setattr(preload, "become_worker", lambda argv, env: became.append(argv))
    iface = preload.rpcinterface(sv)
    assert iface.getPreload() == {"forked": True, "modules": list(preload.PRELOAD), "why_not": ""}
    sv.options.execve("/bin/sleep", ["/bin/sleep", "1"], {})
    sv.options.execve(PYTHON, WORKER, {})
    assert became == [WORKER]
    # become_worker never returns in real life; the fake does, and the wrapper then falls through to the exec
    assert sv.execs == [("/bin/sleep", ["/bin/sleep", "1"]), (PYTHON, WORKER)]
    # supervisord makes its interfaces again on a reload: execve is not wrapped twice
    wrapped = sv.options.execve
    preload.rpcinterface(sv)
    assert sv.options.execve is wrapped


def test_omni_worker_exec_turns_it_off(monkeypatch):
    monkeypatch.setenv("OMNI_WORKER_EXEC", "1")
    sv = FakeSupervisord()
    real = sv.options.execve
    assert preload.rpcinterface(sv).getPreload()["forked"] is False
    assert sv.options.execve == real


def test_a_failed_preload_leaves_supervisord_execing(monkeypatch):
    monkeypatch.delenv("OMNI_WORKER_EXEC", raising=False)
    monkeypatch.setattr(preload, "PRELOAD", ("omniworker.no_such_module",))
    sv = FakeSupervisord()
    real = sv.options.execve
    state = preload.rpcinterface(sv).getPreload()
    assert state["forked"] is False and "no_such_module" in state["why_not"]
    assert sv.options.execve == real
    assert sv.warnings and "workers are exec'd" in sv.warnings[0]


@pytest.mark.parametrize("title", [False, True])
def test_the_broker_recognises_a_worker_by_either_command_line(title):
    """workers.is_worker_of reads the exec'd argv and the forked worker's title (one string in /proc) alike."""
    import subprocess

    from omnibroker.workers import is_worker_of
    wait = "import sys, time; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(60)"
    if title:
        argv = [sys.executable, "-c", "import setproctitle; setproctitle.setproctitle("
                "'python -m omniworker.worker --plugin hello'); " + wait]
    else:
        argv = [sys.executable, "-c", wait, "-m", "omniworker.worker", "--plugin", "hello"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "up\n"
        assert is_worker_of(proc.pid, "hello")
        assert not is_worker_of(proc.pid, "hell")
        assert not is_worker_of(proc.pid, "other")
    finally:
        proc.kill()
        proc.wait()
