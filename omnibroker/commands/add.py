"""`add` control command."""
from .base import Command, Prop


class Add(Command):
    """Register a plugin source directory (persisted); its worker program appears in supervisord. The id defaults to
    the one in the directory's plugin.yaml; an id that differs from it is refused. `settings` are checked against the
    settings schema (omnibroker/settings.py): an unknown key or a bad value is refused by name."""
    name = "add"
    properties = {"plugin": Prop(str, "plugin id (default: the id in DIR/plugin.yaml)", positional=True),
                  "path": Prop(str, "plugin source directory (absolute)", required=True),
                  "settings": Prop(dict, "per-plugin settings, as in omni.toml [plugins.<id>]", default={})}
    exclusive = True

    async def execute(self, broker, props):
        from .. import protocol, settings
        from ..registry import plugin_id_for_dir, validate_plugin_dir
        path = validate_plugin_dir(props["path"])
        plugin = plugin_id_for_dir(props.get("plugin"), path)
        try:
            _, worker_settings = settings.check_plugin(props.get("settings") or {})
        except settings.SettingsError as e:
            raise protocol.CommandError(protocol.ErrorCode.BAD_PROPERTY, f"add: settings: {e}") from None
        await broker.add_plugin(plugin, path, worker_settings)
        return protocol.to_builtins(broker.state_of(plugin))
