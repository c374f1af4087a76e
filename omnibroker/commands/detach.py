"""`detach` control command."""
from .base import ModeCommand


class Detach(ModeCommand):
    """Leave external mode; the external plugin process keeps running (a managed plugin stays managed)."""
    name = "detach"
    mode = "idle"
    only_from = "external"
    timeout = 10.0

    async def work(self, devserver, props):
        await devserver.detach()
