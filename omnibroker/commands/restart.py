"""`restart` control command."""
from .base import PLUGIN, Command


class Restart(Command):
    """Stop and start the plugin's dev server in its current mode (Omniview: RestartDevServer)."""
    name = "restart"
    properties = {"plugin": PLUGIN}
    forward = True
    timeout = 30.0

