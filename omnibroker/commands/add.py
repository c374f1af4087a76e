"""`add` control command."""
from .base import Command, Prop


class Add(Command):
    """Register a plugin source directory (persisted); its worker program appears in supervisord. The id defaults to
    the one in the directory's plugin.yaml; an id that differs from it is refused."""
    name = "add"
    properties = {"plugin": Prop(str, "plugin id (default: the id in DIR/plugin.yaml)", positional=True),
                  "path": Prop(str, "plugin source directory (absolute)", required=True),
                  "settings": Prop(dict, "per-plugin settings, as in omni.toml [plugins.<id>]", default={})}

    async def execute(self, broker, props):
        from .. import protocol
        from ..registry import plugin_id_for_dir, validate_plugin_dir
        path = validate_plugin_dir(props["path"])
        plugin = plugin_id_for_dir(props.get("plugin"), path)
        await broker.add_plugin(plugin, path, props.get("settings") or {})
        return protocol.to_builtins(broker.state_of(plugin))
