"""`invoke` control command."""
from .base import PLUGIN, Command, Prop


class Invoke(Command):
    """Call a unary gRPC method of the running plugin with raw protobuf bytes (base64 in and out). A response over
    783,360 bytes (protocol.MAX_INVOKE_RESPONSE_BYTES: its base64 fits in a 1 MiB reply) is refused: `too_large`."""
    name = "invoke"
    properties = {"plugin": PLUGIN, "method": Prop(str, "/package.Service/Method", required=True),
                  "request": Prop(str, "request message, protobuf bytes in base64", default=""),
                  "timeout": Prop((int, float), "seconds to wait, a reload included (default 10)", default=10.0)}
    forward = True
    timeout = 25.0

    async def work(self, devserver, props):
        return await devserver.invoke(props.method, props.request, float(props.timeout))
