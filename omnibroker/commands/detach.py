"""`detach` control command."""
from ..protocol import Desired
from .base import PLUGIN, Command


class Detach(Command):
    """Leave external mode; the external plugin process keeps running."""
    name = "detach"
    properties = {"plugin": PLUGIN}
    forward = True

    async def execute(self, broker, props):
        record = broker.registry.get(props["plugin"])
        broker.registry.set_desired(props["plugin"], Desired(mode="idle", vite=record.desired.vite,
                                                             go=record.desired.go))
        return await broker.forward(self, props)
