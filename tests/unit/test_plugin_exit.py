"""A plugin process that exits right after its go-plugin handshake is reported at once, with its exit code — not as
a "cannot connect" once the handshake timeout (15 s) has passed. A real process (a shell script) plays the plugin."""
from __future__ import annotations

import asyncio
import time

import pytest

from omnibroker import protocol
from omniworker.context import NullSink, PluginContext
from omniworker.goplugin import PluginError, PluginHost


@pytest.mark.parametrize("network,addr", [("unix", "{tmp}/plugin.sock"), ("tcp", "127.0.0.1:1")])
def test_exit_right_after_handshake(tmp_path, monkeypatch, network, addr):
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("OMNIVIEW_HOME", str(tmp_path / "home"))
    (tmp_path / "run").mkdir(mode=0o700)
    script = tmp_path / "plugin"
    script.write_text(f"#!/bin/sh\necho '1|1|{network}|{addr.format(tmp=tmp_path)}|grpc'\n"
                      "echo 'fatal: config missing' >&2\nexit 3\n")
    script.chmod(0o755)

    async def run() -> tuple[PluginError, float]:
        ctx = PluginContext(protocol.PluginSpec(id="p", path=str(tmp_path)), NullSink())
        host = PluginHost(ctx)
        t0 = time.monotonic()
        with pytest.raises(PluginError) as err:
            await host.start(str(script), timeout=15.0)
        return err.value, time.monotonic() - t0

    err, took = asyncio.run(run())
    assert "the plugin process exited with code 3 right after its handshake" in str(err), str(err)
    assert "fatal: config missing" in str(err)
    assert err.returncode == 3
    assert took < 5.0, took
