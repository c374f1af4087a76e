"""Another program takes the Vite port after the broker allocated it: Vite moves to the broker's next free port.

The plugin's Vite command is wrapped: the wrapper writes the port it was given to a file and, the first time only,
waits for the test to squat that port (a listening socket) before it execs Vite — so the port is taken exactly
between the allocation and Vite's bind. Vite exits with "Port N is already in use"; the worker asks the broker for
another port; Vite serves there; the broker holds the new port (state.json) and not the squatted one; no error event.
"""
from __future__ import annotations

import json
import socket
import time
import urllib.request

from kit import Service, copy_example, plugin_toml, toml_str
from omnibroker import protocol

PLUGIN = "hello"
WRAPPER = 'echo "$0" > "$PORT_FILE"; while [ ! -e "$GO_FILE" ]; do sleep 0.02; done; exec "$@"'


def test_vite_moves_off_a_port_taken_after_allocation(tmp_path):
    plugin_dir = copy_example(tmp_path / PLUGIN, go=False)
    port_file, go_file = tmp_path / "port", tmp_path / "go"
    vite_bin = plugin_dir / "ui" / "node_modules" / ".bin" / "vite"
    config = plugin_toml(PLUGIN, plugin_dir, cookie=None) + (
        f"[plugins.{PLUGIN}.vite]\n"
        f"command = [\"sh\", \"-c\", {toml_str(WRAPPER)}, \"{{port}}\", {toml_str(str(vite_bin))}]\n"
        f"env = {{ PORT_FILE = {toml_str(str(port_file))}, GO_FILE = {toml_str(str(go_file))} }}\n")
    svc = Service(config)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # as Vite binds (Node sets SO_REUSEADDR): a connection of an earlier server in TIME_WAIT does not block the bind,
    # a listening socket still does
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        svc.start()
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline, "the wrapped Vite command never ran"
            time.sleep(0.02)    # polling a file written by the wrapper
        taken = int(port_file.read_text())
        events = svc.subscribe(protocol.ERROR)
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        go_file.touch()
        state = svc.wait_state(PLUGIN, lambda s: s["viteStatus"] in ("running", "ready") and s["vitePort"] != taken,
                               timeout=60, what="Vite serving on another port")
        port = state["vitePort"]
        assert state["lastError"] == "", state["lastError"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200
        held = json.loads((svc.runtime / "state.json").read_text())["ports"]["held"]
        assert held == {PLUGIN: port}, held
        logs = svc.call("logs", plugin=PLUGIN, source="manager")["entries"]
        assert any(f"port {taken} is in use by another program: moving to port {port}" in e["message"]
                   for e in logs), [e["message"] for e in logs][-10:]
        assert events.next(timeout=0.5) is None, "an error event for a port move"
        events.close()
    finally:
        squatter.close()
        svc.cleanup()
