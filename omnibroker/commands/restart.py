"""`restart` control command."""
from .base import PLUGIN, Command, CommandError, ErrorCode


class Restart(Command):
    """Stop and start the plugin's dev server in its current mode (Omniview: RestartDevServer)."""
    name = "restart"
    properties = {"plugin": PLUGIN}
    forward = True
    timeout = 30.0

    async def execute(self, broker, props):
        """The worker restarts Vite on the port the broker holds for the plugin (none when it is not managed; none
        either when the range is exhausted: the worker then reports that as an error event, as `start` does)."""
        missing = broker.check_plugin_dir(props["plugin"])
        if missing:
            raise CommandError(ErrorCode.NO_PLUGIN_DIR, missing)
        desired = broker.registry.get(props["plugin"]).desired
        if desired.mode == "managed" and desired.vite:
            try:
                props["vitePort"] = broker.allocate_port(props["plugin"])
            except CommandError as e:
                if e.code != ErrorCode.NO_PORT:
                    raise
        return await broker.forward(self, props)

