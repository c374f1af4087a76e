"""Fuzzing with hypothesis: every input omni reads from outside, mangled.

- control messages sent to the REAL broker (supervisord, ipc socket): any bytes, any JSON, request-shaped documents
  with random commands and properties, any number of frames → always a structured reply (status ok, or status error
  with a known code and a reason), the broker keeps answering, never restarts, and its memory stays flat;
- `.devinfo` contents (omniworker.devinfo.parse_devinfo / parse_addr / validate_devinfo on real files);
- Go build output (omniworker.gobuild.parse_go_errors) and Vite output lines (omniworker.vite.parse_vite_errors) →
  a list of BuildError that encodes as the error event payload, positions within int32.

Example counts are modest (CI time); deadline=None (a shared 2-core machine); no example database on disk.
"""
from __future__ import annotations

import json
import os
import random
import string
import time

import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.example import REPO
from support.service import Service

from omnibroker import protocol
from omnibroker.commands import COMMANDS
from omnibroker.protocol import BuildError, ErrorCode
from omniworker import devinfo
from omniworker.gobuild import parse_go_errors
from omniworker.vite import parse_vite_errors

FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
PARSER = settings(max_examples=400, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KNOWN_CODES = {v for k, v in vars(ErrorCode).items() if k.isupper()}
INT32 = 2**31 - 1
numbers = st.integers(0, 10**40) | st.sampled_from(["9" * 5000, "0" * 4400 + "1", "00"])    # past int()'s 4300 digits


# --- the real broker ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A real service with one idle plugin (its worker runs), so forwarded commands reach a worker too."""
    plugin_dir = tmp_path_factory.mktemp("fuzz") / "fz"
    plugin_dir.mkdir()
    svc = Service(f"[plugins.fz]\npath = {json.dumps(str(plugin_dir))}\n")
    try:
        svc.start()
        deadline = time.monotonic() + 30
        while svc.call("status", plugin="fz")["workerStatus"] != "up":
            assert time.monotonic() < deadline, "the fz worker did not come up"
            time.sleep(0.05)    # polling a cheap status request
    except BaseException:
        svc.cleanup()
        raise
    svc.broker_pid = svc.program_pid("omnibroker")
    sock = svc.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(svc.endpoint("control"))
    svc.dealer = sock
    svc.sent = 0
    yield svc
    sock.close(0)
    svc.cleanup()


def exchange(svc: Service, frames: list[bytes], timeout: float = 40.0, unanswered: list | None = None) -> dict | None:
    """Send frames as they are (a DEALER adds nothing); the one reply, decoded and checked for structure.
    No reply: an assertion error, or (with `unanswered`) the frames are noted there and None is returned."""
    svc.dealer.send_multipart(frames)
    svc.sent += 1
    if not svc.dealer.poll(int(timeout * 1000)):
        if unanswered is None:
            raise AssertionError(f"no reply to {frames!r:.200}")
        unanswered.append(frames)
        return None
    reply_frames = svc.dealer.recv_multipart()
    assert svc.dealer.poll(0) == 0, "more than one reply"
    reply = json.loads(reply_frames[-1])
    check_reply(reply)
    return reply


def check_reply(reply) -> None:
    assert isinstance(reply, dict), reply
    assert reply.get("status") in ("ok", "error"), reply
    assert "id" in reply and isinstance(reply.get("time"), float), reply
    if reply["status"] == "error":
        assert reply.get("code") in KNOWN_CODES, reply
        assert isinstance(reply.get("reason"), str) and len(reply["reason"]) > 5, reply


def _not_a_dir(p) -> bool:
    """`add`/`start` must not register real directories by chance (each would get a worker program)."""
    if not isinstance(p, str) or "\x00" in p:
        return True
    try:
        return not os.path.isdir(os.path.join(REPO, os.path.expanduser(p)))
    except (ValueError, OSError):
        return True


json_leaf = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
             | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_value = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=5)
                          | st.dictionaries(st.text(max_size=10), kids, max_size=5), max_leaves=15)
plugin_ids = st.sampled_from(["fz", "ghost", "../fz", "fz/..", "", ".hidden", "a" * 65, "fz\x00", "ä"]) | st.text(
    max_size=70)
prop_names = st.sampled_from(["plugin", "path", "settings", "vite", "go", "count", "source", "method", "request",
                              "timeout"]) | st.text(max_size=12)


@st.composite
def shaped_request(draw) -> dict:
    command = draw(st.sampled_from(sorted(COMMANDS)) | st.text(max_size=20))
    props = draw(st.dictionaries(prop_names, json_value, max_size=4))
    if draw(st.booleans()):
        props["plugin"] = draw(plugin_ids)
    if command in ("add", "start") and "path" in props:
        props["path"] = draw(json_value.filter(_not_a_dir))
    doc = {"id": draw(st.text(max_size=20) | st.integers() | st.none() | st.floats(allow_nan=False)),
           "command": command, "properties": props}
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.text(max_size=8))] = draw(json_value)      # unknown top-level keys
    if draw(st.integers(0, 9)) == 0:
        del doc[draw(st.sampled_from(["id", "command", "properties"]))]
    return doc


@FAST
@given(body=st.binary(max_size=4096))
def test_any_bytes(broker, body):
    exchange(broker, [body])


@FAST
@given(doc=json_value)
def test_any_json(broker, doc):
    reply = exchange(broker, [json.dumps(doc).encode()])
    assert reply["status"] == "error" and reply["code"] == "bad_request"


@settings(FAST, max_examples=300)
@given(doc=shaped_request())
def test_request_shaped_documents(broker, doc):
    exchange(broker, [json.dumps(doc).encode()])


@FAST
@given(frames=st.lists(st.binary(max_size=200), min_size=1, max_size=6), delimiter=st.booleans())
def test_any_frame_count(broker, frames, delimiter):
    sent = ([b""] if delimiter else []) + frames
    reply = exchange(broker, sent)
    body = sent[1:] if sent[0] == b"" else sent      # what the broker takes as the request after the envelope
    if len(body) != 1:
        assert reply["status"] == "error" and reply["code"] == "bad_request", reply


def test_deep_documents(broker):
    """(An oversize request is not answered: its sender is disconnected, tests/security/test_request_limits.py.)"""
    for frames in ([b"[" * 200_000], [b'{"id":' * 50_000],
                   [json.dumps({"id": "d", "command": "status", "properties": {"plugin": "fz", "x": [[[[[]]]]]}})
                    .encode()], [("\ud800" * 10).encode("utf-8", "surrogatepass")]):
        reply = exchange(broker, frames)
        assert reply["status"] == "error" and reply["code"] in ("bad_request", "bad_property"), reply


def _random_message(rng: random.Random) -> list[bytes]:
    kind = rng.randrange(4)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 512))]
    if kind == 1:
        return [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(2, 5))]
    command = rng.choice(sorted(set(COMMANDS) - {"add", "start", "remove"}) + ["nope", ""])
    props = {"plugin": rng.choice(["fz", "ghost", "../x", 7])}
    if kind == 3:
        props[rng.choice(["count", "source", "method", "request", "junk"])] = rng.choice(
            [1, -1, 10**12, "x" * rng.randrange(0, 3000), None, [1, 2], {"a": 1}])
    return [json.dumps({"id": f"m{rng.randrange(1 << 30)}", "command": command, "properties": props}).encode()]


def test_broker_memory_stays_flat_and_it_never_restarted(broker):
    """A few thousand mangled requests after a warm-up: the broker's RSS grows by less than 20 MB, and the broker
    that answered the first fuzzed request is the one answering now (it never crashed)."""
    rng = random.Random(9)
    pid = broker.program_pid("omnibroker")
    assert pid == broker.broker_pid, "the broker restarted during the fuzz run"
    unanswered: list = []
    for _ in range(500):
        exchange(broker, _random_message(rng), timeout=10, unanswered=unanswered)
    rss0 = psutil.Process(pid).memory_info().rss
    for _ in range(3000):
        exchange(broker, _random_message(rng), timeout=10, unanswered=unanswered)
    rss1 = psutil.Process(pid).memory_info().rss
    growth = (rss1 - rss0) / (1 << 20)
    print(f"\nbroker RSS {rss0 / (1 << 20):.1f} MB -> {rss1 / (1 << 20):.1f} MB (+{growth:.2f} MB) over 3000 "
          f"requests; {broker.sent} fuzzed requests in this module")
    assert growth < 20, f"broker RSS grew {growth:.1f} MB over 3000 requests"
    assert broker.program_pid("omnibroker") == pid
    assert broker.call("ping")["epoch"]
    assert not unanswered, f"{len(unanswered)} requests never answered, e.g. {unanswered[0]!r:.120}"


def test_invalid_utf8_inside_a_json_string_is_answered(broker):
    """Found by the fuzzer: `"<invalid UTF-8>"` fails the typed decode (not an object), then the best-effort id
    lookup raises UnicodeDecodeError inside the broker's error path and the request is never answered."""
    reply = exchange(broker, [b'"\xa9"'], timeout=5)
    assert reply["status"] == "error" and reply["code"] == "bad_request", reply


# --- .devinfo ---------------------------------------------------------------------------------------------------------
DEVINFO_CODES = {v for k, v in vars(devinfo.Code).items() if k.isupper()}


def _loopback_or_socket(network: str, address: str) -> bool:
    import ipaddress
    if network == "unix":
        return address.startswith("/")
    host = address.rsplit(":", 1)[0].strip("[]")
    return ipaddress.ip_address(host).is_loopback


devinfo_doc = st.fixed_dictionaries(
    {},
    optional={"pid": st.integers(-5, 2**40) | json_value, "protocol": st.sampled_from(["grpc", "netrpc"]) | json_value,
              "protocolVersion": st.integers(-2, 3) | json_value,
              "addr": st.sampled_from(["127.0.0.1:1234", "[::1]:80", "localhost:9", "0.0.0.0:1", "10.0.0.1:5",
                                       "/tmp/x.sock", "unix:///tmp/y", "unix:rel", "[::ffff:10.0.0.1]:1", ":80",
                                       "127.0.0.1:0", "127.0.0.1:99999", "localhost.:80", "::1:80"])
              | st.text(max_size=60) | json_value,
              "pluginId": st.sampled_from(["hello", "other"]) | json_value,
              "vitePort": st.integers(-1, 70000) | json_value, "version": json_value, "startedAt": json_value})


@PARSER
@given(data=st.binary(max_size=2048) | devinfo_doc.map(lambda d: json.dumps(d).encode()))
def test_parse_devinfo_never_crashes(data):
    try:
        info = devinfo.parse_devinfo(data, "hello")
    except devinfo.DevInfoError as e:
        assert e.code in DEVINFO_CODES and len(e.message) > 10
        return
    assert info.pluginId in ("hello", "") and info.protocol == "grpc" and 0 < info.pid   # pluginId is optional
    network, address = devinfo.parse_addr(info.addr)
    assert _loopback_or_socket(network, address), info.addr


@PARSER
@given(addr=st.text(max_size=80) | st.sampled_from(["0.0.0.0:80", "[::]:80", "127.1:80", "2130706433:80",
                                                     "0x7f000001:80", "127.0.0.1.nip.io:80", "[::ffff:127.0.0.1]:8"]))
def test_parse_addr_accepts_only_loopback(addr):
    try:
        network, address = devinfo.parse_addr(addr)
    except devinfo.DevInfoError as e:
        assert e.code in (devinfo.Code.ADDR_INVALID, devinfo.Code.ADDR_NOT_LOOPBACK)
        return
    assert _loopback_or_socket(network, address), (addr, network, address)


@settings(PARSER, max_examples=150)
@given(data=st.binary(max_size=512) | devinfo_doc.map(lambda d: json.dumps(d).encode()),
       mode=st.sampled_from([0o600, 0o644, 0o620, 0o666]))
def test_validate_devinfo_files_never_crash(tmp_path_factory, data, mode):
    d = tmp_path_factory.mktemp("devinfo") / "hello"
    d.mkdir()
    path = d / ".devinfo"
    path.write_bytes(data)
    path.chmod(mode)
    try:
        valid = devinfo.validate_devinfo(str(path), "hello")
    except devinfo.DevInfoError as e:
        assert e.code in DEVINFO_CODES and len(e.message) > 10
        return
    assert mode & 0o022 == 0
    assert _loopback_or_socket(valid.network, valid.address)


# --- build and Vite output ---------------------------------------------------------------------------------------------------
def check_errors(errors: list) -> None:
    assert isinstance(errors, list)
    for e in errors:
        assert isinstance(e, BuildError)
        assert isinstance(e.file, str) and isinstance(e.message, str) and e.message
        assert isinstance(e.line, int) and isinstance(e.column, int)
        assert 0 <= e.line <= INT32 and 0 <= e.column <= INT32, e
    payload = protocol.encode(protocol.ErrorPayload(pluginID="hello", errors=errors))     # what goes on the wire
    assert json.loads(payload)["pluginID"] == "hello"


go_line = st.one_of(
    st.text(alphabet=string.printable + "\u00e9\u2028\x1b", max_size=120),
    st.builds(lambda f, l, c, m: f"{f}:{l}:{c}: {m}", st.sampled_from(["pkg/x.go", "./a.go", "/abs/b.go", "x", "c.s",
                                                                        "go.mod", "http://x.go", ""]),
              numbers, numbers, st.text(max_size=40)),
    st.builds(lambda f, l, m: f"{f}:{l}: {m}", st.sampled_from(["pkg/x.go", "go.mod", "vet: pkg/y.go"]),
              numbers, st.text(max_size=40)),
    st.sampled_from(["# _/tmp/x/pkg", "# command-line-arguments", "go: errors parsing go.mod:", "\tdetail",
                     "too many errors", "go: downloading x v1", "", "   ", "\x1b[31mred\x1b[0m"]))


@PARSER
@given(lines=st.lists(go_line, max_size=30), plugin_dir=st.sampled_from(["/tmp/p", "", ".", "/"]),
       build_dir=st.sampled_from([None, "", "sub", "/abs", ".."]))
def test_parse_go_errors_always_structured(lines, plugin_dir, build_dir):
    check_errors(parse_go_errors("\n".join(lines), plugin_dir, build_dir))


vite_line = st.one_of(
    st.text(alphabet=string.printable + "\u256d\u2500\u2718\u00d7", max_size=120),
    st.builds(lambda c, m: f"[{c}] {m}", st.sampled_from(["PARSE_ERROR", "ERROR", "123", "X_Y"]), st.text(max_size=30)),
    st.builds(lambda f, l, c: f"   \u256d\u2500[ {f}:{l}:{c} ]", st.sampled_from(["src/a.tsx", "/abs/b.ts", "file:///c.ts"]),
              numbers, numbers),
    st.builds(lambda f, l, c: f"    {f}:{l}:{c}:", st.sampled_from(["src/a.ts", "b.js"]),
              numbers, numbers),
    st.builds(lambda f, l, c, m: f"{f}:{l}:{c}: ERROR: {m}", st.sampled_from(["src/a.ts", "x"]),
              numbers, numbers, st.text(max_size=30)),
    st.builds(lambda f, l, c: f"File: {f}:{l}:{c}", st.sampled_from(["/abs/vite.config.ts", "rel.ts"]),
              numbers, numbers),
    st.sampled_from(["failed to load config from /x/vite.config.ts", "error when starting dev server:",
                     "Error: boom", "TypeError [ERR_X]: bad", "    at foo (x.js:1:2)", "\u2718 [ERROR] m", ""]))


@PARSER
@given(lines=st.lists(vite_line, max_size=30), root=st.sampled_from(["/tmp/ui", "", "."]))
def test_parse_vite_errors_always_structured(lines, root):
    check_errors(parse_vite_errors(lines, root))
