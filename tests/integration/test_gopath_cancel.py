"""Saves during a build, through the whole stack (supervisord -> broker -> worker -> real go build, real go-plugin).

The plugin's build command is a wrapper around `go build` (build.sh below) that takes an exclusive lock, inherited by
go and every compile/link step: a second build of the plugin starting before every process of the previous one is
gone finds the lock taken and records an overlap. After its build, the wrapper moves `rewrite.txt` (if a test put
one there) over pkg/greeting.go: a change made while the build runs, seen only once the build has ended (the first
`mv` takes the file away, so a build killed for that change does not make it again).
One service for the module; tests run in file order and each leaves the plugin ready. The last test runs a GoPath
of its own, without a watcher.
"""
import re
import shutil
import subprocess

import pytest

from support.config import plugin_toml
from support.example import GO_ENV, GREET, copy_example, greet_reply, greet_request, greeter_pb, set_greeting
from support.service import Service

from omnibroker import protocol
from omniworker.context import NullSink, PluginContext
from omniworker.gopath import GoPath
from omniworker.gowatch import GoWatcher, WatchError

pytestmark = pytest.mark.skipif(shutil.which("go") is None or shutil.which("flock") is None,
                                reason="needs the Go toolchain and flock(1)")

BUILD_SH = """#!/bin/sh
exec 9>>build.lock
if ! flock -n 9; then echo overlap >> build.overlaps; exit 99; fi
go build -o build/bin/plugin ./pkg || exit $?
if [ -f rewrite.txt ]; then mv rewrite.txt pkg/.greeting.go.new && mv pkg/.greeting.go.new pkg/greeting.go; fi
"""
GENERATED = 30
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]


def git(tree, *args):
    subprocess.run([*GIT, *args], cwd=tree, check=True, capture_output=True)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    plugin = copy_example(tmp_path_factory.mktemp("plugin") / "hello", ui=False)
    (plugin / "build.sh").write_text(BUILD_SH)
    for i in range(GENERATED):
        (plugin / "pkg" / f"gen_{i:02d}.go").write_text(f'package main\n\nconst genValue{i:02d} = "a{i}"\n')
    # a branch `other` where the 30 generated files and the greeting differ
    (plugin / ".gitignore").write_text("build/\nbuild.lock\nbuild.overlaps\n")
    git(plugin, "init", "-q", "-b", "main")
    git(plugin, "add", "-A")
    git(plugin, "commit", "-qm", "a")
    git(plugin, "checkout", "-qb", "other")
    for i in range(GENERATED):
        (plugin / "pkg" / f"gen_{i:02d}.go").write_text(f'package main\n\nconst genValue{i:02d} = "b{i}"\n')
    set_greeting(plugin, "Checkout")
    git(plugin, "commit", "-qam", "b")
    git(plugin, "checkout", "-q", "main")
    service = Service(plugin_toml("hello", plugin, cookie=None, build_command=["sh", "build.sh"],
                                  extra="vite = false\n"))
    service.plugin_dir = plugin
    service.start()
    service.wait_state("hello", ready, timeout=120, what="ready")
    yield service
    service.cleanup()


def ready(s):
    return s["goStatus"] == "ready" and s["grpcConnected"]


def greet(svc, name="x") -> str:
    return greet_reply(svc.call("invoke", wait=20, plugin="hello", method=GREET, request=greet_request(name),
                                timeout=15))


def logged(events, text: str) -> list[str]:
    """The log lines seen so far on `events` that contain `text`."""
    return [e["message"] for ev in events.seen if ev.topic == protocol.LOG for e in ev.payload if text in e["message"]]


def is_log(text: str):
    return lambda ev: ev.topic == protocol.LOG and any(text in e["message"] for e in ev.payload)


def topics(events, topic: str) -> int:
    return sum(1 for ev in events.seen if ev.topic == topic)


def installed(svc) -> bytes:
    """The installed binary and the previous one, as bytes (a word compiled in shows in them)."""
    bin_dir = svc.home / "plugins" / "hello" / "bin"
    return (bin_dir / "plugin").read_bytes() + (bin_dir / "plugin.prev").read_bytes()


def test_git_checkout_of_30_files_is_one_reload(svc):
    events = svc.subscribe()
    git(svc.plugin_dir, "checkout", "-q", "other")
    events.wait(lambda ev: ev.topic == protocol.RELOAD_COMPLETE, timeout=60, what="dev_reload_complete")
    assert greet(svc) == "Checkout, x"
    # a checkout event arriving after the build began would have cancelled it: nothing is left to reload
    assert topics(events, protocol.RELOAD_START) == 1
    assert len(logged(events, "build succeeded")) == 1
    assert not (svc.plugin_dir / "build.overlaps").exists()
    git(svc.plugin_dir, "checkout", "-q", "main")
    events.wait(lambda ev: ev.topic == protocol.RELOAD_COMPLETE, timeout=60, what="dev_reload_complete (back)")
    assert greet(svc) == "Hello, x"
    events.close()


def test_each_save_cancels_the_running_build_and_the_last_save_is_served(svc):
    events = svc.subscribe()
    for i in range(1, 5):
        set_greeting(svc.plugin_dir, f"Cancelled{i}", atomic=True)
        events.wait(is_log("$ sh build.sh"), timeout=30, what=f"build {i} spawned")    # the next save lands in it
    set_greeting(svc.plugin_dir, "Served", atomic=True)
    events.wait(lambda ev: ev.topic == protocol.RELOAD_COMPLETE, timeout=60, what="dev_reload_complete")
    assert greet(svc) == "Served, x"
    assert len(logged(events, "build succeeded")) == 1                     # one build installed: the last one
    stopped = logged(events, "build cancelled after") + logged(events, "discarding it")
    assert len(stopped) == 4, stopped
    assert all(re.search(r"\d+\.\d\d CPU-s", m) for m in logged(events, "build cancelled after"))
    assert topics(events, protocol.RELOAD_START) == 1 and topics(events, protocol.RELOAD_COMPLETE) == 1
    assert b"Cancelled" not in installed(svc)                                # no intermediate edit was installed
    assert not (svc.plugin_dir / "build.overlaps").exists()                 # never two builds at once
    events.close()


def test_a_build_whose_sources_changed_while_it_ran_is_never_installed(svc):
    events = svc.subscribe()
    greeting = (svc.plugin_dir / "pkg" / "greeting.go").read_text()
    (svc.plugin_dir / "rewrite.txt").write_text(re.sub(r'const Greeting = ".*"', 'const Greeting = "Final"',
                                                       greeting))
    set_greeting(svc.plugin_dir, "Middle", atomic=True)        # its build succeeds, then build.sh writes "Final"
    events.wait(is_log("build succeeded"), timeout=60, what="a build installed")
    events.wait(lambda ev: ev.topic == protocol.RELOAD_COMPLETE, timeout=60, what="dev_reload_complete")
    assert greet(svc) == "Final, x"
    assert len(logged(events, "build succeeded")) == 1
    assert len(logged(events, "build cancelled after") + logged(events, "discarding it")) == 1
    assert b"Middle" not in installed(svc)
    assert topics(events, protocol.RELOAD_COMPLETE) == 1
    assert not (svc.plugin_dir / "build.overlaps").exists()
    events.close()


async def test_without_a_watcher_a_build_whose_sources_changed_is_discarded_and_built_again(tmp_path, monkeypatch):
    """No watcher (inotify refused): no event can cancel the build, so the end-of-build check alone keeps the stale
    binary out, and asks for the next build itself."""
    monkeypatch.setenv("OMNIVIEW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))

    def refuse(self):
        raise WatchError("cannot watch: refused by the test")
    monkeypatch.setattr(GoWatcher, "start", refuse)
    plugin = copy_example(tmp_path / "hello", ui=False)
    (plugin / "build.sh").write_text(BUILD_SH)
    sink = NullSink()
    ctx = PluginContext(protocol.PluginSpec(id="hello", path=str(plugin), settings={
        "build": {"env": dict(GO_ENV), "command": ["sh", "build.sh"]}}), sink)
    gp = GoPath(ctx)
    await gp.start()
    try:
        assert ctx.state.goStatus == "ready" and gp.watcher is None
        greeting = (plugin / "pkg" / "greeting.go").read_text()
        (plugin / "rewrite.txt").write_text(re.sub(r'const Greeting = ".*"', 'const Greeting = "Final"', greeting))
        set_greeting(plugin, "Middle", atomic=True)
        assert await gp.rebuild(wait=True)               # Middle's build is discarded; the next one serves Final
        reply = await gp.invoke(GREET, greeter_pb.encode_greet_request("x"))
        assert greeter_pb.decode_greet_reply(reply) == "Final, x"
        assert gp.discarded == 1 and gp.builder.cancelled == 0
        messages = [e["message"] for t, p in sink.events if t == protocol.LOG for e in p]
        assert sum("the sources changed meanwhile: discarding it" in m for m in messages) == 1
        bin_dir = tmp_path / "home" / "plugins" / "hello" / "bin"
        assert b"Middle" not in (bin_dir / "plugin").read_bytes() + (bin_dir / "plugin.prev").read_bytes()
        assert not (plugin / "build.overlaps").exists()
    finally:
        await gp.stop()
