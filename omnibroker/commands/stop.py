"""`stop` control command."""
from .base import PLUGIN, Command


class Stop(Command):
    """Stop the plugin's dev server (Vite, watcher, build, plugin process); the worker stays (Omniview:
    StopDevServer)."""
    name = "stop"
    properties = {"plugin": PLUGIN}
    forward = True
    timeout = 30.0

    async def execute(self, broker, props):
        broker.registry.set_mode(props["plugin"], "idle")
        try:
            return await broker.forward(self, props)
        finally:
            # Also when the worker did not answer: it stops Vite or is restarted idle (worker.py, SERIAL_BUDGET).
            broker.release_port(props["plugin"])
