"""Hand-rolled protobuf encoding for hello.Greeter (no protobuf dependency).

GreetRequest{string name = 1} and GreetReply{string message = 1} both carry a
single length-delimited field 1 (tag byte 0x0A). Use with a raw-bytes gRPC
unary call, e.g.::

    import grpc, greeter_pb
    ch = grpc.insecure_channel("unix:" + socket_path)
    greet = ch.unary_unary("/hello.Greeter/Greet")  # no serializers: bytes in/out
    greeter_pb.decode_greet_reply(greet(greeter_pb.encode_greet_request("omni")))
"""

from __future__ import annotations

GREET_METHOD = "/hello.Greeter/Greet"
HEALTH_SERVICE = "plugin"
SHUTDOWN_METHOD = "/plugin.GRPCController/Shutdown"

_TAG_FIELD1_LEN = (1 << 3) | 2  # field 1, wire type 2 (length-delimited) = 0x0A


def _encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise ValueError("varint too long")


def _encode_string_field1(value: str) -> bytes:
    if not value:
        return b""  # proto3: default values are not serialized
    raw = value.encode("utf-8")
    return bytes([_TAG_FIELD1_LEN]) + _encode_varint(len(raw)) + raw


def _decode_string_field1(data: bytes) -> str:
    """Return field 1 (last occurrence wins); skip unknown fields."""
    pos, result = 0, ""
    while pos < len(data):
        key, pos = _decode_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _decode_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _decode_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated length-delimited field")
            if field == 1:
                result = data[pos:pos + length].decode("utf-8")
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated message")
    return result


def encode_greet_request(name: str) -> bytes:
    """Serialize hello.GreetRequest{name}."""
    return _encode_string_field1(name)


def decode_greet_reply(data: bytes) -> str:
    """Parse hello.GreetReply and return its message."""
    return _decode_string_field1(bytes(data))


def encode_greet_reply(message: str) -> bytes:
    """Serialize hello.GreetReply{message} (handy for fakes in tests)."""
    return _encode_string_field1(message)


def decode_greet_request(data: bytes) -> str:
    """Parse hello.GreetRequest and return its name."""
    return _decode_string_field1(bytes(data))
