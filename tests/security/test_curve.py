"""TCP endpoints: refused without CURVE keys; with keys, only clients that know the server's key get answers."""
import os
import socket
import subprocess
import sys

import pytest
import zmq

from omnibroker.client import BrokerUnavailable, Client
from omnibroker.security import keygen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tcp_env(tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    (tmp_path / "omni.toml").write_text("")
    env = dict(os.environ, OMNI_RUNTIME_DIR=str(runtime), OMNIVIEW_HOME=str(tmp_path / "home"),
               OMNI_CONFIG=str(tmp_path / "omni.toml"), OMNI_CONTROL=f"tcp://127.0.0.1:{free_port()}",
               SUPERVISOR_SERVER_URL=f"unix://{runtime}/nobody.sock")
    env.pop("OMNI_CURVE_DIR", None)
    return env


def test_tcp_endpoint_without_curve_keys_refuses_to_start(tcp_env):
    out = subprocess.run([sys.executable, "-m", "omnibroker.broker"], env=tcp_env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2
    assert "requires CURVE keys" in out.stderr and "curve-keygen" in out.stderr


def test_tcp_with_curve_only_answers_clients_that_know_the_server_key(tcp_env, tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keygen(str(keys))
    tcp_env["OMNI_CURVE_DIR"] = str(keys)
    broker = subprocess.Popen([sys.executable, "-m", "omnibroker.broker"], env=tcp_env, stderr=subprocess.PIPE)
    try:
        monkeypatch.setenv("OMNI_CURVE_DIR", str(keys))
        endpoint = tcp_env["OMNI_CONTROL"]
        with Client(endpoint, timeout=5.0, retries=3) as client:
            assert client.call("ping")["epoch"]
        # A plain (non-CURVE) client: the handshake fails, nothing is answered.
        ctx = zmq.Context()
        plain = ctx.socket(zmq.REQ)
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(endpoint)
        plain.send(b'{"id": "1", "command": "ping", "properties": {}}')
        assert not plain.poll(1000)
        # A CURVE client with another server key: no answer either.
        other = tmp_path / "other"
        keygen(str(other))
        monkeypatch.setenv("OMNI_CURVE_DIR", str(other))
        with pytest.raises(BrokerUnavailable):
            Client(endpoint, timeout=1.0, retries=1).call("ping")
        ctx.destroy(linger=0)
    finally:
        broker.terminate()
        broker.wait(10)
