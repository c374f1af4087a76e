"""`attach` control command."""
from .base import PLUGIN, Command


class Attach(Command):
    """External mode: follow `<home>/plugins/<id>/.devinfo` and reattach over gRPC to the plugin the developer runs."""
    name = "attach"
    properties = {"plugin": PLUGIN}
    forward = True
    timeout = 30.0

    async def execute(self, broker, props):
        broker.registry.set_mode(props["plugin"], "external")
        broker.release_port(props["plugin"])
        return await broker.forward(self, props)
