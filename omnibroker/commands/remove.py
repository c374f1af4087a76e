"""`remove` control command."""
from .base import PLUGIN, Command


class Remove(Command):
    """Stop a plugin's worker and forget the plugin."""
    name = "remove"
    properties = {"plugin": PLUGIN}
    exclusive = True

    async def execute(self, broker, props):
        broker.registry.get(props["plugin"])
        await broker.remove_plugin(props["plugin"])
        return {"removed": props["plugin"]}
