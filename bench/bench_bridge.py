"""Frontend bridge benchmark, in Chromium (Debian's, through Playwright for Python).

1. event published -> DOM updated through the bridge: the real `omnibridge` in front of a stand-in broker
   (omnibridge.testing.FakeBroker); one log event at a time, from the broker's publish timestamp (meta.ts) to the
   moment a MutationObserver sees the line in the dashboard. Median of --events.
2. the same under load: 10 plugins, --load-rounds lines each as fast as the publisher goes: events/s the page keeps up
   with, frame intervals during the burst.
3. UI edit saved -> DOM updated: the real service (supervisord, broker, worker, Vite) on a private copy of
   examples/hello-plugin; the label in ui/src/App.tsx rewritten, from the file's close to the MutationObserver seeing
   the new text (Vite HMR + React Fast Refresh). Median of --runs (10).
4. Go edit saved -> new RPC answer in the DOM (debounce + go build + reload + remount + invoke): median of --go-runs.
   Also the dashboard's own event->DOM latencies for the real broker's events during those runs.

    .venv/bin/python bench/bench_bridge.py [--json out.json] [--runs 10] [--events 50] [--go-runs 3] [--skip-service]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from kit import build_env  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
EXAMPLE = REPO / "examples" / "hello-plugin"
# Two saves of the same file closer than ~100 ms are not both seen by Vite's watcher (chokidar): space the edits.
EDIT_GAP_MS = 500

# records, per marker text, when it first appears anywhere under `root` (epoch ms, same clock as time.time())
OBSERVE = """([selector, key]) => {
    window.__seen = window.__seen || {};
    window.__want = window.__want || {};
    const root = document.querySelector(selector);
    const check = () => {
        const text = root.textContent;
        for (const m of Object.keys(window.__want)) {
            if (!(m in window.__seen) && text.includes(m)) {
                window.__seen[m] = performance.timeOrigin + performance.now();
                delete window.__want[m];
            }
        }
    };
    new MutationObserver(check).observe(root, {childList: true, subtree: true, characterData: true});
}"""
WANT = "(m) => { window.__want[m] = true; }"
SEEN = "(m) => window.__seen && window.__seen[m]"


def summary(values: list[float]) -> dict:
    v = sorted(values)
    return {"n": len(v), "median": round(statistics.median(v), 2), "min": round(v[0], 2),
            "p90": round(v[min(len(v) - 1, int(len(v) * 0.9))], 2), "max": round(v[-1], 2)}


def standalone_build(tree: Path) -> float:
    """ms of the build command omni runs, run by hand in `tree` (the same env as the service's builds)."""
    import subprocess
    from omniworker.gobuild import DEFAULT_BUILD_COMMAND
    t0 = time.monotonic()
    subprocess.run(DEFAULT_BUILD_COMMAND, cwd=tree, check=True, capture_output=True, env=build_env())
    return (time.monotonic() - t0) * 1000


def _cpu_by_kind() -> dict[str, float]:
    """CPU-seconds used so far by this script's descendants (the service, Vite, go, Chromium, Playwright's driver), by
    kind. Finished children count in their reaper's children_* times: the service's (its `go build`s) as
    "reaped by the service", this script's (the standalone builds) as "reaped"."""
    import psutil
    kinds: dict[str, float] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            name, t = proc.name(), proc.cpu_times()
        except psutil.Error:
            continue
        kind = ("chromium" if "chrom" in name else "node" if name.startswith("node") else
                "python" if name.startswith("python") or "supervisord" in name else
                "go" if name in ("go", "compile", "link", "asm", "cgo") else "other")
        kinds[kind] = kinds.get(kind, 0.0) + t.user + t.system
        if kind == "python":
            reaped = t.children_user + t.children_system
            kinds["reaped by the service"] = kinds.get("reaped by the service", 0.0) + reaped
    t = os.times()
    kinds["reaped"] = t.children_user + t.children_system
    return kinds


def _cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: round(b.get(k, 0.0) - a.get(k, 0.0), 3) for k in sorted(set(a) | set(b))}


def launch(p):
    return p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)


# --- 1 + 2: stand-in broker ----------------------------------------------------------------------------------------
def bench_events(p, n_events: int, load_rounds: int) -> dict:
    from omnibroker import protocol
    from omnibridge.testing import BridgeProcess

    out: dict = {}
    plugins = [f"p{i:02d}" for i in range(10)]
    with BridgeProcess(plugins=plugins) as bp:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(bp.url)
            page.locator("section.card").nth(len(plugins) - 1).wait_for()
            page.evaluate(OBSERVE, ['[data-testid="log-p00"]', "log"])
            lat = []
            for i in range(n_events + 3):
                marker = f"bench-marker-{i:05d}"
                page.evaluate(WANT, marker)
                meta = bp.fake.publish(protocol.LOG, protocol.log_payload("p00", "go-build", "info", marker), "p00")
                page.wait_for_function(SEEN, arg=marker, timeout=10_000)
                seen = page.evaluate(SEEN, marker)
                if i >= 3:                  # the first few warm the JIT
                    lat.append(seen - meta.ts * 1000)
            out["event_to_dom_ms"] = summary(lat)

            # 2: a burst across ten plugins
            page.evaluate("""() => { window.__frames = []; let last = performance.now();
                const tick = (t) => { window.__frames.push(t - last); last = t;
                                      if (!window.__stop) requestAnimationFrame(tick); };
                requestAnimationFrame(tick); }""")
            last = f"burst-end-{load_rounds}"
            page.evaluate(OBSERVE, ['[data-testid="log-p09"]', "burst"])
            page.evaluate(WANT, last)
            t0 = time.time()
            for i in range(load_rounds):
                for pl in plugins:
                    msg = last if (i == load_rounds - 1 and pl == "p09") else f"line {i} of {pl}"
                    bp.fake.publish(protocol.LOG, protocol.log_payload(pl, "go-build", "info", msg), pl)
            t_pub = time.time()
            page.wait_for_function(SEEN, arg=last, timeout=60_000)
            seen = page.evaluate(SEEN, last) / 1000
            frames = sorted(page.evaluate("window.__stop = true; window.__frames")[1:])
            n = load_rounds * len(plugins)
            out["burst"] = {"plugins": len(plugins), "events": n, "publish_s": round(t_pub - t0, 3),
                            "all_in_dom_s": round(seen - t0, 3), "events_per_s": round(n / (seen - t0)),
                            "frames_ms": summary(frames) if frames else None}
            stats = json.loads(page.evaluate("() => fetch('/stats').then(r => r.text())"))
            out["burst"]["bridge_overflows"] = stats["overflows"]
        finally:
            browser.close()
    return out


# --- 3 + 4: the real service --------------------------------------------------------------------------------------
def copy_plugin(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("build", "node_modules", "dist", ".devinfo"))
    (dest / "ui" / "node_modules").symlink_to(EXAMPLE / "ui" / "node_modules")
    return dest


def bench_service(p, runs: int, go_runs: int, edit_gap_ms: int = EDIT_GAP_MS) -> dict:
    from support.service import Service

    out: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="omni-bench-bridge-"))
    plugin = copy_plugin(tmp / "hello")
    config = (f'[plugins.hello]\npath = {json.dumps(str(plugin))}\nautostart = true\n\n'
              '[plugins.hello.build]\nenv = {GO111MODULE = "off", GOPATH = "/usr/share/gocode"}\n')
    svc = Service(config_text=config)
    browser = None
    try:
        svc.start()
        svc.bridge_address()                                # the bridge has written its port and token
        url = (svc.runtime / "bridge.url").read_text().strip()      # the dashboard's URL with its token
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.goto(url)
        try:
            page.get_by_test_id("greeting").filter(has_text=", omni").wait_for(timeout=180_000)
        except Exception:
            print("the plugin's greeting never showed\n" + "\n".join(console[-20:]) + "\n"
                  + svc.logs("logs/omniworker-hello.log", 40), file=sys.stderr)
            raise
        page.wait_for_function("() => document.querySelector('[data-testid=go-status-hello]').textContent === 'ready'")

        app = plugin / "ui" / "src" / "App.tsx"
        original = app.read_text()
        label_re = re.compile(r'(<span data-testid="label">)([^<]*)(</span>)')
        page.evaluate(OBSERVE, ['[data-testid="view-hello"]', "ui"])
        lat = []
        try:
            for i in range(runs + 1):
                if i:
                    page.wait_for_timeout(edit_gap_ms)     # pacing like a person saving, not synchronisation
                marker = f"Label edit {i:03d}"
                page.evaluate(WANT, marker)
                app.write_text(label_re.sub(lambda m: m.group(1) + marker + m.group(3), original, count=1))
                saved = time.time()
                try:
                    page.wait_for_function(SEEN, arg=marker, timeout=30_000)
                except Exception:
                    print(f"label edit {i} not seen; label shows {page.get_by_test_id('label').text_content()!r}\n"
                          + "\n".join(console[-20:]) + "\n" + svc.logs("omniworker-hello.log", 40), file=sys.stderr)
                    raise
                seen = page.evaluate(SEEN, marker)
                if i >= 1:                  # the first edit also warms Vite's transform cache
                    lat.append(seen - saved * 1000)
        finally:
            app.write_text(original)
        out["ui_edit_to_dom_ms"] = summary(lat)

        if go_runs:
            greeting = plugin / "pkg" / "greeting.go"
            src = greeting.read_text()
            page.evaluate("() => { window.omniDashboard.latencies.length = 0; }")
            standalone_tree = tmp / "standalone"
            shutil.copytree(plugin / "pkg", standalone_tree / "pkg")
            standalone_build(standalone_tree)                               # warm
            # when each dev_reload_complete was published (the broker's stamp) and reached the page (epoch ms)
            page.evaluate("""() => { window.__reloads = [];
                window.omniDashboard.omni.subscribe((c) => {
                    if (c.kind === "event" && c.topic === "plugin/dev_reload_complete")
                        window.__reloads.push([c.meta.ts * 1000, Date.now()]);
                });
            }""")
            lat, standalone, in_service, split, cpu_during = [], [], [], [], []
            try:
                for i in range(go_runs):
                    word = f"Bench{i}"
                    marker = f"{word}, omni"
                    page.evaluate(WANT, marker)
                    text = re.sub(r'const Greeting = ".*"', f'const Greeting = "{word}"', src)
                    cpu0 = _cpu_by_kind()
                    greeting.write_text(text)
                    saved = time.time()
                    # the page stamps the answer itself (OBSERVE); polling every 100 ms, not every frame, keeps
                    # Chromium and Playwright off the 2 cores while the service builds
                    page.wait_for_function(SEEN, arg=marker, timeout=60_000, polling=100)
                    seen = page.evaluate(SEEN, marker)
                    lat.append(seen - saved * 1000)
                    in_service.append(svc.call("status", plugin="hello")["lastBuildDuration"] / 1e6)
                    published, arrived = page.evaluate("() => window.__reloads[window.__reloads.length - 1]")
                    split.append((published - saved * 1000, arrived - published, seen - arrived))
                    cpu1 = _cpu_by_kind()
                    (standalone_tree / "pkg" / "greeting.go").write_text(text)
                    standalone.append(standalone_build(standalone_tree))   # the same edit, built by hand
                    cpu2 = _cpu_by_kind()
                    cpu_during.append({"save_to_dom": _cpu_delta(cpu0, cpu1),
                                       "standalone_build": _cpu_delta(cpu1, cpu2)})
            finally:
                greeting.write_text(src)
            out["go_edit_to_new_rpc_answer_ms"] = summary(lat)
            out["go_standalone_build_ms"] = summary(standalone)
            out["go_build_in_service_ms"] = summary(in_service)     # the same builds as run by the service
            # save -> dev_reload_complete published | -> on the page (bridge, WebSocket) | -> answer in the DOM
            # (the view remounted, its first invoke through bridge, broker, worker and plugin, React's render)
            for i, key in enumerate(("go_save_to_reload_published_ms", "go_reload_published_to_page_ms",
                                     "go_reload_on_page_to_dom_ms")):
                out[key] = summary([x[i] for x in split])
            entries = svc.call("logs", plugin="hello", count=500)["entries"]
            lines = [e["message"] for e in entries if "serving the new build" in e["message"]]
            out["go_reload_lines"] = lines[-go_runs:]      # the worker's own account of each reload
            out["go_cpu_s"] = cpu_during   # CPU-s per kind of process: during save -> DOM, and the standalone build
            out["go_runs"] = [{"total_ms": round(t, 1), "standalone_build_ms": round(sa, 1),
                               "service_build_ms": round(b, 1), "published_ms": round(x[0], 1),
                               "to_page_ms": round(x[1], 1), "page_to_dom_ms": round(x[2], 1),
                               "service_besides_build_ms": round(x[0] - b, 1)}
                              for t, sa, b, x in zip(lat, standalone, in_service, split)]
            real = page.evaluate("() => window.omniDashboard.latencies.slice()")
            if real:
                out["real_broker_event_to_dom_ms"] = summary(real)
    finally:
        if browser is not None:
            browser.close()
        svc.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--runs", type=int, default=10, help="UI edits (median of)")
    ap.add_argument("--events", type=int, default=50, help="single events through the bridge (median of)")
    ap.add_argument("--load-rounds", type=int, default=300, help="lines per plugin in the 10-plugin burst")
    ap.add_argument("--go-runs", type=int, default=3, help="Go edits (0 to skip)")
    ap.add_argument("--edit-gap-ms", type=int, default=EDIT_GAP_MS, help="pause between two UI edits")
    ap.add_argument("--skip-service", action="store_true", help="only the stand-in broker parts (no Vite/Go)")
    args = ap.parse_args()
    if not shutil.which("chromium"):
        print("chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    results: dict = {"host": {"cpus": os.cpu_count(), "load1": round(os.getloadavg()[0], 2)}}
    with sync_playwright() as p:
        results.update(bench_events(p, args.events, args.load_rounds))
        if not args.skip_service:
            results.update(bench_service(p, args.runs, args.go_runs, args.edit_gap_ms))

    def line(name: str, key: str) -> None:
        if key in results:
            s = results[key]
            print(f"{name:<48} median {s['median']:8.1f} ms   min {s['min']:.1f}  p90 {s['p90']:.1f}  "
                  f"max {s['max']:.1f}  (n={s['n']})")
    line("event published -> DOM (bridge, stand-in broker)", "event_to_dom_ms")
    b = results.get("burst")
    if b:
        f = b["frames_ms"] or {}
        print(f"{'10-plugin burst':<48} {b['events']} events: all in DOM after {b['all_in_dom_s']:.2f} s "
              f"({b['events_per_s']}/s; published in {b['publish_s']:.2f} s); frame median {f.get('median')} ms, "
              f"p90 {f.get('p90')} ms, max {f.get('max')} ms; bridge overflows {b['bridge_overflows']}")
    line("UI edit saved -> DOM (Vite HMR, Fast Refresh)", "ui_edit_to_dom_ms")
    line("Go edit saved -> new RPC answer in DOM", "go_edit_to_new_rpc_answer_ms")
    line("  the same edit's go build run by hand", "go_standalone_build_ms")
    line("  the go build as the service ran it", "go_build_in_service_ms")
    line("event published -> DOM (real broker, dashboard)", "real_broker_event_to_dom_ms")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
