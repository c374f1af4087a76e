"""A mode command that overruns the worker's budget (SERIAL_BUDGET, 20 s) is answered `timeout` and abandoned, and
the worker is restarted through supervisord: it kills what it ran, exits, and the new worker applies the desired state.

The plugin's "Vite" is a process that ignores SIGTERM, with `stop_grace = 120`: `stop` would wait two minutes for it.
"""
from __future__ import annotations

import time

import psutil

from kit import Service, copy_example, plugin_toml, toml_str

PLUGIN = "hello"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(7779)"


def test_overrunning_stop_is_abandoned_and_the_worker_restarted(tmp_path):
    import sys
    plugin_dir = copy_example(tmp_path / PLUGIN, go=False)
    config = plugin_toml(PLUGIN, plugin_dir, cookie=None) + (
        f"[plugins.{PLUGIN}.vite]\ncommand = [{toml_str(sys.executable)}, \"-c\", {toml_str(STUBBORN)}]\n"
        "args = []\nstop_grace = 120\nstart_timeout = 300\n")
    svc = Service(config)
    try:
        svc.start()
        svc.wait_state(PLUGIN, lambda s: s["mode"] == "managed" and s["viteStatus"] == "starting",
                       what="the stubborn Vite starting")
        deadline = time.monotonic() + 30
        stubborn = []
        while not stubborn:
            assert time.monotonic() < deadline, "the stubborn process never started"
            stubborn = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[-1:] == [STUBBORN]]
            time.sleep(0.05)    # polling the process table
        worker = svc.wait_program(f"omniworker-{PLUGIN}")

        t0 = time.monotonic()
        reply = svc.request("stop", plugin=PLUGIN, wait=40)
        took = time.monotonic() - t0
        assert reply is not None and reply.status == "error" and reply.code == "timeout", reply
        assert "abandoned" in reply.reason and "supervisord" in reply.reason, reply.reason
        assert 19 < took < 30, took            # the worker's budget, inside the broker's 30 s

        new = svc.wait_program(f"omniworker-{PLUGIN}", timeout=30, not_pid=worker)
        assert new != worker
        gone = psutil.wait_procs(stubborn, timeout=10)[1]
        assert not gone, gone                   # what the abandoned stop left running died with the old worker
        state = svc.wait_state(PLUGIN, lambda s: s["workerStatus"] == "up" and s["workerPid"] not in (0, worker)
                               and s["mode"] == "idle", timeout=30, what="the new worker, idle as desired")
        assert state["workerPid"] == svc.program_pid(f"omniworker-{PLUGIN}"), (state["workerPid"], new)
        assert state["pluginPid"] == 0
        assert svc.call("ping")["epoch"]
    finally:
        svc.cleanup()
