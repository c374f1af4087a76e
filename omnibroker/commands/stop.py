"""`stop` control command."""
from .base import ModeCommand


class Stop(ModeCommand):
    """Stop the plugin's dev server (Vite, watcher, build, plugin process); the worker stays (Omniview:
    StopDevServer). A worker program stopped by hand in supervisord runs nothing: the wish is recorded and the
    answer is the state, at once."""
    name = "stop"
    mode = "idle"

    async def work(self, devserver, props):
        await devserver.stop()
