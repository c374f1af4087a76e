"""Go builds for the managed Go path: run the build command, stream its output, parse its errors, install the binary.

- `parse_go_errors(output, plugin_dir, build_dir=None)` turns the Go toolchain's output into BuildErrors.
  File paths: RELATIVE TO THE PLUGIN DIR (posix separators, e.g. "pkg/greeting.go") when the file lies inside the
  plugin dir, ABSOLUTE otherwise (a dependency in GOPATH, GOROOT); positionless errors (go.mod, linker, "cannot find
  package" without a position, "too many errors") have file "" and line/column 0. So `os.path.join(plugin_dir, file)`
  always resolves. Relative paths in the output are taken relative to `build_dir` (the build's cwd, default the plugin
  dir), which is what the go tool prints them relative to.
- `Builder(ctx)` runs `[build] command` (default `go build -ldflags="-s -w" -o build/bin/plugin ./pkg`) in `[build]
  dir` (relative to the plugin dir) with `os.environ` + `GOGC=400` (unless set) + `[build] env`, inside a
  broker-wide build slot; lines are streamed as log events (source go-build; stdout -> info; stderr -> error, except
  go's progress lines "go: downloading/finding..." -> info: the go tool writes its errors to stderr). Cancellable:
  cancelling the awaiting task kills the build's process group (go, compile, link, asm, cgo) at once and returns
  once every process of it is gone (a second cancellation meanwhile does not cut that wait short), counting the CPU
  time the build had used in `cancelled_cpu_s`; the go tool's WORK dir is put under a GOTMPDIR of ours that is
  removed afterwards, so a killed build leaves no /tmp/go-build* behind. A build running longer than `[build]
  timeout_s` (default 600) is killed the same way and fails with "build timed out after N s": a hung build never
  holds its broker-wide slot for more than that.
- `install(binary, dest_dir, link=...)` puts the binary atomically at `<dest_dir>/plugin` (a new name in the same dir,
  fsync, rename) and keeps the previous binary as `plugin.prev` (hard link); `rollback(dest_dir)` puts `plugin.prev`
  back. Both remove the installed binary's build stamp (`plugin.stamp`, see buildstamp.py) first: a stamp only ever
  describes the binary GoPath stamped right after installing it. The new name is a hard link to the build output
  when `link` is true and both are on one file system (`Builder.replaces_output`: `go build` never writes into an
  existing output file, it renames a new one over it or unlinks it first, so the installed inode is never written
  again); otherwise a copy. The link saves the copy: 4-7 ms for the example's 8.5 MB binary here.
"""
from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field

from omnibroker.protocol import BuildError

from .buildstamp import remove_stamp
from .children import Child
from .context import PluginContext, strip_ansi

# no symbol table, no DWARF: the link step of a rebuild after a one-line edit is ~0.19 s shorter (docs/performance.md);
# delve.debug_build drops it again (a debugger needs the DWARF)
STRIP_LDFLAGS = "-ldflags=-s -w"
# the Go toolchain's own garbage collector, in the build's processes (go, compile, link) unless GOGC is set in the
# environment or `[build] env`: collecting at 5x the live heap instead of 2x makes a rebuild of the example 7-10 %
# shorter and 9-12 % cheaper in CPU, for ~10 % more peak memory (docs/performance.md, "The toolchain's collector")
BUILD_GOGC = "400"
DEFAULT_BUILD_COMMAND = ["go", "build", STRIP_LDFLAGS, "-o", "build/bin/plugin", "./pkg"]
DEFAULT_OUTPUT = "build/bin/plugin"
BINARY_NAME = "plugin"
PREV_SUFFIX = ".prev"
OLD_SUFFIX = ".old"        # a displaced .prev waiting for discard_displaced()

# ----------------------------------------------------------------------------------------------------------------
# Parsing

# file:line:col: message     (the file part has no colon and does not start with a blank)
_POS3 = re.compile(r"^(?P<file>[^\s:][^:]*?):(?P<line>\d+):(?P<col>\d+):\s?(?P<msg>.*)$")
# file:line: message
_POS2 = re.compile(r"^(?P<file>[^\s:][^:]*?):(?P<line>\d+):\s?(?P<msg>.*)$")
# tool prefixes that may precede a position ("vet: pkg/x.go:1:2: ...")
_TOOL_PREFIX = re.compile(r"^(?:vet|gofmt|go vet|compile|asm|cgo):\s+")
_PROGRESS = re.compile(r"^go: (?:downloading|finding|extracting|found|added|upgraded|creating|to add)\b")
# "warning: ..." after a position (cgo's C compiler), or after a tool name ("ld: warning: ...", "# warning: ...")
_WARNING = re.compile(r"^warning:\s*", re.IGNORECASE)
_TOOL_WARNING = re.compile(r"^(?:[\w./+-]+:\s+)?warning:", re.IGNORECASE)
_TOO_MANY = "too many errors"
_MAX_FILE_LEN = 4096


def _looks_like_file(path: str) -> bool:
    """A position's file part: a path with an extension or a slash, not a URL or a Go symbol."""
    if not path or len(path) > _MAX_FILE_LEN or "://" in path or path.startswith("go "):
        return False
    if "/" in path or os.sep in path:
        return True
    base = path.rsplit(".", 1)
    return len(base) == 2 and base[1] in {"go", "s", "c", "h", "cc", "cpp", "mod", "sum", "work", "proto", "syso"}


def _resolve(path: str, plugin_dir: str, build_dir: str) -> str:
    try:
        full = os.path.normpath(path if os.path.isabs(path) else os.path.join(build_dir, path))
        rel = os.path.relpath(full, plugin_dir)
    except ValueError:
        return path
    if rel == os.curdir or rel.startswith(os.pardir + os.sep) or rel == os.pardir:
        return full
    return rel.replace(os.sep, "/")


def parse_go_errors(output: str, plugin_dir: str, build_dir: str | None = None) -> list[BuildError]:
    """Parse the go tool's output into BuildErrors (never raises; see the module docstring for the path rule).

    Handles `file:line:col: msg`, `file:line: msg`, tab-indented continuation lines (appended to the previous error's
    message), `# package` headers (skipped), "too many errors" (one positionless entry), `go: ...` errors (go.mod,
    module lookup), linker errors and anything else unpositioned (file "", line 0).
    Severity: "warning" for diagnostics that do not fail a build by themselves: `file:line:col: warning: msg` (the C
    compiler under cgo; the "warning:" is dropped from the message), `ld: warning: ...`, and vet's diagnostics
    (`vet: file:line:col: msg`); "error" for everything else.
    """
    errors: list[BuildError] = []
    try:
        plugin_dir = os.path.abspath(plugin_dir or ".")
        base = os.path.abspath(os.path.join(plugin_dir, build_dir)) if build_dir else plugin_dir
        pending_header: str | None = None      # e.g. "go: errors parsing go.mod:" (its detail follows)
        last: BuildError | None = None
        too_many = False
        for raw in (output or "").splitlines():
            line = strip_ansi(raw).rstrip()
            if not line.strip():
                continue
            if line[0] in " \t":                       # continuation of the previous message
                text = line.strip()
                if last is not None:
                    last.message = f"{last.message}\n\t{text}"
                elif pending_header is not None:
                    pending_header = f"{pending_header}\n\t{text}"
                else:
                    last = BuildError(message=text)
                    errors.append(last)
                continue
            if line.startswith("# "):                  # "# _/tmp/x/pkg" / "# command-line-arguments"
                last = None
                continue
            if _PROGRESS.match(line):
                continue
            body = _TOOL_PREFIX.sub("", line)
            m = _POS3.match(body) or _POS2.match(body)
            if m and _looks_like_file(m.group("file")):
                msg = m.group("msg").strip()
                severity = "warning" if line.startswith("vet:") or _WARNING.match(msg) else "error"
                msg = _WARNING.sub("", msg, count=1)
                if msg == _TOO_MANY:
                    too_many = True
                    last = None
                    continue
                # "go: errors parsing go.mod:" + "/x/go.mod:4: unknown directive": the detail says it all
                pending_header = None
                try:
                    line_no = int(m.group("line"))
                    col = int(m.groupdict().get("col") or 0)
                except (TypeError, ValueError, OverflowError):
                    line_no, col = 0, 0
                last = BuildError(file=_resolve(m.group("file"), plugin_dir, base), line=min(line_no, 2**31 - 1),
                                  column=min(col, 2**31 - 1), message=msg or line, severity=severity)
                errors.append(last)
                continue
            if line.strip() == _TOO_MANY:
                too_many = True
                last = None
                continue
            if pending_header is not None:             # the header had no positioned detail: keep it as an error
                errors.append(BuildError(message=pending_header))
                pending_header = None
            if line.startswith("go: ") and line.endswith(":"):
                pending_header = line
                last = None
                continue
            last = BuildError(message=line.strip(),
                              severity="warning" if _TOOL_WARNING.match(line.strip()) else "error")
            errors.append(last)
        if pending_header is not None:
            errors.append(BuildError(message=pending_header))
        if too_many:
            errors.append(BuildError(message="too many errors: the compiler stopped early; "
                                             "fix the errors above and build again to see the rest"))
    except Exception as e:     # the parser must never break a build report
        errors.append(BuildError(message=f"(could not parse the go output: {e})"))
    return errors


# ----------------------------------------------------------------------------------------------------------------
# Building

KILL_REAP = 10.0        # s a killed build gets to be gone (Child.wait: the group, escapees, the pipes)


async def _wait_through_cancel(aw) -> bool:
    """Await `aw` to its end even if the awaiting task is cancelled meanwhile (once or more). True when it was: the
    caller then goes on being cancelled."""
    fut = asyncio.ensure_future(aw)
    cancelled = False
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            if fut.cancelled():
                break
            cancelled = True
    return cancelled


@dataclass
class BuildResult:
    ok: bool
    returncode: int | None = None
    duration: float = 0.0          # seconds the build command ran (slot wait excluded)
    queued: float = 0.0            # seconds spent waiting for a broker-wide build slot
    output: str = ""               # stdout + stderr lines, in arrival order
    errors: list[BuildError] = field(default_factory=list)      # a successful build's: its warnings
    binary: str = ""               # absolute path of the produced binary
    started: float = 0.0           # loop.time() when the command was spawned
    finished: float = 0.0          # loop.time() when it ended
    timed_out: float = 0.0         # the `[build] timeout_s` that killed it, 0 when it ended by itself

    def summary(self) -> str:
        if self.ok:
            return f"build succeeded in {self.duration:.2f}s"
        if self.timed_out:
            return self.errors[0].message
        first = next((e for e in self.errors), None)
        if first is None:
            return f"build failed (exit code {self.returncode})"
        where = f"{first.file}:{first.line}:{first.column}: " if first.file else ""
        more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"build failed: {where}{first.message.splitlines()[0]}{more}"


def _output_from_command(command: list[str]) -> str | None:
    for i, arg in enumerate(command):
        if arg == "-o" and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith("-o="):
            return arg[3:]
    return None


def _stderr_level(line: str) -> str:
    return "info" if _PROGRESS.match(line) else "error"


class Builder:
    """Runs the plugin's build command. One build at a time per Builder."""

    def __init__(self, ctx: PluginContext, *, debug: bool = False):
        self.ctx = ctx
        self.debug = debug          # debug mode: delve.debug_build's flags and environment
        self._child: Child | None = None
        self.last: BuildResult | None = None
        self.cancelled = 0              # builds killed because they were cancelled
        self.cancelled_cpu_s = 0.0      # CPU-seconds those builds had used when they were killed

    # --- configuration (`[build]`, typed in omnibroker/settings.py) ----------------------------------------------
    @property
    def command(self) -> list[str]:
        cmd = self.ctx.settings.build.command
        if isinstance(cmd, str):
            cmd = cmd.split()
        cmd = [str(a) for a in cmd or ()] or list(DEFAULT_BUILD_COMMAND)
        return self._debug_build(cmd, {})[0] if self.debug else cmd

    @property
    def cwd(self) -> str:
        return os.path.normpath(os.path.join(self.ctx.dir, self.ctx.settings.build.dir))

    @property
    def output(self) -> str:
        out = self.ctx.settings.build.output or _output_from_command(self.command) or DEFAULT_OUTPUT
        return os.path.normpath(os.path.join(self.cwd, out))

    @property
    def replaces_output(self) -> bool:
        """Does the build command put a new file at its output rather than write into the one there? True for
        `go build` (cmd/go's moveOrCopyFile: a rename, or a copy after removing the old file), so `install` may
        hard-link the output; unknown for any other command (a Makefile's `cp` writes in place)."""
        argv = self.command
        return len(argv) >= 2 and os.path.basename(argv[0]) == "go" and argv[1] == "build"

    @property
    def timeout_s(self) -> float:
        return self.ctx.settings.build.timeout_s

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("GOGC", BUILD_GOGC)
        for k, v in self.ctx.settings.build.env.items():
            env[k] = os.path.expandvars(str(v))
        return self._debug_build([], env)[1] if self.debug else env

    @staticmethod
    def _debug_build(command: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        from .delve import debug_build     # debug mode only
        return debug_build(command, env)

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    @property
    def pid(self) -> int:
        return self._child.pid if self._child is not None else 0

    async def _kill(self, child: Child, *, cancelled: bool) -> bool:
        """Kill the build's process group and wait until every process of it is dead (at most KILL_REAP s), even
        when cancelled meanwhile: the next build never runs beside the remains of this one. A cancelled build's CPU
        time so far is counted in `cancelled_cpu_s` and logged. True when the task was cancelled while waiting."""
        cpu = child.cpu_seconds() if cancelled else 0.0
        child.signal_group(signal.SIGKILL)
        interrupted = await _wait_through_cancel(asyncio.wait({asyncio.ensure_future(child.wait())},
                                                              timeout=KILL_REAP))
        if cancelled:
            self.cancelled += 1
            self.cancelled_cpu_s += cpu
            self.ctx.log("go-build", "info", f"build cancelled after {time.monotonic() - child.started:.2f} s "
                                             f"({cpu:.2f} CPU-s; {self.cancelled_cpu_s:.2f} CPU-s in "
                                             f"{self.cancelled} cancelled builds so far)")
        return interrupted

    async def build(self) -> BuildResult:
        """Run the build command inside a build slot. Cancelling the awaiting task kills the build and re-raises."""
        loop = asyncio.get_running_loop()
        t_queue = loop.time()
        async with self.ctx.build_slot():
            return await self._run(loop, loop.time() - t_queue)

    async def _run(self, loop: asyncio.AbstractEventLoop, queued: float) -> BuildResult:
        ctx = self.ctx
        argv, cwd, output = self.command, self.cwd, self.output
        env = self.env()
        timeout = self.timeout_s
        lines: list[str] = []

        def on_line(stream: str, line: str) -> None:
            lines.append(line)
            ctx.log("go-build", "info" if stream == "stdout" else _stderr_level(line), line)

        if not os.path.isdir(ctx.dir) or not os.path.isdir(cwd):
            # the plugin dir was deleted or moved: say so (and do not re-create it by making the output dir)
            where = ctx.dir if not os.path.isdir(ctx.dir) else cwd
            msg = (f"the {'plugin' if where == ctx.dir else 'build'} directory {where} does not exist any more "
                   f"(deleted or moved?); nothing was built, the installed plugin binary is kept")
            ctx.log("go-build", "error", msg)
            return BuildResult(ok=False, errors=[BuildError(file=where, message=msg)], binary=output, queued=queued)
        try:
            os.makedirs(os.path.dirname(output), exist_ok=True)
        except OSError as e:
            msg = f"cannot create the build output dir {os.path.dirname(output)}: {e.strerror or e}"
            ctx.log("go-build", "error", msg)
            return BuildResult(ok=False, errors=[BuildError(message=msg)], binary=output, queued=queued)
        own_tmp = None
        if "GOTMPDIR" not in env:
            try:
                base = os.path.join(ctx.home, "tmp")
                os.makedirs(base, exist_ok=True)
                own_tmp = tempfile.mkdtemp(prefix="go-build-", dir=base)
                env["GOTMPDIR"] = own_tmp
            except OSError:
                own_tmp = None
        ctx.log("go-build", "info", f"$ {' '.join(argv)}  (in {cwd})")
        started = loop.time()
        try:
            spawn = asyncio.ensure_future(Child.spawn("go-build", argv, cwd=cwd, env=env, on_line=on_line,
                                                      registry=ctx.children, tail=200))
            try:
                child = await asyncio.shield(spawn)
            except asyncio.CancelledError:
                # the process may exist already: kill it before going away
                await _wait_through_cancel(asyncio.wait({spawn}))
                if not spawn.cancelled() and spawn.exception() is None:
                    await self._kill(spawn.result(), cancelled=True)
                raise
            except OSError as e:
                msg = f"cannot run the build command {argv[0]!r}: {e.strerror or e}"
                if isinstance(e, FileNotFoundError) and os.sep not in argv[0]:
                    msg = (f"cannot run the build command: {argv[0]!r} was not found on PATH "
                           f"({env.get('PATH', '')!r}); install the Go toolchain or fix PATH in "
                           f"[plugins.{ctx.id}.build] env")
                ctx.log("go-build", "error", msg)
                return BuildResult(ok=False, errors=[BuildError(message=msg)], binary=output, queued=queued,
                                   started=started, finished=loop.time())
            self._child = child
            timed_out, interrupted = 0.0, False
            try:
                rc = await asyncio.wait_for(child.wait(), timeout)     # Child.wait is shielded: the child lives
            except asyncio.TimeoutError:
                timed_out = timeout
                interrupted = await self._kill(child, cancelled=False)
                rc = child.returncode
            except asyncio.CancelledError:
                await self._kill(child, cancelled=True)
                raise
            finally:
                self._child = None
            if interrupted:
                raise asyncio.CancelledError()      # cancelled while the timed-out build was being killed
        finally:
            if own_tmp:
                shutil.rmtree(own_tmp, ignore_errors=True)
        finished = loop.time()
        text = "\n".join(lines)
        if timed_out:
            msg = (f"build timed out after {timed_out:g} s ([build] timeout_s); its process group was killed and "
                   f"the installed plugin binary is kept")
            res = BuildResult(ok=False, timed_out=timed_out, returncode=rc, duration=finished - started,
                              queued=queued, output=text, errors=[BuildError(message=msg)], binary=output,
                              started=started, finished=finished)
        elif rc == 0 and os.path.isfile(output):
            # a successful build may still have printed warnings (cgo's C compiler, the linker): keep those
            warnings = [e for e in parse_go_errors(text, ctx.dir, cwd) if e.severity == "warning"] \
                if "warning" in text.lower() else []
            res = BuildResult(ok=True, returncode=0, duration=finished - started, queued=queued, output=text,
                              errors=warnings, binary=output, started=started, finished=finished)
        else:
            errs = parse_go_errors(text, ctx.dir, cwd)
            if rc is not None and rc < 0:
                # killed by a signal we did not send (OOM killer, kill by hand): not a compile error
                try:
                    name = signal.Signals(-rc).name
                except ValueError:
                    name = f"signal {-rc}"
                errs.insert(0, BuildError(message=f"the build was killed by {name} (not by omni: out of memory, or "
                                                  f"killed by hand?); the installed plugin binary is kept; save again "
                                                  f"or run `omnictl rebuild {ctx.id}` to retry"))
            if rc == 0:
                errs.append(BuildError(message=f"the build command succeeded but produced no binary at {output}"))
            elif not errs:
                errs = [BuildError(message=f"the build command exited with code {rc} and printed nothing")]
            res = BuildResult(ok=False, returncode=rc, duration=finished - started, queued=queued, output=text,
                              errors=errs, binary=output, started=started, finished=finished)
        self.last = res
        return res


# ----------------------------------------------------------------------------------------------------------------
# Installing

class InstallError(Exception):
    """The binary could not be installed; the previously installed one is untouched."""


_ERRNO_WORDS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def install(binary: str, dest_dir: str, name: str = BINARY_NAME, *, link: bool = False, durable: bool = True,
            free_later: bool = False) -> str:
    """Install `binary` as `<dest_dir>/<name>` atomically; keep the previous one as `<name>.prev`. Returns the path.

    The new binary arrives under a new name in dest_dir (a hard link to `binary` when `link` is true and the file
    systems allow it, else a copy; fsync) renamed over the old one, so a running plugin is never written to (no
    ETXTBSY) and a reader sees either the old or the new binary. `link` is for outputs the build never writes into
    again (see the module's docstring). `durable=False` leaves out the fsyncs (of the file and of dest_dir: ~8 ms for
    the example's freshly linked binary): the caller makes it durable later (`make_durable`), before anything relies
    on it surviving a crash. On any error (ENOSPC, EROFS, ...) the temp name is removed, the installed binary is left
    as it was, and InstallError explains it in words. Either way the binary's build stamp is removed (the caller
    writes a new one after a successful install). `free_later=True` keeps the binary that drops out (the older
    `.prev`) under a hidden `.old` name, because removing its last name frees its blocks at once (~5 ms for the
    example's binary on ext4): `discard_displaced(dest_dir)` removes it afterwards, off the reload's path.
    """
    dest = os.path.join(dest_dir, name)
    prev = dest + PREV_SUFFIX
    tmp = None
    remove_stamp(dest)
    try:
        os.makedirs(dest_dir, exist_ok=True)
        if link:
            tmp = _link_into(binary, dest_dir, name, durable)
        if tmp is None:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=dest_dir)
            with open(binary, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fchmod(dst.fileno(), 0o755)
                if durable:
                    os.fsync(dst.fileno())
        if os.path.lexists(dest):
            # plugin.prev <- the current binary, by hard link (atomic replace of any older .prev)
            link_tmp = f"{prev}.{os.getpid()}.tmp"
            try:
                if os.path.lexists(link_tmp):
                    os.unlink(link_tmp)
                os.link(dest, link_tmp)
                if free_later and os.path.lexists(prev):
                    os.link(prev, os.path.join(dest_dir, f".{name}{PREV_SUFFIX}.{time.monotonic_ns()}{OLD_SUFFIX}"))
                os.replace(link_tmp, prev)
            except OSError:
                try:
                    os.unlink(link_tmp)
                except OSError:
                    pass
                shutil.copy2(dest, prev)
        os.replace(tmp, dest)
        if os.path.lexists(tmp):
            # both names were links to one inode (a `go build` with nothing to do leaves its output as it was, and
            # that output is what was installed): rename() did nothing, and the temp name is left to remove
            os.unlink(tmp)
        tmp = None
        if durable:
            _fsync_dir(dest_dir)
        return dest
    except OSError as e:
        words = _ERRNO_WORDS.get(e.errno or 0, e.strerror or str(e))
        raise InstallError(f"cannot install the new plugin binary into {dest_dir}: {words}; "
                           f"the previously installed binary is kept") from e
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def discard_displaced(dest_dir: str, name: str = BINARY_NAME) -> None:
    """Remove the binaries `install(free_later=True)` kept in dest_dir (and any a crash left there)."""
    start, end = f".{name}{PREV_SUFFIX}.", OLD_SUFFIX
    try:
        names = os.listdir(dest_dir)
    except OSError:
        return
    for entry in names:
        if entry.startswith(start) and entry.endswith(end):
            try:
                os.unlink(os.path.join(dest_dir, entry))
            except OSError:
                pass


def make_durable(path: str) -> None:
    """fsync a file and its directory: what install(durable=False) left out. Raises OSError."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(os.path.dirname(path))


def _link_into(binary: str, dest_dir: str, name: str, durable: bool) -> str | None:
    """A new hard link to `binary` in dest_dir, executable (and on disk when `durable`); None when the file systems
    do not allow one (EXDEV, EPERM on some mounts, ...): the caller copies."""
    tmp = os.path.join(dest_dir, f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        os.link(binary, tmp)
    except OSError:
        return None
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, 0o755)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        os.unlink(tmp)
        raise
    return tmp


def rollback(dest_dir: str, name: str = BINARY_NAME) -> bool:
    """Put `<name>.prev` back as `<name>` (atomically; .prev is kept). False when there is no previous binary.
    The build stamp is removed in any case (it described the binary being replaced; the one put back has none)."""
    dest = os.path.join(dest_dir, name)
    prev = dest + PREV_SUFFIX
    remove_stamp(dest)
    if not os.path.isfile(prev):
        return False
    tmp = f"{dest}.{os.getpid()}.rollback"
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        try:
            os.link(prev, tmp)
        except OSError:
            shutil.copy2(prev, tmp)
        os.replace(tmp, dest)
        _fsync_dir(dest_dir)
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


__all__ = ["BuildResult", "Builder", "InstallError", "install", "rollback", "parse_go_errors",
                          "DEFAULT_BUILD_COMMAND", "STRIP_LDFLAGS", "same_file"]
