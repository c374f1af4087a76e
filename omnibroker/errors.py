"""Control error codes and the exception command code raises (part of the protocol; see protocol.py).

Kept free of msgspec and pyzmq so that omnictl's command table imports in a few milliseconds."""
from __future__ import annotations


class ErrorCode:
    BAD_REQUEST = "bad_request"
    UNKNOWN_COMMAND = "unknown_command"
    UNKNOWN_PLUGIN = "unknown_plugin"
    BAD_PROPERTY = "bad_property"
    NO_PORT = "no_port"
    NO_PLUGIN_DIR = "no_plugin_dir"     # the plugin's source directory does not exist (any more)
    NO_SPACE = "no_space"               # the runtime dir is full: the change was not made
    STORAGE = "storage_error"           # another failure to write the runtime dir: the change was not made
    BUSY = "busy"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    WORKER_UNAVAILABLE = "worker_unavailable"
    NOT_RUNNING = "not_running"
    SUPERVISOR = "supervisor_error"
    INTERNAL = "internal_error"
    RPC = "rpc_error"


class CommandError(Exception):
    """Raised by command code; becomes an error reply with a machine code and a human sentence."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason
