"""`list` control command."""
from .. import protocol
from .base import Command


class List(Command):
    """Every registered plugin's DevServerState (Omniview: ListDevServerStates)."""
    name = "list"
    properties = {}
    immediate = True

    def run(self, broker, props):
        return {"plugins": [protocol.to_builtins(broker.state_of(p)) for p in sorted(broker.registry.plugins)]}

