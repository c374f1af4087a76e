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
        if await broker.held_state(plugin):
            state = msgspec.structs.replace(broker.state_of(plugin), mode="idle")
            broker.events.status(state)
            result = to_builtins(state)
        else:
            result = await broker.forward(self, props)
        broker.release_port(plugin)
        return result
