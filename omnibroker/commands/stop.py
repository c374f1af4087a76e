"""`stop` control command."""
from .base import PLUGIN, Command


class Stop(Command):
    """Stop the plugin's dev server (Vite, watcher, build, plugin process); the worker stays (Omniview:
    StopDevServer). A worker program stopped by hand in supervisord runs nothing: the wish is recorded and the
    answer is the state, at once."""
    name = "stop"
    properties = {"plugin": PLUGIN}
    forward = True
    timeout = 30.0

    async def execute(self, broker, props):
        import msgspec

        from ..protocol import to_builtins
        plugin = props["plugin"]
        broker.registry.set_mode(plugin, "idle")
        try:
            if await broker.held_state(plugin):
                state = msgspec.structs.replace(broker.state_of(plugin), mode="idle")
                broker.events.status(state)
                return to_builtins(state)
            return await broker.forward(self, props)
        finally:
            # Also when the worker did not answer: it stops Vite or is restarted idle (worker.py, SERIAL_BUDGET).
            broker.release_port(plugin)
