"""`attach` control command."""
from ..protocol import Desired
from .base import PLUGIN, Command


class Attach(Command):
    """External mode: follow `<home>/plugins/<id>/.devinfo` and reattach over gRPC to the plugin the developer runs."""
    name = "attach"
    properties = {"plugin": PLUGIN}
    forward = True
    timeout = 30.0

    async def execute(self, broker, props):
        record = broker.registry.get(props["plugin"])
        broker.registry.set_desired(props["plugin"], Desired(mode="external", vite=record.desired.vite,
                                                             go=record.desired.go))
        broker.release_port(props["plugin"])
        return await broker.forward(self, props)
