"""`start` control command."""
from .base import PLUGIN, Command, CommandError, ErrorCode, Prop


class Start(Command):
    """Run the plugin's dev server in managed mode (Vite + Go watch/build/reload); idempotent. Returns at once with
    the state; progress arrives as status events (Omniview: StartDevServer, StartDevServerForPath). A plugin whose
    directory does not exist is refused (`no_plugin_dir`), checked at each start."""
    name = "start"
    properties = {"plugin": PLUGIN, "path": Prop(str, "register this source directory first"),
                  "vite": Prop(bool, "run Vite (default true)"), "go": Prop(bool, "watch and build Go (default true)")}
    forward = True
    timeout = 30.0

    async def execute(self, broker, props):
        from ..protocol import Desired
        from ..registry import check_plugin_id, plugin_id_for_dir, validate_plugin_dir
        plugin = check_plugin_id(props["plugin"])
        if "path" in props:
            path = validate_plugin_dir(props.pop("path"))
            await broker.add_plugin(plugin_id_for_dir(plugin, path), path, None)
        record = broker.registry.get(plugin)
        missing = broker.check_plugin_dir(plugin)
        if missing:
            raise CommandError(ErrorCode.NO_PLUGIN_DIR, missing)
        desired = Desired(mode="managed", vite=props.get("vite", record.desired.vite),
                          go=props.get("go", record.desired.go))
        props.update(vite=desired.vite, go=desired.go)
        props["vitePort"] = broker.set_desired(plugin, desired)
        return await broker.forward(self, props)
