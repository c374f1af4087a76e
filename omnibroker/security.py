"""Socket security: ipc sockets live in the 0700 runtime dir (files 0600); TCP is opt-in and then CURVE-only.

A TCP endpoint (e.g. OMNI_CONTROL=tcp://127.0.0.1:5601) makes every party use CURVE with the keys in
`$OMNI_CURVE_DIR` (created by `omnictl curve-keygen DIR`, zmq.auth certificate format):
  server.key_secret   the broker's key pair (broker only)
  server.key          the broker's public key (every client: omnictl, workers, bridge, omnievents)
Without the directory the broker refuses to bind a TCP endpoint, and a client that does not know the server's public
key cannot complete the handshake, so it gets no answer at all.
"""
from __future__ import annotations

import os

import zmq


class InsecureEndpoint(Exception):
    """A TCP endpoint was configured without CURVE keys."""


def _curve_dir(endpoint: str) -> str:
    path = os.environ.get("OMNI_CURVE_DIR", "")
    if not path or not os.path.isdir(path):
        raise InsecureEndpoint(f"{endpoint} is a TCP endpoint: it requires CURVE keys; create them with "
                               "`omnictl curve-keygen DIR` and set OMNI_CURVE_DIR=DIR (or use the ipc:// default)")
    return path


def _load(path: str) -> tuple[bytes, bytes | None]:
    import zmq.auth     # only TCP users pay for it
    public, secret = zmq.auth.load_certificate(path)
    return public, secret


def secure_server(sock: zmq.Socket, endpoint: str) -> None:
    """Before bind: CURVE server for TCP endpoints; nothing for ipc."""
    if not endpoint.startswith("tcp://"):
        return
    public, secret = _load(os.path.join(_curve_dir(endpoint), "server.key_secret"))
    if not secret:
        raise InsecureEndpoint(f"{endpoint}: server.key_secret in $OMNI_CURVE_DIR has no secret key")
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def secure_client(sock: zmq.Socket, endpoint: str) -> None:
    """Before connect: CURVE client (a fresh key pair, the server's public key) for TCP endpoints."""
    if not endpoint.startswith("tcp://"):
        return
    server_public, _ = _load(os.path.join(_curve_dir(endpoint), "server.key"))
    client_public, client_secret = zmq.curve_keypair()
    sock.curve_serverkey = server_public
    sock.curve_publickey = client_public
    sock.curve_secretkey = client_secret


def keygen(directory: str) -> tuple[str, str]:
    """Create server.key / server.key_secret in `directory` (0700)."""
    import zmq.auth
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    public, secret = zmq.auth.create_certificates(directory, "server")
    os.chmod(secret, 0o600)
    return public, secret
