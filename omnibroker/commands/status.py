"""`status` control command."""
from .base import PLUGIN, Command


class Status(Command):
    """One plugin's DevServerState (Omniview: GetDevServerState)."""
    name = "status"
    properties = {"plugin": PLUGIN}
    immediate = True

    def run(self, broker, props):
        from .. import protocol
        broker.registry.get(props["plugin"])
        return protocol.to_builtins(broker.state_of(props["plugin"]))

