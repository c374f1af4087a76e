"""`rebuild` control command."""
from .base import PLUGIN, Command


class Rebuild(Command):
    """Force a Go build and plugin reload (Omniview: RebuildPlugin)."""
    name = "rebuild"
    properties = {"plugin": PLUGIN}
    forward = True

