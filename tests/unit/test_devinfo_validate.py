""".devinfo validation (omniworker.external): every check has its own code, and nothing a file can contain makes the
validator raise anything but a DevInfoError (hypothesis fuzzing of contents, addresses and whole files)."""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnibroker.protocol import DevInfo
from omniworker.devinfo import (MAX_DEVINFO_BYTES, Code, DevInfoError, DevInfoMissing, check_owns_socket,
                                check_process, check_socket, parse_addr, parse_devinfo, read_devinfo_file, validate_devinfo)

PLUGIN = "hello"
ALL_CODES = {v for k, v in vars(Code).items() if k.isupper()}


def good(**over) -> dict:
    doc = {"pid": os.getpid(), "protocol": "grpc", "protocolVersion": 1, "addr": "127.0.0.1:4242",
           "pluginId": PLUGIN, "vitePort": 15173, "version": "0.1.0", "startedAt": "2026-11-25T10:00:00Z"}
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not ...}


def raw(doc) -> bytes:
    return json.dumps(doc).encode()


def assert_structured(err: DevInfoError) -> None:
    assert err.code in ALL_CODES
    assert str(err).startswith(err.code + ": ")
    assert err.message and len(str(err)) < 2000


def code_of(fn, *args, **kw) -> str:
    with pytest.raises(DevInfoError) as ei:
        fn(*args, **kw)
    assert_structured(ei.value)
    return ei.value.code


# ---------------------------------------------------------------------------------------------------------------
# Contents

def test_good_contents_parse():
    info = parse_devinfo(raw(good()), PLUGIN)
    assert isinstance(info, DevInfo) and info.pid == os.getpid() and info.vitePort == 15173
    # optional fields may be missing; unknown ones are ignored
    info = parse_devinfo(raw(good(vitePort=..., version=..., startedAt=..., extra={"x": [1]})), PLUGIN)
    assert info.vitePort == 0


@pytest.mark.parametrize("absent", [{"pluginId": ...}, {"pluginId": ""}, {"pluginId": ..., "version": ..., "startedAt": ...}])
def test_plugin_id_version_and_started_at_are_optional(absent):
    """Omniview's DevInfoFile has pluginId, version and startedAt `omitempty`: its SDK may leave them out; the
    directory names the plugin."""
    info = parse_devinfo(raw(good(**absent)), PLUGIN)
    assert info.pid == os.getpid() and info.pluginId in ("", PLUGIN)


@pytest.mark.parametrize("data, code", [
    (b"", Code.JSON),
    (b"{", Code.JSON),
    (b"not json", Code.JSON),
    (b"\xff\xfe", Code.JSON),
    (b"[]", Code.SHAPE),
    (b"null", Code.SHAPE),
    (raw(good(pid=...)), Code.SHAPE),
    (raw(good(addr=...)), Code.SHAPE),
    (raw(good(pid="123")), Code.SHAPE),
    (raw(good(pid=1.5)), Code.SHAPE),
    (raw(good(pid=True)), Code.SHAPE),
    (raw(good(vitePort=-1)), Code.SHAPE),
    (raw(good(vitePort=70000)), Code.SHAPE),
    (raw(good(pluginId="other")), Code.PLUGIN_ID),
    (raw(good(protocol="netrpc")), Code.PROTOCOL),
    (raw(good(protocolVersion=2)), Code.PROTOCOL_VERSION),
    (raw(good(pid=0)), Code.PID_INVALID),
    (raw(good(pid=-1)), Code.PID_INVALID),
    (raw(good(pid=2**40)), Code.PID_INVALID),
    (raw(good(addr="10.0.0.1:1234")), Code.ADDR_NOT_LOOPBACK),
    (raw(good(addr="")), Code.ADDR_INVALID),
])
def test_bad_contents_have_their_own_code(data, code):
    assert code_of(parse_devinfo, data, PLUGIN) == code


def test_missing_field_is_named():
    with pytest.raises(DevInfoError) as ei:
        parse_devinfo(raw(good(protocol=...)), PLUGIN)
    assert "protocol" in str(ei.value)


@pytest.mark.parametrize("addr, expected", [
    ("127.0.0.1:4242", ("tcp", "127.0.0.1:4242")),
    ("127.9.8.7:1", ("tcp", "127.9.8.7:1")),
    ("localhost:80", ("tcp", "127.0.0.1:80")),
    ("LOCALHOST:80", ("tcp", "127.0.0.1:80")),
    ("[::1]:80", ("tcp", "[::1]:80")),
    ("[::ffff:127.0.0.1]:80", ("tcp", "127.0.0.1:80")),
    ("/tmp/plugin123", ("unix", "/tmp/plugin123")),
    ("unix:/tmp/plugin123", ("unix", "/tmp/plugin123")),
    ("unix:///tmp/plugin123", ("unix", "/tmp/plugin123")),
])
def test_loopback_and_unix_addresses(addr, expected):
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("addr, code", [
    ("10.0.0.1:1234", Code.ADDR_NOT_LOOPBACK),
    ("0.0.0.0:80", Code.ADDR_NOT_LOOPBACK),
    ("192.168.1.1:80", Code.ADDR_NOT_LOOPBACK),
    ("[::]:80", Code.ADDR_NOT_LOOPBACK),
    ("[fe80::1]:80", Code.ADDR_NOT_LOOPBACK),
    ("[::ffff:10.0.0.1]:80", Code.ADDR_NOT_LOOPBACK),
    ("example.com:80", Code.ADDR_NOT_LOOPBACK),        # a name: never resolved
    ("localhost.evil.com:80", Code.ADDR_NOT_LOOPBACK),
    ("127.0.0.1", Code.ADDR_INVALID),
    ("127.0.0.1:0", Code.ADDR_INVALID),
    ("127.0.0.1:65536", Code.ADDR_INVALID),
    ("127.0.0.1:+80", Code.ADDR_INVALID),
    ("127.0.0.1:\u0661\u0662", Code.ADDR_INVALID),
    ("::1:80", Code.ADDR_INVALID),
    (":80", Code.ADDR_INVALID),
    ("unix:relative/path", Code.ADDR_INVALID),
    ("/tmp/a\x00b", Code.ADDR_INVALID),
])
def test_refused_addresses(addr, code):
    assert code_of(parse_addr, addr) == code


# --- fuzzing --------------------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
addresses = (st.sampled_from(["127.0.0.1:4242", "localhost:1", "[::1]:9", "10.0.0.1:1234", "/tmp/x", "unix:/x",
                              "", ":", "[::1]", "a:b:c", "0x7f.1:80", "2130706433:80", "127.1:80", "[::1%lo]:80"])
             | st.text(max_size=40)
             | st.builds(lambda h, p: f"{h}:{p}", st.ip_addresses().map(str), st.integers(-5, 70000))
             | st.builds(lambda h, p: f"[{h}]:{p}", st.ip_addresses(v=6).map(str), st.integers(0, 70000)))
documents = st.fixed_dictionaries({}, optional={
    "pid": st.integers() | json_values,
    "protocol": st.sampled_from(["grpc", "netrpc", "GRPC", ""]) | json_values,
    "protocolVersion": st.integers(-3, 5) | json_values,
    "addr": addresses | json_values,
    "pluginId": st.sampled_from([PLUGIN, "other", "", "../hello"]) | json_values,
    "vitePort": st.integers(-5, 70000) | json_values,
    "version": st.text(max_size=10) | json_values,
    "startedAt": st.text(max_size=10) | json_values,
    "extra": json_values,
})


def _check_parse(data: bytes) -> None:
    try:
        info = parse_devinfo(data, PLUGIN)
    except DevInfoError as e:
        assert_structured(e)
        return
    # Whatever passes really has the promised properties.
    assert info.pluginId in (PLUGIN, "") and info.protocol == "grpc" and info.protocolVersion == 1
    assert 0 < info.pid < 2**31 and 0 <= info.vitePort <= 65535
    network, address = parse_addr(info.addr)
    if network == "tcp":
        host = address.rpartition(":")[0].strip("[]")
        assert ipaddress.ip_address(host).is_loopback
    else:
        assert network == "unix" and address.startswith("/")


@settings(max_examples=600, deadline=None)
@given(documents)
def test_fuzz_documents(doc):
    _check_parse(json.dumps(doc).encode())


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes(data):
    _check_parse(data)


@settings(max_examples=300, deadline=None)
@given(documents, st.integers(0, 400), st.binary(min_size=1, max_size=4))
def test_fuzz_mutated_documents(doc, where, junk):
    data = bytearray(json.dumps(doc).encode())
    where = min(where, len(data))
    _check_parse(bytes(data[:where]) + junk + bytes(data[where:]))


def test_deep_nesting_is_a_structured_error():
    for data in (b"[" * 200_000, b'{"extra": ' + b"[" * 60_000 + b"]" * 60_000 + b"}"):
        try:
            parse_devinfo(data, PLUGIN)
        except DevInfoError as e:
            assert_structured(e)


@settings(max_examples=800, deadline=None)
@given(addresses)
def test_fuzz_addresses(addr):
    try:
        network, address = parse_addr(addr)
    except DevInfoError as e:
        assert_structured(e)
        assert e.code in (Code.ADDR_INVALID, Code.ADDR_NOT_LOOPBACK)
        return
    if network == "tcp":
        host, _, port = address.rpartition(":")
        assert ipaddress.ip_address(host.strip("[]")).is_loopback and 0 < int(port) < 65536
    else:
        assert address.startswith("/") and "\x00" not in address


# ---------------------------------------------------------------------------------------------------------------
# Files

@pytest.fixture
def home(tmp_path):
    d = tmp_path / "plugins" / PLUGIN
    d.mkdir(parents=True, mode=0o700)
    return d


def write(path, data: bytes, mode=0o600):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return str(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), documents.map(lambda d: json.dumps(d).encode())))
def test_fuzz_whole_files(home, data):
    path = write(home / ".devinfo", data)
    try:
        valid = validate_devinfo(path, PLUGIN)
    except DevInfoError as e:
        assert_structured(e)
        assert not isinstance(e, DevInfoMissing)
        return
    assert valid.info.pluginId == PLUGIN     # only possible with a live pid of ours and a loopback address


def test_file_checks(home, tmp_path):
    path = str(home / ".devinfo")
    assert code_of(read_devinfo_file, path) == Code.MISSING
    target = write(tmp_path / "elsewhere.json", raw(good()))
    os.symlink(target, path)
    assert code_of(read_devinfo_file, path) == Code.SYMLINK
    os.unlink(path)
    os.mkfifo(path, 0o600)
    assert code_of(read_devinfo_file, path) == Code.NOT_REGULAR       # and no hang on the FIFO
    os.unlink(path)
    os.mkdir(path, 0o700)
    assert code_of(read_devinfo_file, path) == Code.NOT_REGULAR
    os.rmdir(path)
    write(path, raw(good()), 0o666)
    assert code_of(read_devinfo_file, path) == Code.PERMISSIONS
    os.chmod(path, 0o620)
    assert code_of(read_devinfo_file, path) == Code.PERMISSIONS
    os.chmod(path, 0o644)                       # readable by others is fine, writable is not
    data, st_ = read_devinfo_file(path)
    assert data == raw(good()) and stat.S_ISREG(st_.st_mode)
    assert code_of(read_devinfo_file, path, uid=os.getuid() + 1) == Code.OWNER
    with open(path, "wb") as f:
        f.truncate(10 * 1024 * 1024)            # sparse: refused from its size, never read
    assert code_of(read_devinfo_file, path) == Code.TOO_LARGE
    write(path, b" " * MAX_DEVINFO_BYTES + b"{}")
    assert code_of(read_devinfo_file, path) == Code.TOO_LARGE
    write(path, b" " * (MAX_DEVINFO_BYTES - 2) + b"{}")
    assert len(read_devinfo_file(path)[0]) == MAX_DEVINFO_BYTES


def test_process_checks():
    now = time.time()
    created = check_process(os.getpid(), now)
    assert created <= now
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert code_of(check_process, child.pid, now) == Code.PID_DEAD
    # A live process that started after the file was written: the file's pid was reused.
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert code_of(check_process, sleeper.pid, time.time() - 60) == Code.PID_REUSED
        assert check_process(sleeper.pid, time.time()) > 0
        assert code_of(check_process, sleeper.pid, time.time(), uid=os.getuid() + 1) == Code.PID_FOREIGN
        sleeper.kill()
        deadline = time.time() + 5
        while time.time() < deadline:          # not reaped: a zombie is not alive
            try:
                if open(f"/proc/{sleeper.pid}/stat").read().split(") ")[1].startswith("Z"):
                    break
            except OSError:
                break
            time.sleep(0.01)
        assert code_of(check_process, sleeper.pid, time.time()) == Code.PID_DEAD
    finally:
        sleeper.kill()
        sleeper.wait()


def test_socket_checks(tmp_path):
    missing = str(tmp_path / "none.sock")
    assert code_of(check_socket, missing) == Code.SOCKET
    regular = write(tmp_path / "file", b"")
    assert code_of(check_socket, regular) == Code.SOCKET
    path = str(tmp_path / "s.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
        check_socket(path)
        assert code_of(check_socket, path, uid=os.getuid() + 1) == Code.SOCKET
        link = str(tmp_path / "link.sock")
        os.symlink(path, link)
        assert code_of(check_socket, link) == Code.SOCKET
    finally:
        s.close()


def test_validate_whole(home, tmp_path):
    sock_path = str(tmp_path / "p.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock_path)
    s.listen()
    t = socket.create_server(("127.0.0.1", 0))
    port = t.getsockname()[1]
    try:
        path = write(home / ".devinfo", raw(good(addr=sock_path)))
        valid = validate_devinfo(path, PLUGIN)
        assert (valid.network, valid.address, valid.info.pid) == ("unix", sock_path, os.getpid())
        write(path, raw(good(addr=f"localhost:{port}")))
        assert validate_devinfo(path, PLUGIN).address == f"127.0.0.1:{port}"
        write(path, raw(good(addr=f"localhost:{port}", pid=1)))        # live, but not the one listening there
        assert code_of(validate_devinfo, path, PLUGIN) in (Code.PID_NOT_LISTENING, Code.PID_FOREIGN)
        write(path, raw(good(addr=sock_path)))
        # the pid started long after this file claims to have been written
        os.utime(path, (time.time() - 3600, time.time() - 3600))
        assert code_of(validate_devinfo, path, PLUGIN) == Code.PID_REUSED
        write(path, raw(good(addr=str(tmp_path / "gone.sock"))))
        assert code_of(validate_devinfo, path, PLUGIN) == Code.SOCKET
    finally:
        s.close()
        t.close()


def _listener_process(argv_tail: str) -> subprocess.Popen:
    """A process of ours holding a listening socket (prints 'ready' once it listens)."""
    p = subprocess.Popen([sys.executable, "-c", "import socket, sys, time\n" + argv_tail +
                          "\nprint('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.parametrize("family", ["tcp4", "tcp4-wildcard", "tcp6", "unix"])
def test_pid_must_hold_the_listening_socket(tmp_path, family):
    """A live pid of ours is not enough: it must be the one listening at addr (/proc/<pid>/fd has the socket)."""
    if family == "tcp6" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    if family == "unix":
        addr = str(tmp_path / "p.sock")
        network, setup = "unix", f"s = socket.socket(socket.AF_UNIX); s.bind({addr!r}); s.listen()"
    else:
        host = {"tcp4": "127.0.0.1", "tcp4-wildcard": "0.0.0.0", "tcp6": "::1"}[family]
        fam = "socket.AF_INET6" if family == "tcp6" else "socket.AF_INET"
        port_file = tmp_path / "port"
        setup = (f"s = socket.socket({fam}); s.bind(({host!r}, 0)); s.listen(); "
                 f"open({str(port_file)!r}, 'w').write(str(s.getsockname()[1]))")
        network, addr = "tcp", None
    try:
        owner = _listener_process(setup)
    except AssertionError:
        pytest.skip(f"cannot listen on {family} here")
    other = subprocess.Popen(["sleep", "60"])
    try:
        if addr is None:
            port = int((tmp_path / "port").read_text())
            addr = f"[::1]:{port}" if family == "tcp6" else f"127.0.0.1:{port}"
        check_owns_socket(owner.pid, network, addr)
        assert code_of(check_owns_socket, other.pid, network, addr) == Code.PID_NOT_LISTENING
        assert code_of(check_owns_socket, os.getpid(), network, addr) == Code.PID_NOT_LISTENING
        owner.kill()
        owner.wait()
        assert code_of(check_owns_socket, other.pid, network, addr) == Code.PID_NOT_LISTENING   # nothing listens
    finally:
        owner.kill()
        other.kill()
        owner.wait()
        other.wait()


def test_bound_but_not_listening_unix_socket_is_not_enough(tmp_path):
    path = str(tmp_path / "b.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    try:
        assert code_of(check_owns_socket, os.getpid(), "unix", path) == Code.PID_NOT_LISTENING
    finally:
        s.close()
