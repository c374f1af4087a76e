"""`add` control command."""
from .base import PLUGIN, Command, Prop


class Add(Command):
    """Register a plugin source directory (persisted); its worker program appears in supervisord. `settings` are
    checked against the settings schema (omnibroker/settings.py): an unknown key or a bad value is refused by name."""
    name = "add"
    properties = {"plugin": PLUGIN, "path": Prop(str, "plugin source directory (absolute)", required=True),
                  "settings": Prop(dict, "per-plugin settings, as in omni.toml [plugins.<id>]", default={})}

    async def execute(self, broker, props):
        from .. import protocol, settings
        from ..registry import check_plugin_id, validate_plugin_dir
        plugin = check_plugin_id(props["plugin"])
        path = validate_plugin_dir(props["path"])
        try:
            _, worker_settings = settings.check_plugin(props.get("settings") or {})
        except settings.SettingsError as e:
            raise protocol.CommandError(protocol.ErrorCode.BAD_PROPERTY, f"add: settings: {e}") from None
        await broker.add_plugin(plugin, path, worker_settings)
        return protocol.to_builtins(broker.state_of(plugin))
