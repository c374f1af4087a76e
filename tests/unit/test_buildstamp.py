"""The build input stamp (omniworker/buildstamp.py) and the watcher's source listing it is computed from. No Go needed:
a fake `go` on a private PATH stands for the toolchain."""
from __future__ import annotations

import json
import os

import pytest

from omnibroker import protocol
from omniworker import buildstamp, gowatch
from omniworker.buildstamp import check, inputs_digest, read_stamp, stamp_path, write_stamp
from omniworker.context import NullSink, PluginContext
from omniworker.gobuild import DEFAULT_BUILD_COMMAND, install, rollback
from omniworker.gowatch import GoWatcher


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIVIEW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))
    d = tmp_path / "plug"
    for sub in ("pkg/sub", "ui/node_modules/dep", "build/bin", ".git", "pkg/node_modules/x", "pkg/.cache"):
        (d / sub).mkdir(parents=True)
    (d / "pkg" / "main.go").write_text("package main\n\nfunc main() {}\n")
    (d / "pkg" / "greeting.go").write_text('package main\n\nconst Greeting = "Hello"\n')
    (d / "pkg" / "sub" / "sub.go").write_text("package sub\n")
    (d / "go.mod").write_text("module example.com/plug\n")
    (d / "ui" / "node_modules" / "dep" / "x.go").write_text("package dep\n")
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    go = fakebin / "go"
    go.write_text("#!/bin/sh\nexit 0\n")
    go.chmod(0o755)
    return d


class Inputs:
    """What GoPath feeds buildstamp.inputs_digest: the build command/cwd/output/env and the watcher's snapshot."""

    def __init__(self, plugin_dir, **go_settings):
        self.dir = plugin_dir
        self.argv = list(DEFAULT_BUILD_COMMAND)
        self.output = str(plugin_dir / "build" / "bin" / "plugin")
        self.env = {"PATH": str(plugin_dir.parent / "fakebin"), "HOME": "/root", "GO111MODULE": "off",
                    "GOPATH": "/usr/share/gocode"}
        ctx = PluginContext(protocol.PluginSpec(id="s", path=str(plugin_dir), settings={"go": go_settings}),
                            NullSink())
        # GoPath adds the build output dir to `[go] ignore` the same way
        self.watcher = GoWatcher(ctx, lambda paths: None, ignore=list(go_settings.get("ignore", [])) + ["build/bin/**"])

    def digest(self, **over) -> str:
        args = {"argv": self.argv, "cwd": str(self.dir), "output": self.output, "env": self.env,
                "sources": self.watcher.snapshot(), **over}
        return inputs_digest(**args)


def _edit(path, text):
    """An edit the way editors do it in place: new content, new mtime."""
    st = os.stat(path)
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


# --- the digest ------------------------------------------------------------------------------------------------------

def test_same_tree_same_digest(tree):
    a = Inputs(tree)
    d1 = a.digest()
    assert d1 == a.digest() == Inputs(tree).digest()               # stable, and across watcher instances
    assert len(d1) == 64 and int(d1, 16) >= 0


def test_source_edits_change_the_digest(tree):
    a = Inputs(tree)
    seen = [a.digest()]

    def changed(what):
        d = a.digest()
        assert d not in seen, what
        seen.append(d)

    greeting = tree / "pkg" / "greeting.go"
    _edit(greeting, greeting.read_text().replace("Hello", "Howdy"))          # same size, new content and mtime
    changed("edit")
    (tree / "pkg" / "sub" / "new.go").write_text("package sub\n")
    changed("add")
    (tree / "pkg" / "sub" / "new.go").unlink()
    assert a.digest() == seen[-2]              # back to the tree before the add: the same inputs again
    (tree / "pkg" / "main.go").unlink()
    changed("delete")
    os.rename(tree / "pkg" / "sub" / "sub.go", tree / "pkg" / "sub" / "renamed.go")
    changed("rename")
    _edit(tree / "go.mod", "module example.com/other\n")
    changed("go.mod")


def test_old_file_put_back_with_its_mtime_and_size_still_counts(tree):
    """`tar x` / `cp -p` / `rsync -a` restore mtimes: ctime and inode still tell."""
    a = Inputs(tree)
    greeting = tree / "pkg" / "greeting.go"
    st = os.stat(greeting)
    d1 = a.digest()
    tmp = greeting.with_name("greeting.go.new")
    tmp.write_text(greeting.read_text().replace("Hello", "Salut"))          # same size
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, greeting)
    assert os.stat(greeting).st_size == st.st_size and os.stat(greeting).st_mtime_ns == st.st_mtime_ns
    assert a.digest() != d1


def test_command_output_cwd_env_and_tool_change_the_digest(tree):
    a = Inputs(tree)
    base = a.digest()
    assert a.digest(argv=["go", "build", "-tags", "dev", "-o", "build/bin/plugin", "./pkg"]) != base
    assert a.digest(output=str(tree / "build" / "bin" / "other")) != base
    assert a.digest(cwd=str(tree / "pkg")) != base
    for name, value in [("GOFLAGS", "-trimpath"), ("GOOS", "darwin"), ("GO111MODULE", "on"), ("CGO_ENABLED", "0"),
                        ("CGO_CFLAGS", "-O3"), ("CC", "clang"), ("CXX", "clang++"), ("GOEXPERIMENT", "x")]:
        assert a.digest(env={**a.env, name: value}) != base, name
    # not build inputs: the scratch dir, unrelated variables, and PATH itself (only the go it resolves to counts)
    other_path = tree.parent / "otherbin"
    other_path.mkdir()
    os.symlink(tree.parent / "fakebin" / "go", other_path / "go")
    for env in [{**a.env, "GOTMPDIR": "/tmp/x"}, {**a.env, "HOME": "/elsewhere", "TERM": "dumb"},
                {**a.env, "GOGC": "off", "GOMEMLIMIT": "1GiB", "GOMAXPROCS": "1"},      # the toolchain's own runtime
                {**a.env, "PATH": f"{other_path}:/nonexistent"}]:
        assert a.digest(env=env) == base, env
    # the toolchain: a different go binary (upgrade), or none at all
    go = tree.parent / "fakebin" / "go"
    go.write_text("#!/bin/sh\n# go1.99\nexit 0\n")
    upgraded = a.digest()
    assert upgraded != base
    st = os.stat(go)
    os.utime(go, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
    assert a.digest() != upgraded
    assert a.digest(env={**a.env, "PATH": "/nonexistent"}) != upgraded


def test_a_build_script_counts_as_the_tool(tree):
    a = Inputs(tree)
    script = tree / "build.sh"
    script.write_text("#!/bin/sh\ngo build -o build/bin/plugin ./pkg\n")
    script.chmod(0o755)
    argv = ["./build.sh"]
    d1 = a.digest(argv=argv)
    _edit(script, "#!/bin/sh\ngo build -tags x -o build/bin/plugin ./pkg\n")
    assert a.digest(argv=argv) != d1


def test_ignored_files_do_not_count(tree):
    a = Inputs(tree)
    base = a.digest()
    noise = ["ui/node_modules/dep/y.go", "ui/main.go", "build/gen.go", "build/bin/plugin", "build/bin/x.go",
             ".git/HEAD", ".git/x.go", "pkg/node_modules/x/a.go", "pkg/.cache/c.go", "pkg/.greeting.go.swp",
             "pkg/greeting.go~", "pkg/.#greeting.go", "pkg/#greeting.go#", "pkg/4913", "pkg/greeting.go.tmp",
             "pkg/_skip.go", "pkg/.hidden.go", "pkg/greeting.go___jb_tmp___", "pkg/README.md", "main.go", "dist/a.go",
             "bin/a.go"]
    for rel in noise:
        p = tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("package x\n")
    assert a.digest() == base
    assert a.watcher.source_files() == ["go.mod", "pkg/greeting.go", "pkg/main.go", "pkg/sub/sub.go"]
    # `[go] ignore` globs apply too
    b = Inputs(tree, ignore=["pkg/sub/**"])
    assert b.watcher.source_files() == ["go.mod", "pkg/greeting.go", "pkg/main.go"]


def test_source_files_are_exactly_what_the_watcher_matches(tree):
    """The stamp and the watch can never disagree: a brute-force walk filtered by matches() gives the same list."""
    for rel in ["pkg/a/b/c/deep.go", "pkg/a/.x/hidden.go", "pkg/a/b/notes.txt", "go.sum", "pkg/sub/x_test.go",
                "pkg/sub/.y.go.swp", "other/top.go", "ui/src/app.go"]:
        p = tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x\n")
    for patterns in (None, ["**/*.go", "go.mod"], ["pkg/*.go"], ["pkg/**/*.go", "other/*.go"]):
        a = Inputs(tree) if patterns is None else Inputs(tree, watch=patterns)
        brute = []
        for dirpath, _dirs, files in os.walk(tree):
            for f in files:
                rel = os.path.relpath(os.path.join(dirpath, f), tree).replace(os.sep, "/")
                if a.watcher.matches(rel):
                    brute.append(rel)
        assert a.watcher.source_files() == sorted(brute), patterns


def test_never_walks_into_ui_or_node_modules(tree, monkeypatch):
    for i in range(50):
        (tree / "ui" / "node_modules" / "dep" / f"f{i}.go").write_text("x")
    visited = []
    real = os.scandir

    def spy(path):
        visited.append(os.fspath(path))
        return real(path)
    monkeypatch.setattr(gowatch.os, "scandir", spy)
    for patterns in (None, ["**/*.go", "go.mod"]):
        visited.clear()
        (Inputs(tree) if patterns is None else Inputs(tree, watch=patterns)).watcher.snapshot()
        assert visited, patterns
        parts = [os.path.relpath(v, tree).split(os.sep) for v in visited]
        bad = [p for p in parts if {"node_modules", "ui", ".git", "build"} & set(p)]
        assert bad == [], (patterns, bad)


# --- the stamp file ------------------------------------------------------------------------------------------------

def _binary(path, data=b"\x7fELF fake"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o755)
    return path


def test_stamp_matches_only_the_stamped_binary_and_inputs(tmp_path):
    bindir = tmp_path / "bin"
    built = _binary(tmp_path / "out" / "plugin")
    installed = install(str(built), str(bindir))
    assert check(installed, "a" * 64) == (None, "no build stamp")
    doc = write_stamp(installed, "a" * 64, built="2024-01-01T00:00:00Z")
    assert sorted(os.listdir(bindir)) == ["plugin", "plugin.stamp"]         # the temp file was renamed
    assert json.loads(open(stamp_path(installed)).read()) == doc == read_stamp(installed)
    stamp, why = check(installed, "a" * 64)
    assert stamp is not None and why == "" and stamp["built"] == "2024-01-01T00:00:00Z"
    stamp, why = check(installed, "b" * 64)
    assert stamp is None and "changed since the installed build" in why
    # the binary replaced behind our back (same size even): not the stamped one
    tmp = bindir / "other"
    _binary(tmp, b"\x7fELF fakf")
    os.replace(tmp, installed)
    stamp, why = check(installed, "a" * 64)
    assert stamp is None and "not the stamped one" in why
    os.unlink(installed)
    assert check(installed, "a" * 64)[0] is None


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'{"version": 1}', b'{"version": 99, "inputs": "a"}',
                                     b'{"version": 1, "inputs": "a", "binary": {"size": "1", "mtime_ns": 1, "ino": 1}}',
                                     b"\xff\xfe garbage"])
def test_garbled_stamp_means_build(tmp_path, content):
    installed = install(str(_binary(tmp_path / "b")), str(tmp_path / "bin"))
    write_stamp(installed, "a" * 64)
    with open(stamp_path(installed), "wb") as f:
        f.write(content)
    assert read_stamp(installed) is None
    stamp, why = check(installed, "a" * 64)
    assert stamp is None and why == "the build stamp is unreadable"


def test_install_and_rollback_remove_the_stamp(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    installed = install(str(_binary(tmp_path / "b1", b"one")), str(bindir))
    write_stamp(installed, "a" * 64)
    install(str(_binary(tmp_path / "b2", b"two")), str(bindir))
    assert not os.path.exists(stamp_path(installed))
    write_stamp(installed, "b" * 64)
    assert rollback(str(bindir))
    assert not os.path.exists(stamp_path(installed)) and open(installed, "rb").read() == b"one"
    # an install that fails still drops the stamp (the caller stamps only after a successful install)
    write_stamp(installed, "c" * 64)
    from omniworker import gobuild

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(gobuild.shutil, "copyfileobj", boom)
    with pytest.raises(gobuild.InstallError):
        install(str(_binary(tmp_path / "b3", b"three")), str(bindir))
    assert not os.path.exists(stamp_path(installed))


def test_write_stamp_failure_leaves_no_temp(tmp_path, monkeypatch):
    installed = install(str(_binary(tmp_path / "b")), str(tmp_path / "bin"))

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(buildstamp.os, "replace", boom)     # the write itself failing, or the rename
    with pytest.raises(OSError):
        write_stamp(installed, "a" * 64)
    assert sorted(os.listdir(tmp_path / "bin")) == ["plugin"]


def test_builds_run_with_a_lazier_toolchain_collector_unless_told_otherwise(monkeypatch):
    from doubles import context
    from omniworker.gobuild import BUILD_GOGC, Builder
    monkeypatch.delenv("GOGC", raising=False)
    assert Builder(context()[0]).env()["GOGC"] == BUILD_GOGC
    assert Builder(context(build={"env": {"GOGC": "100"}})[0]).env()["GOGC"] == "100"
    monkeypatch.setenv("GOGC", "50")
    assert Builder(context()[0]).env()["GOGC"] == "50"


def test_an_install_is_stamped_once_durable_and_only_if_still_installed(tree):
    """GoPath installs without waiting for the disk and stamps after the switch (`_settle`): a binary replaced in
    between (a newer install, a rollback) is never stamped with the inputs of the one it replaced."""
    from omniworker.gobuild import BuildResult
    from omniworker.gopath import GoPath
    gp = GoPath(PluginContext(protocol.PluginSpec(id="s", path=str(tree), settings={"go": {"enabled": True}}),
                              NullSink()))
    built = tree / "build" / "bin" / "plugin"

    def build(data: bytes) -> BuildResult:
        built.unlink(missing_ok=True)                     # as go build does: a new file at the output
        built.write_bytes(data)
        return BuildResult(ok=True, binary=str(built))
    first = gp._install(build(b"one"))
    second = gp._install(build(b"two"))
    assert gp._settle(first, "a" * 64, "2024-01-01T00:00:00Z", 5) is None
    assert read_stamp(gp.installed) is None                             # "one" is not installed any more
    assert gp._settle(second, "b" * 64, "2024-01-01T00:00:01Z", 6) is None
    stamp, _ = check(gp.installed, "b" * 64)
    assert stamp is not None and stamp["duration_ns"] == 6
    assert gp._rollback() and check(gp.installed, "b" * 64) == (None, "no build stamp")
