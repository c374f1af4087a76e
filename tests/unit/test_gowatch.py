"""GoWatcher: real inotify on a tmp dir; every wait is bounded."""
from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from typing import AsyncIterator

import pytest

from omnibroker import protocol
from omniworker import gowatch
from omniworker.context import NullSink, PluginContext
from omniworker.gowatch import GoWatcher, WatchError, glob_to_regex, watch_roots

DEBOUNCE_MS = 300

pytestmark = pytest.mark.async_timeout(20)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIVIEW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))
    d = tmp_path / "plug"
    (d / "pkg" / "sub").mkdir(parents=True)
    (d / "ui" / "node_modules" / "x").mkdir(parents=True)
    (d / "build" / "bin").mkdir(parents=True)
    (d / "pkg" / "main.go").write_text("package main\n")
    return d


class Recorder:
    def __init__(self):
        self.calls: list[list[str]] = []
        self.events: list[str] = []
        self.errors: list[str] = []
        self.changed = asyncio.Event()

    def on_change(self, paths):
        self.calls.append(paths)
        self.changed.set()

    async def next_call(self, timeout=5.0) -> list[str]:
        n = len(self.calls)
        while len(self.calls) <= n:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), timeout)
        return self.calls[n]


def make(plugin_dir, rec: Recorder, **settings) -> tuple[GoWatcher, NullSink]:
    sink = NullSink()
    ctx = PluginContext(protocol.PluginSpec(id="w", path=str(plugin_dir),
                                            settings={"go": {"debounce_ms": DEBOUNCE_MS, **settings}}), sink)
    w = GoWatcher(ctx, rec.on_change, on_event=rec.events.append, on_error=rec.errors.append)
    return w, sink


@contextlib.asynccontextmanager
async def watching(plugin_dir) -> AsyncIterator[tuple[GoWatcher, Recorder, NullSink]]:
    """A started GoWatcher on plugin_dir reporting to a Recorder; stopped on the way out, whatever happened."""
    rec = Recorder()
    w, sink = make(plugin_dir, rec)
    w.start()
    try:
        yield w, rec, sink
    finally:
        await w.stop()


def write(path, text="x"):
    with open(path, "w") as f:
        f.write(text)


# --- pure -------------------------------------------------------------------------------------------------------

def test_globs_and_roots():
    r = glob_to_regex("pkg/**/*.go")
    assert r.match("pkg/a.go") and r.match("pkg/x/y/a.go")
    assert not r.match("pkgx/a.go") and not r.match("pkg/a.gox") and not r.match("a.go")
    assert glob_to_regex("go.mod").match("go.mod") and not glob_to_regex("go.mod").match("gozmod")
    assert glob_to_regex("**/*.go").match("a.go") and glob_to_regex("**/*.go").match("a/b.go")
    assert glob_to_regex("pkg/[ab].go").match("pkg/a.go") and not glob_to_regex("pkg/[!ab].go").match("pkg/a.go")
    assert watch_roots(["pkg/**/*.go", "go.mod", "go.sum"]) == [("", False), ("pkg", True)]
    assert watch_roots(["**/*.go", "go.mod"]) == [("", True)]


def test_matches_and_ignores(plugin_dir):
    w, _ = make(plugin_dir, Recorder())
    yes = ["pkg/main.go", "pkg/sub/x.go", "go.mod", "go.sum"]
    no = ["pkg/.main.go.swp", "pkg/main.go~", "pkg/.#main.go", "pkg/#main.go#", "pkg/4913", "pkg/main.go.tmp",
          "pkg/x.tmp", "pkg/_ignored.go", "pkg/.hidden.go", "pkg/main.go___jb_tmp___", "pkg/.git/x.go",
          "pkg/node_modules/a.go", "ui/node_modules/x/a.go", "build/bin/x.go", "main.go", "pkg/readme.md",
          "pkg/main.swp", "README.md"]
    assert [p for p in yes if not w.matches(p)] == []
    assert [p for p in no if w.matches(p)] == []


# --- real inotify ---------------------------------------------------------------------------------------------------

async def test_five_saves_within_200ms_is_one_callback(plugin_dir):
    async with watching(plugin_dir) as (w, rec, _):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(5):
            write(plugin_dir / "pkg" / "main.go", f"package main // {i}\n")
            if i == 2:
                write(plugin_dir / "pkg" / "sub" / "b.go", "package sub\n")   # another file, same burst
            await asyncio.sleep(0.04)        # pacing the saves, not synchronisation
        assert loop.time() - t0 < DEBOUNCE_MS / 1000     # premise: the burst fits one debounce window
        paths = await rec.next_call(5)
        assert paths == ["pkg/main.go", "pkg/sub/b.go"]
        # nothing else arrives: a second callback would come within the debounce
        with pytest.raises(asyncio.TimeoutError):
            await rec.next_call(DEBOUNCE_MS / 1000 * 2)
        assert len(rec.calls) == 1 and w.fired == 1
        assert rec.events and set(rec.events) <= {"pkg/main.go", "pkg/sub/b.go"}


async def test_trailing_debounce_fires_after_last_event(plugin_dir):
    async with watching(plugin_dir) as (w, rec, _):
        loop = asyncio.get_running_loop()
        for i in range(4):
            write(plugin_dir / "pkg" / "main.go", f"// {i}\n")
            await asyncio.sleep(0.1)          # pacing: 400 ms of saves, each < debounce apart
        last = loop.time() - 0.1
        await rec.next_call(5)
        fired = w.last_burst[1]
        assert fired - last >= DEBOUNCE_MS / 1000 * 0.9


async def test_rename_save_triggers(plugin_dir):
    async with watching(plugin_dir) as (w, rec, _):
        tmp = plugin_dir / "pkg" / "main.go.tmp.1234"
        write(tmp, "package main // new\n")
        os.replace(tmp, plugin_dir / "pkg" / "main.go")       # editor's atomic save
        assert await rec.next_call(5) == ["pkg/main.go"]
        # a file moved in from outside the watched tree counts too
        outside = plugin_dir.parent / "new.go"
        write(outside, "package main\n")
        os.replace(outside, plugin_dir / "pkg" / "moved_in.go")
        assert await rec.next_call(5) == ["pkg/moved_in.go"]
        # and one moved away (a deleted source changes the build)
        os.replace(plugin_dir / "pkg" / "moved_in.go", plugin_dir.parent / "away.go")
        assert await rec.next_call(5) == ["pkg/moved_in.go"]


async def test_vim_style_save_sequence(plugin_dir):
    """vim (backupcopy=no): 4913 probe, rename to main.go~, write a new main.go, delete the backup."""
    async with watching(plugin_dir) as (w, rec, _):
        pkg = plugin_dir / "pkg"
        write(pkg / "4913", "")
        os.unlink(pkg / "4913")
        os.replace(pkg / "main.go", pkg / "main.go~")
        write(pkg / "main.go", "package main // vim\n")
        os.unlink(pkg / "main.go~")
        assert await rec.next_call(5) == ["pkg/main.go"]


async def test_swap_and_temp_files_ignored(plugin_dir):
    async with watching(plugin_dir) as (w, rec, _):
        pkg = plugin_dir / "pkg"
        for name in [".main.go.swp", ".main.go.swx", "main.go~", ".#main.go", "#main.go#", "4913", "x.tmp",
                     "main.go___jb_tmp___", "_scratch.go"]:
            write(pkg / name)
        write(plugin_dir / "ui" / "node_modules" / "x" / "a.go")
        write(plugin_dir / "build" / "bin" / "plugin")
        write(plugin_dir / "README.md")
        (pkg / ".git").mkdir()
        write(pkg / ".git" / "x.go")
        # a real change afterwards: the only thing reported
        write(plugin_dir / "go.mod", "module x\n")
        assert await rec.next_call(5) == ["go.mod"]
        assert set(rec.events) == {"go.mod"}      # (created, modified, closed: one file)


async def test_watched_dir_disappears_and_comes_back(plugin_dir):
    async with watching(plugin_dir) as (w, rec, _):
        shutil.rmtree(plugin_dir / "pkg")
        await rec.next_call(5)
        assert rec.errors and "disappeared" in rec.errors[0]
        (plugin_dir / "pkg").mkdir()
        await rec.next_call(5)                               # the re-created dir is a change
        write(plugin_dir / "pkg" / "c.go", "package main\n")
        assert await rec.next_call(5) == ["pkg/c.go"]       # and it is watched again


async def test_missing_dir_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))
    ctx = PluginContext(protocol.PluginSpec(id="w", path=str(tmp_path / "nope")), NullSink())
    w = GoWatcher(ctx, lambda paths: None)
    with pytest.raises(WatchError, match="does not exist"):
        w.start()


async def test_inotify_limit_names_the_sysctl(plugin_dir, monkeypatch):
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")
    monkeypatch.setattr(gowatch.InotifyObserver, "schedule", full)
    w, _ = make(plugin_dir, Recorder())
    with pytest.raises(WatchError) as ei:
        w.start()
    assert "fs.inotify.max_user_watches" in str(ei.value)
    assert not w.running


async def test_stop_drops_pending_change(plugin_dir):
    rec = Recorder()
    w, _ = make(plugin_dir, rec)
    w.start()
    write(plugin_dir / "pkg" / "main.go", "// x\n")
    n = len(rec.events)
    while len(rec.events) == n:           # wait (bounded by the test's timeout) for the event to reach the loop
        await asyncio.sleep(0.01)
    await w.stop()
    with pytest.raises(asyncio.TimeoutError):
        await rec.next_call(DEBOUNCE_MS / 1000 * 2)
    assert rec.calls == []
