"""The words and the modes agree: every socket of a running service is 0600 in the 0700 runtime dir (README,
"Security"), and its owner still talks to each of them."""
from __future__ import annotations

import os
import stat

from kit import Service


def test_service_sockets_are_0600():
    svc = Service()
    try:
        svc.start()
        assert stat.S_IMODE(os.stat(svc.runtime).st_mode) == 0o700
        modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in svc.runtime.iterdir()
                 if stat.S_ISSOCK(p.lstat().st_mode)}
        assert {"control.sock", "events.sock", "workers.sock", "supervisor.sock"} <= set(modes), modes
        assert all(m == 0o600 for m in modes.values()), {k: oct(m) for k, m in modes.items()}
        assert svc.call("ping")["epoch"]                                 # control.sock
        assert svc.supervisor().getState()["statename"] == "RUNNING"    # supervisor.sock
    finally:
        svc.cleanup()
