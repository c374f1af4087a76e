"""`restart` control command."""
from .base import ModeCommand


class Restart(ModeCommand):
    """Stop and start the plugin's dev server in its current mode (Omniview: RestartDevServer). Vite comes back on the
    port the broker holds for the plugin (none when it is not managed; none either when the range is exhausted: the
    worker then reports that as an error event, as `start` does)."""
    name = "restart"
    starts_worker = True

    async def work(self, devserver, props):
        await devserver.restart(vite_port=props.vitePort)
