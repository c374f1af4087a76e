"""`add` control command."""
from .base import PLUGIN, Command, Prop


class Add(Command):
    """Register a plugin source directory (persisted); its worker program appears in supervisord."""
    name = "add"
    properties = {"plugin": PLUGIN, "path": Prop(str, "plugin source directory (absolute)", required=True),
                  "settings": Prop(dict, "per-plugin settings, as in omni.toml [plugins.<id>]", default={})}

    async def execute(self, broker, props):
        from .. import protocol
        from ..registry import check_plugin_id, validate_plugin_dir
        plugin = check_plugin_id(props["plugin"])
        path = validate_plugin_dir(props["path"])
        await broker.add_plugin(plugin, path, props.get("settings") or {})
        return protocol.to_builtins(broker.state_of(plugin))
