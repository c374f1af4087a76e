"""parse_go_errors on real Go 1.19 output (captured from `go build`), fuzzing, and the atomic install."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from omniworker import gobuild
from omniworker.gobuild import InstallError, discard_displaced, install, parse_go_errors, rollback

PLUGIN = "/tmp/hp"


def E(file="", line=0, column=0, message=""):
    return (file, line, column, message)


def tuples(errors):
    return [(e.file, e.line, e.column, e.message) for e in errors]


# --- real samples -------------------------------------------------------------------------------------------------

def test_type_errors_with_package_header():
    out = """# _/tmp/hp/pkg
pkg/bad.go:3:26: cannot use "x" (untyped string constant) as int value in return statement
pkg/bad.go:4:27: cannot use "y" (untyped string constant) as int value in variable declaration
pkg/bad.go:5:15: undefined: undefinedThing"""
    assert tuples(parse_go_errors(out, PLUGIN)) == [
        E("pkg/bad.go", 3, 26, 'cannot use "x" (untyped string constant) as int value in return statement'),
        E("pkg/bad.go", 4, 27, 'cannot use "y" (untyped string constant) as int value in variable declaration'),
        E("pkg/bad.go", 5, 15, "undefined: undefinedThing"),
    ]


def test_syntax_error():
    out = "# _/tmp/hp/pkg\npkg/greeting.go:6:1: syntax error: non-declaration statement outside function body\n"
    assert tuples(parse_go_errors(out, PLUGIN)) == [
        E("pkg/greeting.go", 6, 1, "syntax error: non-declaration statement outside function body")]


def test_too_many_errors_go119_form():
    lines = [f'pkg/bad.go:{i}:24: cannot use "s" (untyped string constant) as int value in return statement'
             for i in range(2, 12)]
    out = "# _/tmp/hp/pkg\n" + "\n".join(lines) + "\npkg/bad.go:11:24: too many errors\n"
    errs = parse_go_errors(out, PLUGIN)
    assert len(errs) == 11
    assert [e.line for e in errs[:10]] == list(range(2, 12))
    assert errs[-1].file == "" and errs[-1].line == 0 and errs[-1].message.startswith("too many errors")


def test_too_many_errors_bare_form():
    out = "x.go:1:2: a\nx.go:2:2: b\ntoo many errors\n"
    errs = parse_go_errors(out, PLUGIN)
    assert tuples(errs)[:2] == [E("x.go", 1, 2, "a"), E("x.go", 2, 2, "b")]
    assert errs[-1].file == "" and "too many errors" in errs[-1].message and len(errs) == 3


def test_cannot_find_package_with_continuation():
    out = """pkg/bad.go:2:8: cannot find package "github.com/nope/missing" in any of:
	/usr/lib/go-1.19/src/github.com/nope/missing (from $GOROOT)
	/usr/share/gocode/src/github.com/nope/missing (from $GOPATH)"""
    [err] = parse_go_errors(out, PLUGIN)
    assert (err.file, err.line, err.column) == ("pkg/bad.go", 2, 8)
    assert err.message.splitlines()[0] == 'cannot find package "github.com/nope/missing" in any of:'
    assert "(from $GOPATH)" in err.message


def test_cannot_find_package_without_position_legacy():
    out = ("can't load package: package github.com/x/y: cannot find package \"github.com/x/y\" in any of:\n"
           "\t/usr/lib/go/src/github.com/x/y (from $GOROOT)\n")
    [err] = parse_go_errors(out, PLUGIN)
    assert err.file == "" and err.line == 0 and "cannot find package" in err.message


def test_redeclared_with_other_declaration():
    out = """# _/tmp/modt/pkg
pkg/main.go:3:6: main redeclared in this block
	pkg/main.go:2:6: other declaration of main"""
    [err] = parse_go_errors(out, PLUGIN)
    assert (err.file, err.line, err.column) == ("pkg/main.go", 3, 6)
    assert "other declaration of main" in err.message


def test_go_mod_parse_error_is_positioned_on_go_mod():
    out = "go: errors parsing go.mod:\n/tmp/hp/go.mod:4: unknown directive: bogus\n"
    assert tuples(parse_go_errors(out, PLUGIN)) == [E("go.mod", 4, 0, "unknown directive: bogus")]


def test_go_mod_errors_without_position():
    out = "go: go.mod file not found in current directory or any parent directory; see 'go help modules'\n"
    assert tuples(parse_go_errors(out, PLUGIN)) == [E("", 0, 0, out.strip())]
    out2 = "go: updates to go.mod needed; to update it:\n\tgo mod tidy\n"
    [err] = parse_go_errors(out2, PLUGIN)
    assert err.file == "" and "go mod tidy" in err.message


def test_module_lookup_progress_lines_skipped():
    out = ("go: finding module for package github.com/foo/baz\n"
           "pkg/main.go:2:8: cannot find module providing package github.com/foo/baz: "
           "module lookup disabled by GOPROXY=off\n")
    [err] = parse_go_errors(out, PLUGIN)
    assert (err.file, err.line, err.column) == ("pkg/main.go", 2, 8)


def test_linker_errors_without_position():
    out = "# _/tmp/modt/pkg\nmain.main: relocation target runtime.doesNotExist not defined\n"
    assert tuples(parse_go_errors(out, PLUGIN)) == [
        E("", 0, 0, "main.main: relocation target runtime.doesNotExist not defined")]
    out2 = ("# _/tmp/hp/pkg\n/usr/lib/go-1.19/pkg/tool/linux_amd64/link: running gcc failed: exit status 1\n"
            "/usr/bin/ld: cannot find -lfoo: No such file or directory\n"
            "collect2: error: ld returned 1 exit status\n")
    errs = parse_go_errors(out2, PLUGIN)
    assert errs and all(e.file == "" and e.line == 0 for e in errs)
    assert "running gcc failed" in errs[0].message


def test_output_dir_error_without_position():
    out = "go build _/tmp/modt/pkg: mkdir /proc/nope/: no such file or directory\n"
    [err] = parse_go_errors(out, PLUGIN)
    assert err.file == "" and "mkdir /proc/nope/" in err.message


def test_paths_relative_to_build_dir_resolve_from_plugin_dir():
    # `go build .` run inside pkg/ prints "./bad.go"; the error must name pkg/bad.go
    out = "# _/tmp/hp/pkg\n./bad.go:2:6: missing function body\n"
    [err] = parse_go_errors(out, PLUGIN, build_dir=PLUGIN + "/pkg")
    assert (err.file, err.line, err.column) == ("pkg/bad.go", 2, 6)
    [err] = parse_go_errors(out, PLUGIN, build_dir="pkg")         # relative build dir = relative to the plugin
    assert err.file == "pkg/bad.go"


def test_absolute_paths_inside_and_outside_plugin_dir():
    out = "/tmp/hp/pkg/sub/s.go:2:12: undefined: y\n/usr/share/gocode/src/x/y.go:1:2: boom\n"
    errs = parse_go_errors(out, PLUGIN)
    assert (errs[0].file, errs[0].line, errs[0].column) == ("pkg/sub/s.go", 2, 12)
    assert errs[1].file == "/usr/share/gocode/src/x/y.go"
    for e in errs:
        assert os.path.isabs(os.path.join(PLUGIN, e.file))


def test_vet_prefix_and_ansi_stripped():
    out = "vet: pkg/x.go:7:3: unreachable code\n\x1b[31mpkg/y.go:1:1: red\x1b[0m\n"
    assert tuples(parse_go_errors(out, PLUGIN)) == [E("pkg/x.go", 7, 3, "unreachable code"),
                                                    E("pkg/y.go", 1, 1, "red")]


def test_severity_error_for_the_compiler_warning_for_vet_cgo_and_linker_warnings():
    out = ("# _/tmp/hp/pkg\n"
           "pkg/a.go:3:2: undefined: x\n"
           "vet: pkg/a.go:7:3: unreachable code\n"
           "pkg/w.go:5:3: warning: #warning careful [-Wcpp]\n"
           "/usr/bin/ld: warning: creating DT_TEXTREL in a PIE\n"
           "main.main: relocation target x not defined\n")
    got = [(e.file, e.line, e.message, e.severity) for e in parse_go_errors(out, PLUGIN)]
    assert got == [("pkg/a.go", 3, "undefined: x", "error"),
                   ("pkg/a.go", 7, "unreachable code", "warning"),
                   ("pkg/w.go", 5, "#warning careful [-Wcpp]", "warning"),
                   ("", 0, "/usr/bin/ld: warning: creating DT_TEXTREL in a PIE", "warning"),
                   ("", 0, "main.main: relocation target x not defined", "error")]


@pytest.mark.skipif(shutil.which("go") is None or shutil.which("gcc") is None, reason="no go or gcc")
def test_a_successful_build_keeps_its_warnings(tmp_path):
    """A real cgo build whose C compiler warns: the build succeeds, and the warnings come back with severity
    "warning" (the worker publishes them as an error event)."""
    import asyncio

    from omnibroker import protocol
    from omniworker.context import NullSink, PluginContext
    pkg = tmp_path / "plug" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "main.go").write_text('package main\n\n// #warning careful here\nimport "C"\n\nfunc main() {}\n')
    ctx = PluginContext(protocol.PluginSpec(id="w", path=str(tmp_path / "plug"), settings={
        "build": {"env": {"GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "CGO_ENABLED": "1"}}}), NullSink())
    result = asyncio.run(gobuild.Builder(ctx).build())
    assert result.ok, result.output
    assert [(e.file, e.line, e.severity) for e in result.errors] == [("pkg/main.go", 3, "warning")], result.output
    assert "careful here" in result.errors[0].message


def test_empty_output():
    assert parse_go_errors("", PLUGIN) == []
    assert parse_go_errors("\n\n  \n", PLUGIN) == []


@pytest.mark.skipif(shutil.which("go") is None, reason="no go toolchain")
def test_live_go_output(tmp_path):
    """The parser on what this machine's go prints right now."""
    pkg = tmp_path / "plug" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "main.go").write_text('package main\n\nfunc main() {\n\tvar x int = "s"\n}\n')
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode")
    proc = subprocess.run(["go", "build", "-o", "build/bin/plugin", "./pkg"], cwd=tmp_path / "plug", env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    errs = parse_go_errors(proc.stderr, str(tmp_path / "plug"))
    assert [(e.file, e.line, e.column) for e in errs] == [("pkg/main.go", 4, 14)], proc.stderr


# --- fuzz ---------------------------------------------------------------------------------------------------------

_fragments = st.sampled_from([
    "# _/tmp/hp/pkg", "pkg/a.go:1:2: msg", "pkg/a.go:9: msg", "\tcontinued", "too many errors",
    "go: errors parsing go.mod:", "go: downloading x v1", "main.main: relocation", "::::", "a:b:c:", "x.go:99999999999999999999999:1: big",
    ":1:2: nofile", " :1:2: blank", "http://x:80: url", "go: ", "\x1b[31m", "", "\r", "pkg/ä.go:1:1: ü",
])


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_never_raises_text(text):
    errs = parse_go_errors(text, PLUGIN)
    assert isinstance(errs, list)
    for e in errs:
        assert isinstance(e.file, str) and isinstance(e.line, int) and isinstance(e.column, int)
        assert e.line >= 0 and e.column >= 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_fragments, st.text(max_size=30)), max_size=30), st.sampled_from([None, "pkg", "/x/y"]))
def test_fuzz_never_raises_structured(lines, build_dir):
    errs = parse_go_errors("\n".join(lines), PLUGIN, build_dir)
    for e in errs:
        assert 0 <= e.line < 2**31 and 0 <= e.column < 2**31
        assert e.message is not None and e.severity in ("error", "warning")


# --- install ------------------------------------------------------------------------------------------------------

def _write(path, data: bytes, mode=0o755):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def test_install_free_later_keeps_the_displaced_binary_until_discarded(tmp_path):
    """free_later: the binary that drops out (the older .prev) keeps a hidden name, so that freeing its blocks is left
    to discard_displaced(), off the reload's path; nothing else changes."""
    dest = tmp_path / "bin"
    for content in (b"one", b"two", b"three"):
        _write(tmp_path / "b", content)
        install(str(tmp_path / "b"), str(dest), free_later=True)
        (tmp_path / "b").unlink()
    assert (dest / "plugin").read_bytes() == b"three" and (dest / "plugin.prev").read_bytes() == b"two"
    [old] = [n for n in os.listdir(dest) if n not in ("plugin", "plugin.prev")]
    assert old.startswith(".plugin.prev.") and old.endswith(".old") and (dest / old).read_bytes() == b"one"
    discard_displaced(str(dest))
    assert sorted(os.listdir(dest)) == ["plugin", "plugin.prev"]
    discard_displaced(str(tmp_path / "nothing"))                # no dir: nothing to do, no error


def test_install_atomic_keeps_prev_and_rollback(tmp_path):
    dest = tmp_path / "home" / "bin"
    b1, b2 = tmp_path / "b1", tmp_path / "b2"
    _write(b1, b"one")
    _write(b2, b"two")
    path = install(str(b1), str(dest))
    assert path == str(dest / "plugin")
    assert (dest / "plugin").read_bytes() == b"one" and os.access(path, os.X_OK)
    assert not (dest / "plugin.prev").exists()
    install(str(b2), str(dest))
    assert (dest / "plugin").read_bytes() == b"two"
    assert (dest / "plugin.prev").read_bytes() == b"one"
    assert sorted(os.listdir(dest)) == ["plugin", "plugin.prev"]          # no temp files left
    assert rollback(str(dest))
    assert (dest / "plugin").read_bytes() == b"one" and (dest / "plugin.prev").read_bytes() == b"one"
    assert not rollback(str(tmp_path / "nothing"))


def test_install_over_a_running_binary_no_etxtbsy(tmp_path):
    dest = tmp_path / "bin"
    dest.mkdir()
    shutil.copy2("/bin/sleep", dest / "plugin")
    proc = subprocess.Popen([str(dest / "plugin"), "30"])
    try:
        src = tmp_path / "new"
        shutil.copy2("/bin/true", src)
        install(str(src), str(dest))                     # would be ETXTBSY if written in place
        assert (dest / "plugin").read_bytes() == src.read_bytes()
        assert proc.poll() is None                       # the running one is untouched
        assert os.path.samefile(f"/proc/{proc.pid}/exe", dest / "plugin.prev")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("err,words", [(errno.ENOSPC, "no space left on device"),
                                       (errno.EROFS, "read-only")])
def test_install_errors_keep_old_binary(tmp_path, monkeypatch, err, words):
    dest = tmp_path / "bin"
    old, new = tmp_path / "old", tmp_path / "new"
    _write(old, b"old")
    _write(new, b"new")
    install(str(old), str(dest))

    def boom(*a, **k):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(gobuild.shutil, "copyfileobj", boom)
    with pytest.raises(InstallError) as ei:
        install(str(new), str(dest))
    assert words in str(ei.value) and "previously installed binary is kept" in str(ei.value)
    assert (dest / "plugin").read_bytes() == b"old"
    assert sorted(os.listdir(dest)) == ["plugin"]         # temp file removed, no .prev touched


def test_the_default_build_strips_symbols_and_its_debug_variant_keeps_them():
    from omniworker.delve import DEBUG_GCFLAGS, debug_build
    assert gobuild.DEFAULT_BUILD_COMMAND[:3] == ["go", "build", "-ldflags=-s -w"]
    argv, env = debug_build(gobuild.DEFAULT_BUILD_COMMAND, {})
    assert argv == ["go", "build", f"-gcflags={DEBUG_GCFLAGS}", "-o", "build/bin/plugin", "./pkg"]   # DWARF kept
    assert env["OMNI_DEBUG"] == "1"


@pytest.mark.parametrize("command", [None, [], "go build -o out ./pkg"])
def test_a_debug_builder_runs_the_debug_variant_of_its_command(command):
    """Default command or the user's: in debug mode the Builder runs it with the debug flags and without -s -w."""
    from doubles import context
    from omniworker.delve import DEBUG_GCFLAGS
    ctx, _ = context(build={} if command is None else {"command": command})
    plain, debug = gobuild.Builder(ctx).command, gobuild.Builder(ctx, debug=True).command
    assert f"-gcflags={DEBUG_GCFLAGS}" in debug and gobuild.STRIP_LDFLAGS not in debug
    assert f"-gcflags={DEBUG_GCFLAGS}" not in plain
    assert [a for a in debug if a != f"-gcflags={DEBUG_GCFLAGS}"] == [a for a in plain if a != gobuild.STRIP_LDFLAGS]


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.mark.parametrize("when", ["spawning", "reaping"])
def test_a_build_cancelled_again_while_being_killed_is_gone_when_build_returns(tmp_path, monkeypatch, when):
    """Cancelled, then cancelled again (a second save) while the build is still being spawned or already being
    killed: build() returns only once every process of the build is dead, the one that left its process group
    (setsid) included, and counts one cancelled build."""
    import asyncio
    import time

    from omnibroker import protocol
    from omniworker.children import marked
    from omniworker.context import NullSink, PluginContext
    from support.waits import wait_event
    monkeypatch.setenv("OMNIVIEW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "plug").mkdir()
    sink = NullSink()
    ctx = PluginContext(protocol.PluginSpec(id="c", path=str(tmp_path / "plug"), settings={
        "build": {"command": ["sh", "-c", "setsid sleep 60 & sleep 60 & wait"]}}), sink)
    builder = gobuild.Builder(ctx)

    async def scenario() -> None:
        task = asyncio.create_task(builder.build())
        deadline = time.monotonic() + 10
        if when == "spawning":
            await wait_event(sink, lambda t, p: t == protocol.LOG and "$ sh" in p[0]["message"], 10)
            task.cancel()                                    # while it awaits the spawn ...
            await asyncio.sleep(0)                           # (one turn of the loop: the task takes it)
            task.cancel()                                    # ... and again while it awaits the spawn to kill it
        else:
            while len(marked(ctx.children.marker)) < 3:      # bounded poll: sh and its two sleeps are running
                assert time.monotonic() < deadline, "the build never started"
                await asyncio.sleep(0.01)
            leader = builder.pid
            task.cancel()
            while _running(leader):                          # bounded poll: the kill has begun (sh is dead) ...
                assert time.monotonic() < deadline, "the build was not killed"
                await asyncio.sleep(0.001)
            task.cancel()                                    # ... and a second save comes while it is reaped
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
        assert marked(ctx.children.marker) == []
        assert builder.cancelled == 1

    asyncio.run(scenario())


def test_install_links_when_asked_and_copies_across_file_systems(tmp_path):
    dest = tmp_path / "bin"
    built = tmp_path / "built"
    _write(built, b"one")
    install(str(built), str(dest), link=True)
    assert os.path.samefile(built, dest / "plugin")                       # no copy
    assert sorted(os.listdir(dest)) == ["plugin"]
    install(str(built), str(dest), link=True)                             # a no-op build: the same file again
    assert os.path.samefile(built, dest / "plugin")
    assert sorted(os.listdir(dest)) == ["plugin", "plugin.prev"]          # no temp name left
    os.unlink(dest / "plugin.prev")
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's tmp dir")
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        other = shm / "built"
        _write(other, b"two")
        install(str(other), str(dest), link=True)                         # EXDEV: a copy
        assert (dest / "plugin").read_bytes() == b"two" and not os.path.samefile(other, dest / "plugin")
        assert (dest / "plugin.prev").read_bytes() == b"one"
        assert sorted(os.listdir(dest)) == ["plugin", "plugin.prev"]
    finally:
        shutil.rmtree(shm)


def test_only_go_build_outputs_are_linked():
    from doubles import context
    assert gobuild.Builder(context()[0]).replaces_output                  # the default command
    for command, linked in ((["/usr/lib/go-1.19/bin/go", "build", "-o", "x", "."], True),
                            (["make", "plugin"], False), (["sh", "-c", "go build -o x ."], False),
                            (["go", "run", "./gen"], False)):
        ctx, _ = context(build={"command": command})
        assert gobuild.Builder(ctx).replaces_output is linked, command
