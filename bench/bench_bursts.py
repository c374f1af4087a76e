#!/usr/bin/env python3
"""The bursts of file events real tools make on a save, as the Go watcher sees them (watchdog's inotify observer).

    .venv/bin/python bench/bench_bursts.py [--runs 5] [--json out.json]

On a copy of examples/hello-plugin/pkg plus 30 generated files (`pkg/gen_NN.go`, in a git repository with two
branches), each scenario runs `--runs` times:
  atomic          write pkg/.greeting.go.tmp, rename it onto pkg/greeting.go (what most editors and the benches do)
  vim             `vim -es` with `set backup writebackup`: swap file, the 4913 probe, greeting.go~ backup, new file
  gofmt           `gofmt -w pkg/greeting.go` on an unformatted file
  goimports       `goimports -w pkg/greeting.go` on an unformatted file (when goimports is installed)
  save+gofmt      an atomic save, then `gofmt -w` on it at once (format-on-save run by the editor after writing)
  gofmt -r        `gofmt -r 'genPrefix -> genHead' -w pkg` (a rename used by the 30 generated files)
  sed -i          `sed -i` on the 30 generated files (one process, 30 rewrites through temp files)
  git checkout    `git checkout` of a branch where the 30 generated files differ
For each run: `events` (every event watchdog reports under the plugin dir), `relevant` (those GoWatcher counts as a
source change: what (re)starts its quiet window), `span_ms` (first -> last relevant event) and `max_gap_ms` (the
largest gap between two consecutive relevant events: the quiet window must exceed it for the burst to give one
build). A burst ends after 1.5 s without events (longer than watchdog's 0.5 s wait for a rename's second half).
Results as JSON (median and max over runs per scenario, plus every run).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from kit import write_json  # noqa: E402
EXAMPLE = REPO / "examples" / "hello-plugin"
QUIET_END = 1.5             # s without events that closes a burst
GENERATED = 30


class Recorder:
    """Every watchdog event under the plugin dir, stamped with time.monotonic() on watchdog's thread."""

    def __init__(self):
        self.events: list[tuple[float, object]] = []
        self.lock = threading.Lock()

    def dispatch(self, event) -> None:
        with self.lock:
            self.events.append((time.monotonic(), event))

    def take(self) -> list[tuple[float, object]]:
        with self.lock:
            out, self.events = self.events, []
        return out

    def settle(self, since: float = 0.0) -> None:
        """Return once neither an event arrived nor `since` (time.monotonic()) was for QUIET_END s: the burst is
        over, including events watchdog's thread delivers late on a loaded machine."""
        while True:
            with self.lock:
                last = max(self.events[-1][0] if self.events else 0.0, since)
            idle = time.monotonic() - last
            if idle >= QUIET_END:
                return
            time.sleep(QUIET_END - idle)     # a benchmark waiting out the tool's trailing events


def make_tree(root: Path) -> Path:
    tree = root / "plug"
    shutil.copytree(EXAMPLE / "pkg", tree / "pkg")
    for i in range(GENERATED):
        head = 'const genPrefix = "p"\n\n' if i == 0 else ""
        (tree / "pkg" / f"gen_{i:02d}.go").write_text(
            f'package main\n\n{head}// genValue{i:02d} is generated for the burst benchmark.\n'
            f'const genValue{i:02d} = genPrefix + "a{i}"\n')
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(tree)], check=True)
    subprocess.run([*git, "add", "-A"], cwd=tree, check=True)
    subprocess.run([*git, "commit", "-qm", "a"], cwd=tree, check=True)
    subprocess.run([*git, "checkout", "-qb", "other"], cwd=tree, check=True)
    for i in range(GENERATED):
        f = tree / "pkg" / f"gen_{i:02d}.go"
        f.write_text(f.read_text().replace(f'"a{i}"', f'"b{i}"'))
    subprocess.run([*git, "commit", "-qam", "b"], cwd=tree, check=True)
    subprocess.run([*git, "checkout", "-q", "main"], cwd=tree, check=True)
    return tree


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def greeting_text(value: str, formatted: bool = True) -> str:
    indent = "" if formatted else "   "
    return ("package main\n\n// Greeting is the word the Greeter service puts in front of the name.\n"
            "// Tests rewrite the line below with a regex; keep its exact format.\n"
            f"{indent}const Greeting = \"{value}\"\n")


def scenarios(tree: Path) -> dict[str, tuple[Callable[[int], None], Callable[[int], None]]]:
    """name: (prepare(run) - not measured, act(run) - measured)."""
    greeting = tree / "pkg" / "greeting.go"

    def run(*argv: str) -> None:
        subprocess.run(argv, cwd=tree, check=True, stdout=subprocess.DEVNULL)

    def unformatted(i: int) -> None:
        atomic_write(greeting, greeting_text(f"Hi{i}", formatted=False))

    def git_back(i: int) -> None:
        run("git", "checkout", "-q", "-f", "main")
        run("git", "clean", "-qfd", "pkg")

    def gen_files() -> list[str]:
        return sorted(f"pkg/{p.name}" for p in (tree / "pkg").glob("gen_*.go"))

    out: dict[str, tuple[Callable[[int], None], Callable[[int], None]]] = {
        "atomic": (lambda i: None, lambda i: atomic_write(greeting, greeting_text(f"Atomic{i}"))),
        "vim": (lambda i: None,
                lambda i: run("vim", "-u", "NONE", "-i", "NONE", "-N", "-es", "-c", "set backup writebackup",
                              "-c", f'%s/const Greeting = ".*"/const Greeting = "Vim{i}"/', "-c", "wq",
                              "pkg/greeting.go")),
        "gofmt": (unformatted, lambda i: run("gofmt", "-w", "pkg/greeting.go")),
    }
    if shutil.which("goimports"):
        out["goimports"] = (unformatted, lambda i: run("goimports", "-w", "pkg/greeting.go"))
    out["save+gofmt"] = (lambda i: None, lambda i: (atomic_write(greeting, greeting_text(f"Fmt{i}", False)),
                                                   run("gofmt", "-w", "pkg/greeting.go")))
    out["gofmt -r"] = (git_back, lambda i: run("gofmt", "-r", "genPrefix -> genHead", "-w", "pkg"))
    out["sed -i"] = (git_back, lambda i: run("sed", "-i", f"s/const genValue/const genValue{i}/", *gen_files()))
    out["git checkout"] = (git_back, lambda i: run("git", "checkout", "-q", "other"))
    return out


def measure(watcher, rec: Recorder, act: Callable[[], None]) -> dict:
    rec.take()
    t0 = time.monotonic()
    act()
    done = time.monotonic()
    tool = done - t0
    rec.settle(done)
    events = rec.take()
    times = [t for t, ev in events if watcher.relevant(ev) is not None]
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"events": len(events), "relevant": len(times),
            "span_ms": round((times[-1] - times[0]) * 1000, 2) if times else 0.0,
            "max_gap_ms": round(max(gaps) * 1000, 2) if gaps else 0.0,
            "tool_ms": round(tool * 1000, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from watchdog.observers.inotify import InotifyObserver
    from omnibroker import protocol
    from omniworker.context import NullSink, PluginContext
    from omniworker.gowatch import GoWatcher

    root = Path(tempfile.mkdtemp(prefix="omni-bursts-"))
    try:
        tree = make_tree(root)
        # GoWatcher's own filter (globs, ignores, temp names, moves judged by their destination); it is not started:
        # the recorder below sees every event, and `relevant()` tells which ones would (re)start the quiet window
        ctx = PluginContext(protocol.PluginSpec(id="bursts", path=str(tree)), NullSink())
        watcher = GoWatcher(ctx, lambda paths: None)
        rec = Recorder()
        observer = InotifyObserver()
        observer.schedule(rec, str(tree), recursive=True)
        observer.start()
        results: dict[str, dict] = {}
        try:
            for name, (prepare, act) in scenarios(tree).items():
                runs = []
                for i in range(args.runs):
                    prepare(i)
                    rec.settle(time.monotonic())
                    runs.append(measure(watcher, rec, lambda: act(i)))
                summary = {}
                for key in ("events", "relevant", "span_ms", "max_gap_ms", "tool_ms"):
                    values = [r[key] for r in runs]
                    summary[key] = {"median": statistics.median(values), "max": max(values)}
                results[name] = {"summary": summary, "runs": runs}
                s = summary
                print(f"{name:13s} events {s['events']['median']:>5} (max {s['events']['max']:>3})  relevant "
                      f"{s['relevant']['median']:>5} (max {s['relevant']['max']:>3})  "
                      f"span {s['span_ms']['median']:7.2f} ms "
                      f"(max {s['span_ms']['max']:7.2f})  max gap {s['max_gap_ms']['median']:6.2f} ms "
                      f"(max {s['max_gap_ms']['max']:6.2f})", file=sys.stderr, flush=True)
        finally:
            observer.stop()
            observer.join(5)
        tools = {"vim": _version(["vim", "--version"]), "gofmt": _version(["go", "version"]),
                 "goimports": "golang-golang-x-tools (Debian)" if shutil.which("goimports") else None,
                 "git": _version(["git", "--version"])}
        out = {"runs": args.runs, "generated_files": GENERATED, "scenarios": results, "tools": tools,
               "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
               "largest_gap_ms": max(r["summary"]["max_gap_ms"]["max"] for r in results.values())}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_json(out, args.json)
    return 0


def _version(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None


if __name__ == "__main__":
    sys.exit(main())
