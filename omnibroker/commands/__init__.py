"""The control command table: one module per command, looked up by name. `omnictl` builds its subcommands from it.

Command modules import `protocol` (msgspec) and the broker's modules inside `run`/`execute`, never at the top: omnictl
imports this table, and one `omnictl` call should cost little more than the interpreter start (tests/unit check it)."""
from __future__ import annotations

from .add import Add
from .attach import Attach
from .base import Command, Prop
from .detach import Detach
from .external_info import ExternalInfo
from .invoke import Invoke
from .list import List
from .logs import Logs
from .ping import Ping
from .rebuild import Rebuild
from .reload import Reload
from .remove import Remove
from .restart import Restart
from .snapshot import Snapshot
from .start import Start
from .status import Status
from .stop import Stop

COMMANDS: dict[str, Command] = {c.name: c() for c in (
    Ping, List, Status, Snapshot, Add, Remove, Start, Stop, Restart, Rebuild, Attach, Detach, Logs, ExternalInfo,
    Invoke, Reload)}

__all__ = ["COMMANDS", "Command", "Prop"]
