"""`supervisorctl shutdown` with several managed plugins: supervisord exits and nothing of the service is left.

supervisord stops one process group at a time; on its SUPERVISOR_STATE_CHANGE_STOPPING the event listener tells the
broker, which tells every worker to stop its parts at once (worker.py, stop_parts). The test checks the behaviour, not
the speed: the broker told every worker, supervisord exits, and no process of the service is left — no worker, no
plugin binary, no `go build` (one is running when the shutdown begins), nothing carrying the service's runtime dir or
its OMNI_CHILD mark.
"""
from __future__ import annotations

import subprocess

from kit import (Service, copy_example, find_child, kind_of, managed_ready, plugin_toml, service_procs, wait_dead,
                 wait_status)
from support.example import REPO, VENV_BIN

from omniworker.children import marked

PLUGINS = [f"p{i}" for i in range(5)]       # Go only: five builds keep the CPU modest


def test_shutdown_stops_every_worker_at_once_and_leaves_nothing(tmp_path):
    config = "".join(plugin_toml(p, copy_example(tmp_path / p, ui=False, plugin_id=p), extra="vite = false\n")
                     for p in PLUGINS)
    with Service(config) as svc:
        for plugin in PLUGINS:
            wait_status(svc, plugin, lambda s: managed_ready(s, vite=False), timeout=120, what="managed and ready")
        svc.call("rebuild", plugin=PLUGINS[0])
        find_child(svc, PLUGINS[0], "go")         # a `go build` runs when the shutdown begins
        before = service_procs(svc)
        kinds = [kind_of(p) for p in before]
        assert kinds.count("plugin") >= len(PLUGINS) and kinds.count("worker") == len(PLUGINS), kinds

        out = subprocess.run([str(VENV_BIN / "supervisorctl"), "-c", "supervisor.d/omni.conf", "shutdown"],
                             cwd=REPO, env=svc.env, capture_output=True, text=True, timeout=30)
        assert "Shut down" in out.stdout, (out.stdout, out.stderr)
        assert svc.proc.wait(60) == 0, svc.logs("supervisord.out")

        left = wait_dead(service_procs(svc) + before, timeout=10)
        assert not left, f"left after supervisord's exit: {left}"
        assert not marked(f"{svc.runtime}|"), "processes carrying the service's OMNI_CHILD mark are left"
        # The broker told every worker; the first one supervisord stops may get its TERM before the notice.
        assert f"supervisord is stopping: telling {len(PLUGINS)} workers" in svc.logs("omnibroker.log")
        logs = {p: svc.logs(f"logs/omniworker-{p}.log", lines=200) for p in PLUGINS}
        assert any("stopping the parts: supervisord is stopping" in log for log in logs.values()), logs
