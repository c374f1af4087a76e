"""`restart` control command."""
from .base import PLUGIN, ModeCommand, Prop


class Restart(ModeCommand):
    """Stop and start the plugin's dev server in its current mode (Omniview: RestartDevServer). Vite comes back on the
    port the broker holds for the plugin (none when it is not managed; none either when the range is exhausted: the
    worker then reports that as an error event, as `start` does). `debug` switches debug mode on or off for a managed
    plugin (default: as it is); in debug mode the Go plugin comes back under delve on the same debug port."""
    name = "restart"
    properties = {"plugin": PLUGIN, "debug": Prop(bool, "run the Go plugin under delve (default: as it is)")}
    starts_worker = True

    async def work(self, devserver, props):
        await devserver.restart(vite_port=props.vitePort, debug_port=props.debugPort)
