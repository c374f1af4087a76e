"""`list` control command."""
from .base import Command


class List(Command):
    """Every registered plugin's DevServerState (Omniview: ListDevServerStates), and omni.toml's problems
    (`configError`)."""
    name = "list"
    properties = {}
    immediate = True

    def run(self, broker, props):
        from .. import protocol
        return {"plugins": [protocol.to_builtins(broker.state_of(p)) for p in sorted(broker.registry.plugins)],
                "configError": broker.config.error}

