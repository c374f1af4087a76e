"""`snapshot` control command."""
from .base import Command


class Snapshot(Command):
    """Epoch, last seq and every plugin's state: what a late subscriber applies events on top of; and omni.toml's
    problems (`configError`)."""
    name = "snapshot"
    properties = {}
    immediate = True

    def run(self, broker, props):
        return dict(broker.events.snapshot(), configError=broker.config.error)

