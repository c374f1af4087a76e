"""`detach` control command."""
from .base import PLUGIN, Command


class Detach(Command):
    """Leave external mode; the external plugin process keeps running."""
    name = "detach"
    properties = {"plugin": PLUGIN}
    forward = True

    async def execute(self, broker, props):
        if broker.registry.get(props["plugin"]).desired.mode == "external":
            broker.registry.set_mode(props["plugin"], "idle")       # a managed plugin stays managed
        return await broker.forward(self, props)
