"""`detach` control command."""
from .base import PLUGIN, Command


class Detach(Command):
    """Leave external mode; the external plugin process keeps running."""
    name = "detach"
    properties = {"plugin": PLUGIN}
    forward = True

    async def execute(self, broker, props):
        broker.registry.set_mode(props["plugin"], "idle")
        return await broker.forward(self, props)
