"""`restart` control command."""
from .base import PLUGIN, Command


class Restart(Command):
    """Stop and start the plugin's dev server in its current mode (Omniview: RestartDevServer). Vite comes back on the
    port the broker holds for the plugin (none when it is not managed; none either when the range is exhausted: the
    worker then reports that as an error event, as `start` does)."""
    name = "restart"
    properties = {"plugin": PLUGIN}
    forward = True
    exclusive = True
    starts_worker = True
    timeout = 30.0

    async def execute(self, broker, props):
        return await broker.change_mode(self, props, None)

    async def work(self, devserver, props):
        await devserver.restart(vite_port=props.vitePort)
