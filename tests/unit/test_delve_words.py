"""omniworker/delve.py without delve: the command lines, debug builds, stop positions, and the JSON-RPC client's
matching of answers to calls against a small fake server (answers out of order, then a closed connection)."""
from __future__ import annotations

import asyncio
import json

import pytest

from omniworker.delve import (DEBUG_GCFLAGS, DelveClient, DelveError, Stop, debug_build, delve_argv, find_dlv,
                              is_delve_line, stop_of)


def test_delve_argv():
    assert delve_argv("/usr/bin/dlv", "/h/bin/plugin", 2345) == [
        "/usr/bin/dlv", "exec", "--headless", "--accept-multiclient", "--api-version=2", "--only-same-user",
        "--listen=127.0.0.1:2345", "/h/bin/plugin"]
    assert delve_argv("dlv", "p", 2400, ["-v", "x"])[-4:] == ["p", "--", "-v", "x"]


def test_delve_lines():
    assert is_delve_line("API server listening at: 127.0.0.1:2345")
    assert not is_delve_line("1|1|unix|/tmp/plugin123|grpc|")


def test_debug_build_go_build_and_custom_commands():
    cmd, env = debug_build(["go", "build", "-o", "build/bin/plugin", "./pkg"], {"A": "1"})
    assert cmd == ["go", "build", "-gcflags=all=-N -l", "-o", "build/bin/plugin", "./pkg"]
    assert env == {"A": "1", "OMNI_DEBUG": "1", "OMNI_DEBUG_GCFLAGS": DEBUG_GCFLAGS}
    assert debug_build(["/usr/lib/go-1.19/bin/go", "build", "."], {})[0][2] == "-gcflags=all=-N -l"
    custom = ["make", "plugin"]
    cmd, env = debug_build(custom, {})
    assert cmd == custom and env["OMNI_DEBUG_GCFLAGS"] == "all=-N -l"


def test_find_dlv_names_the_package(tmp_path):
    with pytest.raises(DelveError, match=r"apt-get install delve"):
        find_dlv({"PATH": str(tmp_path)})


def test_stop_of():
    assert stop_of({"Running": True}) is None
    assert stop_of({"Running": False, "exited": True}) is None
    at_bp = {"Running": False, "currentThread": {
        "file": "/p/main.go", "line": 60, "function": {"name": "main.(*greeter).Greet"},
        "breakPoint": {"id": 1, "file": "/p/main.go", "line": 60, "functionName": "main.(*greeter).Greet"}}}
    assert stop_of(at_bp) == Stop("/p/main.go", 60, "main.(*greeter).Greet", 1)
    halted = {"Running": False, "currentThread": {"file": "/go/src/runtime/sys_linux_amd64.s", "line": 560,
                                                  "function": {"name": "runtime.futex"}}}
    assert stop_of(halted) == Stop("/go/src/runtime/sys_linux_amd64.s", 560, "runtime.futex", 0)
    assert stop_of({"Running": False, "currentThread": None}) == Stop("", 0, "", 0)


def test_client_matches_answers_and_fails_pending_calls_on_close():
    async def main():
        got: list[dict] = []
        all_in = asyncio.Event()

        async def serve(reader, writer):
            while len(got) < 3:
                got.append(json.loads(await reader.readline()))
            all_in.set()
            # answer the second call first, the first with an error, never the third; then hang up
            writer.write(json.dumps({"id": got[1]["id"], "result": {"State": {"Running": True}}}).encode() + b"\n")
            writer.write(json.dumps({"id": got[0]["id"], "result": None, "error": "boom"}).encode() + b"\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = await DelveClient.connect(port)
        first = client.send("Command", {"name": "halt"})
        second = client.send("State", {"NonBlocking": True})
        third = client.resume()
        await asyncio.wait_for(all_in.wait(), 5)
        assert [m["method"] for m in got] == ["RPCServer.Command", "RPCServer.State", "RPCServer.Command"]
        assert got[2]["params"] == [{"name": "continue"}]
        assert (await asyncio.wait_for(second, 5)) == {"State": {"Running": True}}
        with pytest.raises(DelveError, match="boom"):
            await asyncio.wait_for(first, 5)
        with pytest.raises(DelveError, match="closed the connection"):
            await asyncio.wait_for(third, 5)
        assert client.closed
        with pytest.raises(DelveError, match="closed the connection"):
            await client.state()
        await client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 20))
