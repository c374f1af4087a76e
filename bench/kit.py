"""What the bench scripts share: a NullSink that stamps each event, a wait on those stamps, the example's one-line
edit, the environment of omni's builds, and writing a script's figures (a JSON file, or stdout)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from omniworker.context import NullSink


class TimedSink(NullSink):
    """A NullSink that also records when (time.perf_counter) each event was published."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[float] = []

    def publish(self, topic, payload) -> None:
        self.stamps.append(time.perf_counter())
        super().publish(topic, payload)


async def stamp_of(sink: TimedSink, pred: Callable[[str, Any], bool], since: int = 0, timeout: float = 10.0) -> float:
    """When the first event at or after index `since` matching pred(topic, payload) was published; none within
    `timeout` s ends the script with the last events."""
    deadline = time.perf_counter() + timeout
    i = since
    while True:
        while i < len(sink.events):
            if pred(*sink.events[i]):
                return sink.stamps[i]
            i += 1
        sink.changed.clear()
        try:
            await asyncio.wait_for(sink.changed.wait(), max(0.01, deadline - time.perf_counter()))
        except asyncio.TimeoutError:
            tail = "\n".join(f"  {t} {json.dumps(p)[:400]}" for t, p in sink.events[-10:])
            raise SystemExit(f"no expected event within {timeout}s; last events:\n{tail}") from None


def set_greeting(tree: Path, value: str) -> None:
    """The example's one-line Go edit, saved as editors do (temp file + rename)."""
    f = tree / "pkg" / "greeting.go"
    tmp = f.with_name(".greeting.go.tmp")
    tmp.write_text(re.sub(r'const Greeting = ".*"', f'const Greeting = "{value}"', f.read_text()))
    os.replace(tmp, f)


GO_ENV = {"GO111MODULE": "off", "GOPATH": "/usr/share/gocode"}


def build_env() -> dict[str, str]:
    """The environment omni's builds of the example get (gobuild.Builder.env with GO_ENV as `[build] env`): a
    standalone build with it is "the same go build"."""
    from omniworker.gobuild import BUILD_GOGC
    env = dict(os.environ)
    env.setdefault("GOGC", BUILD_GOGC)
    return {**env, **GO_ENV}


def write_json(result: Any, path: str | None) -> None:
    """The figures as JSON into `path` (its directory created), or on stdout without one."""
    text = json.dumps(result, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    else:
        print(text)
