"""`attach` control command."""
from .base import ModeCommand


class Attach(ModeCommand):
    """External mode: follow `<home>/plugins/<id>/.devinfo` and reattach over gRPC to the plugin the developer runs."""
    name = "attach"
    starts_worker = True
    mode = "external"

    async def work(self, devserver, props):
        await devserver.attach()
