"""`stop` control command."""
from .base import PLUGIN, Command


class Stop(Command):
    """Stop the plugin's dev server (Vite, watcher, build, plugin process); the worker stays (Omniview:
    StopDevServer). A worker program stopped by hand in supervisord runs nothing: the wish is recorded and the
    answer is the state, at once."""
    name = "stop"
    properties = {"plugin": PLUGIN}
    forward = True
    exclusive = True
    timeout = 30.0

    async def execute(self, broker, props):
        return await broker.change_mode(self, props, "idle")

    async def work(self, devserver, props):
        await devserver.stop()
