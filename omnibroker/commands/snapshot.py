"""`snapshot` control command."""
from .base import Command


class Snapshot(Command):
    """Epoch, last seq and every plugin's state: what a late subscriber applies events on top of."""
    name = "snapshot"
    properties = {}
    immediate = True

    def run(self, broker, props):
        return broker.events.snapshot()

