"""`ping` control command."""
from .base import Command


class Ping(Command):
    """Is the broker there? Returns its epoch (changes at each broker start), version and omni.toml's problems
    (`configError`, "" when none)."""
    name = "ping"
    properties = {}
    immediate = True

    def run(self, broker, props):
        from .. import protocol
        return {"epoch": broker.events.epoch, "version": protocol.VERSION, "configError": broker.config.error}

