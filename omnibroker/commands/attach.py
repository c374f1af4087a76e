"""`attach` control command."""
from .base import PLUGIN, Command


class Attach(Command):
    """External mode: follow `<home>/plugins/<id>/.devinfo` and reattach over gRPC to the plugin the developer runs."""
    name = "attach"
    properties = {"plugin": PLUGIN}
    forward = True
    exclusive = True
    starts_worker = True
    timeout = 30.0

    async def execute(self, broker, props):
        return await broker.change_mode(self, props, "external")

    async def work(self, devserver, props):
        await devserver.attach()
