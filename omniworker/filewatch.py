"""FileWatch: one file followed through its directory (watchdog/inotify), debounced.

`on_change()` runs on the event loop `debounce` seconds after the last create/modify event on the file (an in-place
write may still be going on), and at once after an atomic rename onto it, a closed write or its deletion. `check()`
watches the directory again when it was removed or replaced: inotify follows inodes, not names. External mode uses it
for `.devinfo` (`[external] debounce`).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, Callable


class FileWatch:
    def __init__(self, path: str, debounce: float, on_change: Callable[[], None], log: Callable[[str, str], None]):
        self.path = os.path.abspath(path)
        self.dir = os.path.dirname(self.path)
        self.debounce = debounce
        self.on_change = on_change
        self.log = log                          # log(level, message)
        self._observer: Any = None
        self._dir_key: tuple | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running = True
        await asyncio.to_thread(self._start_observer)

    async def stop(self) -> None:
        self._running = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        observer, self._observer = self._observer, None
        if observer is not None:
            await asyncio.to_thread(_stop_observer, observer)

    async def check(self) -> None:
        """The directory removed or replaced: watch the one there now."""
        try:
            st = os.stat(self.dir)
            key = (st.st_dev, st.st_ino)
        except OSError:
            key = None
        if key == self._dir_key and self._observer is not None and self._observer.is_alive():
            return
        self.log("warn", f"{self.dir} was removed or replaced: watching it again")
        old, self._observer = self._observer, None
        if old is not None:
            await asyncio.to_thread(_stop_observer, old)
        if self._running:
            try:
                await asyncio.to_thread(self._start_observer)
            except OSError as e:
                self.log("error", f"cannot watch {self.dir}: {e}")

    def _start_observer(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watch = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):          # runs in watchdog's thread
                kind = event.event_type
                if kind in ("opened", "closed_no_write") or event.is_directory:
                    return                          # our own reads open the file too
                paths = [event.src_path, getattr(event, "dest_path", "") or ""]
                if watch.path not in (os.fsdecode(p) for p in paths if p):
                    return
                loop = watch._loop
                if loop is not None and not loop.is_closed():
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(watch._on_event, kind)

        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        st = os.stat(self.dir)
        observer = Observer()
        observer.schedule(Handler(), self.dir, recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._dir_key = (st.st_dev, st.st_ino)

    def _on_event(self, kind: str) -> None:
        if not self._running:
            return
        # An atomic rename or a closed write is complete now; a create/modify may be followed by more writes.
        delay = 0.0 if kind in ("moved", "closed", "deleted") else self.debounce
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self.on_change()


def _stop_observer(observer: Any) -> None:
    observer.stop()
    observer.join(timeout=5)
