"""`restart` control command."""
from .base import PLUGIN, Command, CommandError, ErrorCode


class Restart(Command):
    """Stop and start the plugin's dev server in its current mode (Omniview: RestartDevServer)."""
    name = "restart"
    properties = {"plugin": PLUGIN}
    forward = True
    timeout = 30.0

    async def execute(self, broker, props):
        missing = broker.check_plugin_dir(props["plugin"])
        if missing:
            raise CommandError(ErrorCode.NO_PLUGIN_DIR, missing)
        return await broker.forward(self, props)

