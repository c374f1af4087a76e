"""`restart` control command."""
from .base import PLUGIN, Command


class Restart(Command):
    """Stop and start the plugin's dev server in its current mode (Omniview: RestartDevServer)."""
    name = "restart"
    properties = {"plugin": PLUGIN}
    forward = True
    timeout = 30.0

    async def execute(self, broker, props):
        """The worker restarts Vite on the port the broker holds for the plugin (none when it is not managed)."""
        desired = broker.registry.get(props["plugin"]).desired
        if desired.mode == "managed" and desired.vite:
            props["vitePort"] = broker.allocate_port(props["plugin"])
        return await broker.forward(self, props)

