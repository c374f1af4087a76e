"""`external_info` control command."""
from .base import PLUGIN, Command


class ExternalInfo(Command):
    """The validated .devinfo of an external plugin, or null (Omniview: GetExternalPluginInfo)."""
    name = "external_info"
    properties = {"plugin": PLUGIN}
    forward = True

    async def work(self, devserver, props):
        return {"info": devserver.external_info()}
