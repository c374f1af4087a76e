"""`start` control command."""
from .base import PLUGIN, ModeCommand, Prop


class Start(ModeCommand):
    """Run the plugin's dev server in managed mode (Vite + Go watch/build/reload); idempotent. Returns at once with
    the state; progress arrives as status events (Omniview: StartDevServer, StartDevServerForPath). A plugin whose
    directory does not exist is refused (`no_plugin_dir`), checked at each start. `debug` switches debug mode
    (docs/debugging.md) on or off, also for a plugin already running: its Go half restarts under delve, or without."""
    name = "start"
    properties = {"plugin": PLUGIN, "path": Prop(str, "register this source directory first"),
                  "vite": Prop(bool, "run Vite (default true)"), "go": Prop(bool, "watch and build Go (default true)"),
                  "debug": Prop(bool, "run the Go plugin under delve on the plugin's debug port (default: as last "
                                      "time; false at first)")}
    starts_worker = True
    mode = "managed"

    async def work(self, devserver, props):
        await devserver.start(vite=props.vite, go=props.go, vite_port=props.vitePort, debug_port=props.debugPort)
