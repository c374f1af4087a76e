"""Watch a plugin's Go sources (watchdog, inotify) and report changes once they are quiet (a trailing debounce).

- Globs (relative to the plugin dir, `**` = any number of directories): `[go] watch`, default
  `["pkg/**/*.go", "go.mod", "go.sum"]`. Only the directories the globs need are watched (`pkg/` recursively, the
  plugin dir itself non-recursively), so `ui/node_modules` costs no inotify watches.
- Ignored: `.git`, `node_modules`, build output (`build/`, `dist/`, `bin/` and the build command's output dir),
  editor swap/backup/temp files (`*.swp`, `*~`, `.#x`, `#x#`, vim's `4913`, `*.tmp`, JetBrains `___jb_tmp___`, ...)
  and files the go tool itself ignores (names starting with `.` or `_`); plus `[go] ignore` globs.
- Editors that save by writing a temp file and renaming it trigger a change: moved events are judged by their
  destination (and their source).
- A quiet window across ALL files (`[go] debounce_ms`, default 20; a trailing debounce): one save's burst of events,
  in several files too, gives one `on_change(paths)` call, `debounce` after the last event. 20 ms is above every gap
  measured inside one save's burst (an editor's atomic or backup save, gofmt/goimports -w, a save then `gofmt -w`),
  loaded or not, and inside the multi-file ones (`gofmt -r` over 30 files, `git checkout` of 30 files) but once on
  a loaded machine (docs/performance.md, bench/bench_bursts.py).
  `on_event(path)` is called for every relevant event right away: GoPath cancels a build the change makes stale, so
  a burst with a longer gap costs a cancelled build, never a stale install.
- Events are handed from watchdog's thread to the loop with `loop.call_soon_threadsafe`; callbacks run on the loop.
- Errors in words: the inotify watch/instance limit (names the sysctl), a missing or vanished directory.
- `source_files()` / `snapshot()` list the relevant files that exist now with the same filtering (GoPath's build
  stamp is computed from them, so the stamp and the watch never disagree on what a source is).
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import inspect
import os
import re
from typing import Any, Callable, Iterable

from watchdog.events import (DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent, FileDeletedEvent,
                             FileModifiedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler,
                             DirCreatedEvent)
from watchdog.observers.inotify import InotifyObserver

from .context import PluginContext
from .runtime import Background

DEFAULT_WATCH = ["pkg/**/*.go", "go.mod", "go.sum"]
IGNORED_DIRS = frozenset({"node_modules", "__pycache__"})   # anywhere (and every dir whose name starts with ".")
IGNORED_TOP_DIRS = frozenset({"build", "dist", "bin", "ui"})  # build output / frontend, at the plugin dir's top
_TEMP_SUFFIXES = (".swp", ".swo", ".swn", ".swx", ".swpx", "~", ".tmp", ".temp", ".bak", ".orig", ".rej",
                  ".kate-swp", "___jb_tmp___", "___jb_old___", ".crswap")
_TEMP_PREFIXES = (".#", ".goutputstream-", ".~lock.")
_EVENT_TYPES = [FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent,
                DirMovedEvent, DirDeletedEvent, DirCreatedEvent]


class WatchError(Exception):
    """The watcher could not start (or stopped working); the message says why and what to do."""


_IN_ATTRIB = 0x00000004
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:     # pragma: no cover - not Linux
    _libc = None


def inotify_room(path: str) -> OSError | None:
    """Add (and drop) one watch in a fresh inotify instance; OSError(ENOSPC) when the per-user watch limit is reached.

    watchdog skips, silently, the subdirectories of a recursive watch it could not add (it only raises for the watch's
    own root), so after scheduling we probe: a full table means some of our directories may not be watched."""
    if _libc is None:
        return None
    fd = _libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        return None         # no instance left to probe with; the watches already made stand
    try:
        if _libc.inotify_add_watch(fd, os.fsencode(path), _IN_ATTRIB) < 0 and ctypes.get_errno() == errno.ENOSPC:
            return OSError(errno.ENOSPC, "inotify watch limit reached")
        return None
    finally:
        os.close(fd)


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Translate a path glob (`*`, `?`, `[...]`, `**` for any number of directories) to a regex on posix paths."""
    pat = pattern.strip().replace(os.sep, "/")
    while pat.startswith("./"):
        pat = pat[2:]
    i, n, out = 0, len(pat), []
    while i < n:
        c = pat[i]
        if c == "*":
            if pat.startswith("**", i):
                j = i + 2
                at_start = i == 0 or pat[i - 1] == "/"
                if at_start and j < n and pat[j] == "/":
                    out.append("(?:[^/]+/)*")          # "**/" : zero or more directories
                    i = j + 1
                    continue
                if at_start and j == n:
                    out.append(".*")                   # trailing "**": everything below
                    i = j
                    continue
                out.append("[^/]*")
                i = j
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pat.find("]", i + 2 if i + 1 < n and pat[i + 1] in "!^" else i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pat[i + 1:j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$")


def watch_roots(patterns: Iterable[str]) -> list[tuple[str, bool]]:
    """The (relative dir, recursive) pairs the globs need: the static prefix of each glob."""
    roots: dict[str, bool] = {}
    for pattern in patterns:
        parts = [p for p in pattern.replace(os.sep, "/").split("/") if p not in ("", ".")]
        static: list[str] = []
        for k, part in enumerate(parts):
            if any(ch in part for ch in "*?["):
                rest = parts[k:]
                recursive = len(rest) > 1 or "**" in part
                break
            static.append(part)
        else:
            static, recursive = parts[:-1], False    # a plain file name: watch its directory
        root = "/".join(static)
        roots[root] = roots.get(root, False) or recursive
    # drop watches already covered by a recursive ancestor
    result = []
    for root, rec in sorted(roots.items()):
        covered = any(r != root and rrec and (r == "" or root.startswith(r + "/")) for r, rrec in roots.items())
        if not covered:
            result.append((root, rec))
    return result


def is_temp_name(name: str) -> bool:
    """Editor swap/backup/temp files and names the go tool ignores."""
    if not name:
        return True
    if name.endswith(_TEMP_SUFFIXES) or name.startswith(_TEMP_PREFIXES):
        return True
    if name.startswith("#") and name.endswith("#"):                   # emacs autosave
        return True
    if name.isdigit():                                              # vim's "4913" write test (and friends)
        return True
    if name.startswith((".", "_")):                                 # go ignores these, editors use them for temps
        return True
    return bool(re.search(r"\.(?:sw[a-p]|tmp\d+)$", name))


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: "GoWatcher"):
        super().__init__()
        self.w = watcher

    def dispatch(self, event: FileSystemEvent) -> None:      # runs on watchdog's thread
        try:
            self.w._from_thread(event)
        except Exception:       # never kill the observer thread
            pass


class GoWatcher:
    """Debounced watcher. `start()` raises WatchError; `stop()` is idempotent. Callbacks run on the loop."""

    def __init__(self, ctx: PluginContext, on_change: Callable[[list[str]], Any], *,
                 on_event: Callable[[str], Any] | None = None, on_error: Callable[[str], Any] | None = None,
                 patterns: list[str] | None = None, debounce_ms: float | None = None,
                 ignore: list[str] | None = None, loop: asyncio.AbstractEventLoop | None = None):
        self.ctx = ctx
        self.root = os.path.abspath(ctx.dir)
        go = ctx.settings.go_settings
        self.patterns = list(patterns if patterns is not None else go.watch if go.watch is not None else DEFAULT_WATCH)
        self.debounce = (debounce_ms if debounce_ms is not None else go.debounce_ms) / 1000.0
        self._regexes = [glob_to_regex(p) for p in self.patterns]
        extra_ignores = list(ignore if ignore is not None else go.ignore)
        self._ignore_regexes = [glob_to_regex(p) for p in extra_ignores]
        self.on_change = on_change
        self.on_event = on_event
        self.on_error = on_error
        self.loop = loop
        self._observer: InotifyObserver | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pending: set[str] = set()
        self.first_event: float | None = None      # loop.time() of the first event of the current burst
        self.last_burst: tuple[float, float] | None = None   # (first event, fire) of the last delivered burst
        self._background = Background()
        self._running = False
        self.roots: list[tuple[str, bool]] = watch_roots(self.patterns)
        self._watched_abs: set[str] = set()
        self._watches: dict[str, Any] = {}
        self.fired = 0

    # --- filtering (pure; unit-testable) ---------------------------------------------------------------------------
    def relpath(self, path: str) -> str | None:
        if not path:
            return None
        try:
            rel = os.path.relpath(os.path.abspath(path), self.root)
        except ValueError:
            return None
        if rel == os.curdir or rel.startswith(os.pardir):
            return None
        return rel.replace(os.sep, "/")

    def is_ignored(self, rel: str, *, is_dir: bool = False) -> bool:
        parts = rel.split("/")
        dirs = parts if is_dir else parts[:-1]
        if any(p in IGNORED_DIRS or (p.startswith(".") and p not in (".", "..")) for p in dirs):
            return True
        if dirs and dirs[0] in IGNORED_TOP_DIRS:
            return True
        if not is_dir and is_temp_name(parts[-1]):
            return True
        return any(r.match(rel) for r in self._ignore_regexes)

    def matches(self, rel: str) -> bool:
        """Is this relative path (posix) a watched source file?"""
        return not self.is_ignored(rel) and any(r.match(rel) for r in self._regexes)

    def _dir_relevant(self, rel: str) -> bool:
        """A directory moved/deleted inside a recursively watched root (its .go files went with it)."""
        if self.is_ignored(rel, is_dir=True):
            return False
        return any(rec and (root == "" or rel == root or rel.startswith(root + "/")) for root, rec in self.roots)

    def source_files(self) -> list[str]:
        """The watched source files that exist now: relative posix paths, sorted; exactly those `matches()` accepts.

        Walks only the globs' roots (`self.roots`, as the watch does), never entering an ignored dir (`ui/`,
        `node_modules`, dot dirs, build output, `[go] ignore`); symlinked dirs are not followed. Blocking (a directory
        walk: ~1 ms for 200 files in 11 dirs with warm caches): call it off the loop."""
        found: set[str] = set()
        for rel_root, recursive in self.roots:
            if rel_root and self.is_ignored(rel_root, is_dir=True):
                continue
            stack = [(os.path.join(self.root, rel_root) if rel_root else self.root, rel_root)]
            while stack:
                path, rel = stack.pop()
                try:
                    it = os.scandir(path)
                except OSError:             # missing (no pkg/ yet), vanished or unreadable: nothing there
                    continue
                with it:
                    for entry in it:
                        child = f"{rel}/{entry.name}" if rel else entry.name
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                if recursive and not self.is_ignored(child, is_dir=True):
                                    stack.append((entry.path, child))
                            elif self.matches(child) and entry.is_file():
                                found.add(child)
                        except OSError:
                            continue
        return sorted(found)

    def snapshot(self) -> list[tuple[str, int, int, int, int]]:
        """(path, size, mtime_ns, ctime_ns, inode) of each of `source_files()`, sorted by path; a file that vanished
        meanwhile is left out (its deletion is a watch event anyway). Blocking: call it off the loop."""
        out = []
        for rel in self.source_files():
            try:
                st = os.stat(os.path.join(self.root, rel))
            except OSError:
                continue
            out.append((rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        return out

    def relevant(self, event: FileSystemEvent) -> str | None:
        """The relative path an event is about, if it should trigger a build (runs on watchdog's thread)."""
        kind = event.event_type
        if kind not in ("created", "modified", "moved", "deleted", "closed"):
            return None                              # opened / closed_no_write / attrib-only noise
        src = event.src_path if isinstance(event.src_path, str) else os.fsdecode(event.src_path)
        dest = getattr(event, "dest_path", "") or ""
        dest = dest if isinstance(dest, str) else os.fsdecode(dest)
        candidates = [dest, src] if kind == "moved" else [src]
        for path in candidates:
            rel = self.relpath(path)
            if rel is None:
                continue
            if event.is_directory:
                if kind in ("moved", "deleted") and self._dir_relevant(rel):
                    return rel + "/"
                continue
            if self.matches(rel):
                return rel
        return None

    # --- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        if self._running:
            return
        self.loop = self.loop or asyncio.get_running_loop()
        if not os.path.isdir(self.root):
            raise WatchError(f"cannot watch {self.root}: the directory does not exist")
        observer = InotifyObserver()
        handler = _Handler(self)
        self._watched_abs = set()
        self._watches = {}
        try:
            for rel, recursive in self.roots:
                path = os.path.join(self.root, rel) if rel else self.root
                if not os.path.isdir(path):
                    # e.g. no go.mod dir issue, or pkg/ missing: watch the nearest existing parent instead
                    while not os.path.isdir(path) and path != self.root:
                        path = os.path.dirname(path)
                    recursive = recursive and path != self.root
                path = os.path.abspath(path)
                if path in self._watches:
                    continue
                self._watches[path] = observer.schedule(handler, path, recursive=recursive,
                                                        event_filter=_EVENT_TYPES)
                self._watched_abs.add(path)
            if self.root not in self._watched_abs:
                # always see the root, so a re-created pkg/ or a deleted plugin dir is noticed
                self._watches[self.root] = observer.schedule(handler, self.root, recursive=False,
                                                             event_filter=_EVENT_TYPES)
                self._watched_abs.add(self.root)
            observer.start()
            full = inotify_room(self.root)
            if full is not None:
                raise full
        except OSError as e:
            try:
                observer.stop()
            except Exception:
                pass
            raise WatchError(self._explain(e)) from e
        self._observer = observer
        self._running = True
        self.ctx.log("go-watch", "info", f"watching {', '.join(self.patterns)} in {self.root} "
                                         f"(debounce {int(self.debounce * 1000)} ms)")

    def _explain(self, e: OSError) -> str:
        if e.errno == errno.ENOSPC:
            return (f"cannot watch {self.root}: the inotify watch limit is reached; raise it with "
                    f"`sudo sysctl fs.inotify.max_user_watches=524288` (see /proc/sys/fs/inotify/max_user_watches)")
        if e.errno == errno.EMFILE:
            return (f"cannot watch {self.root}: the inotify instance limit is reached; raise it with "
                    f"`sudo sysctl fs.inotify.max_user_instances=1024`")
        if e.errno == errno.ENOENT:
            return f"cannot watch {self.root}: the directory does not exist (any more)"
        return f"cannot watch {self.root}: {e.strerror or e}"

    async def stop(self) -> None:
        """Stop watching; a pending debounced change is dropped."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
        self.first_event = None
        obs, self._observer = self._observer, None
        if obs is not None:
            try:
                obs.stop()
            except Exception:
                pass
            await asyncio.to_thread(obs.join, 5.0)
        self._background.cancel()

    # --- events -------------------------------------------------------------------------------------------------
    def _from_thread(self, event: FileSystemEvent) -> None:
        loop = self.loop
        if loop is None or not self._running:
            return
        # the plugin dir (or a watched root) itself went away
        if event.is_directory and event.event_type in ("deleted", "moved"):
            src = os.path.abspath(os.fsdecode(event.src_path))
            if src in self._watched_abs or src == self.root:
                try:
                    loop.call_soon_threadsafe(self._gone, src)
                except RuntimeError:
                    pass
                return
        if event.is_directory and event.event_type == "created":
            src = os.path.abspath(os.fsdecode(event.src_path))
            if any(os.path.join(self.root, r) == src for r, rec in self.roots if r):
                try:
                    loop.call_soon_threadsafe(self._reappeared, src)
                except RuntimeError:
                    pass
            return
        rel = self.relevant(event)
        if rel is None:
            return
        try:
            loop.call_soon_threadsafe(self._on_fs_event, rel)
        except RuntimeError:      # loop closed
            pass

    def _gone(self, path: str) -> None:
        if not self._running or path not in self._watched_abs:
            return                                  # already reported (root watch and the dir's own watch)
        self._watched_abs.discard(path)
        old = self._watches.pop(path, None)
        if old is not None and self._observer is not None and path != self.root:
            try:
                self._observer.unschedule(old)
            except Exception:
                pass
        if path == self.root:
            msg = f"the plugin directory {self.root} disappeared: Go sources are no longer watched"
        else:
            msg = f"the watched directory {path} disappeared; it will be watched again if it is re-created"
            self._on_fs_event(self.relpath(path) or path)     # its sources are gone: that is a change too
        self.ctx.log("go-watch", "error", msg)
        if self.on_error is not None:
            self._call(self.on_error, msg)
        if path != self.root and not os.path.isdir(self.root):
            # the whole plugin dir went: inotify reports no IN_DELETE_SELF for it while a process (the plugin, Vite)
            # still has it as its working directory, so its removal shows only through what was inside
            self._gone(self.root)

    def _reappeared(self, path: str) -> None:
        """A watched root (e.g. pkg/) was re-created (git checkout, mv back): watch it again."""
        obs = self._observer
        if obs is None or not self._running:
            return
        if path in self._watched_abs:
            return
        rec = next((r for rel, r in self.roots if os.path.join(self.root, rel) == path), True)
        old = self._watches.pop(path, None)
        try:
            if old is not None:
                obs.unschedule(old)
        except Exception:
            pass
        try:
            self._watches[path] = obs.schedule(_Handler(self), path, recursive=rec, event_filter=_EVENT_TYPES)
            self._watched_abs.add(path)
            self.ctx.log("go-watch", "info", f"watching {path} again")
        except OSError as e:
            msg = self._explain(e)
            self.ctx.log("go-watch", "error", msg)
            if self.on_error is not None:
                self._call(self.on_error, msg)
        self._on_fs_event((self.relpath(path) or path) + "/")

    def _on_fs_event(self, rel: str) -> None:
        if not self._running:
            return
        loop = self.loop
        assert loop is not None
        if self.first_event is None:
            self.first_event = loop.time()
        self._pending.add(rel)
        if self.on_event is not None:
            self._call(self.on_event, rel)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(self.debounce, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if not self._running or not self._pending:
            return
        paths = sorted(self._pending)
        self._pending.clear()
        first = self.first_event if self.first_event is not None else self.loop.time()
        self.first_event = None
        self.last_burst = (first, self.loop.time())
        self.fired += 1
        shown = ", ".join(paths[:3]) + (f" (+{len(paths) - 3} more)" if len(paths) > 3 else "")
        self.ctx.log("go-watch", "info", f"changed: {shown}")
        self._call(self.on_change, paths)

    def _call(self, fn: Callable, *args: Any) -> None:
        try:
            res = fn(*args)
        except Exception as e:
            self.ctx.log("go-watch", "error", f"watch callback failed: {e!r}")
            return
        if inspect.isawaitable(res):
            self._background.spawn(res)
