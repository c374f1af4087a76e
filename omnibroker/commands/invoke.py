"""`invoke` control command."""
from .base import PLUGIN, Command, Prop


class Invoke(Command):
    """Call a unary gRPC method of the running plugin with raw protobuf bytes (base64 in and out)."""
    name = "invoke"
    properties = {"plugin": PLUGIN, "method": Prop(str, "/package.Service/Method", required=True),
                  "request": Prop(str, "request message, protobuf bytes in base64", default=""),
                  "timeout": Prop((int, float), "seconds to wait, a reload included (default 10)", default=10.0)}
    forward = True
    timeout = 25.0

