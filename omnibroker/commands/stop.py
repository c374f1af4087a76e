"""`stop` control command."""
from ..protocol import Desired
from .base import PLUGIN, Command


class Stop(Command):
    """Stop the plugin's dev server (Vite, watcher, build, plugin process); the worker stays (Omniview:
    StopDevServer)."""
    name = "stop"
    properties = {"plugin": PLUGIN}
    forward = True
    timeout = 30.0

    async def execute(self, broker, props):
        record = broker.registry.get(props["plugin"])
        broker.registry.set_desired(props["plugin"], Desired(mode="idle", vite=record.desired.vite,
                                                             go=record.desired.go))
        result = await broker.forward(self, props)
        broker.release_port(props["plugin"])
        return result
