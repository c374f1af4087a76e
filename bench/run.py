"""`make bench`: run every bench script, each writing its own JSON, then one table of all figures against their raw
baselines: bench/results.md and bench/results.json.

    .venv/bin/python bench/run.py [--quick] [--only NAME[,NAME]] [--core-repeats N] [--list]

- Each script runs as a subprocess with `--json bench/out/<name>.json` (bench_gopath: `--out`); `--quick` passes each
  script's own short-run options (see SCRIPTS). A script that fails is reported in the table as not measured and
  `make bench` exits 1 after writing the results; a missed goal does not fail the run.
- `--only NAME` re-runs only those scripts; the other rows come from their last JSON in bench/out/ (the run they came
  from is listed under "Runs").
- bench_core runs --core-repeats times (default 3): its raw baselines are measured seconds apart from our figures, so
  one repeat can land in a noisy moment; the table shows the median over repeats and lists every repeat's ratio.
  After each repeat, run.py measures the raw throughput baseline bench_core lacks: the same sender and subscriber
  loops as bench_core's throughput test, through a raw pyzmq XSUB/XPUB proxy instead of the broker.

Reading the table: "ratio" is ours / raw, both measured in the same run on this machine (absolute times drift with
the load; the ratio much less). For throughput the ratio is ours / raw events per second (higher is better).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"

# name: (script, json option, full-run args, quick-run args, timeout s)
SCRIPTS: dict[str, tuple[str, str, list[str], list[str], int]] = {
    "core": ("bench_core.py", "--json", [], ["--quick"], 900),
    # 9 saves (not the script's default 5): the overhead figure subtracts two separate `go build`s, ±300 ms each here
    "gopath": ("bench_gopath.py", "--out", ["--runs", "9"], ["--runs", "7", "--gap-runs", "2"], 1200),
    "vite": ("bench_vite.py", "--json", [], ["--runs", "3", "--hmr-runs", "10"], 1200),
    "external": ("bench_external.py", "--json", [], ["--runs", "8"], 900),
    "bridge": ("bench_bridge.py", "--json", [], ["--runs", "5", "--events", "20", "--load-rounds", "100",
                                                 "--go-runs", "8"], 1200),
    "scale": ("bench_scale.py", "--json", [], ["--quick"], 2700),
    "debug": ("bench_debug.py", "--json", [], ["--quick"], 1500),
    "bursts": ("bench_bursts.py", "--json", [], ["--runs", "3"], 900),
    "linkflags": ("bench_linkflags.py", "--json", [], ["--runs", "5"], 900),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- raw throughput baseline (bench_core's throughput loop through a raw XSUB/XPUB proxy) ---------------------------
def raw_throughput(nsubs: int, count: int) -> dict:
    """PUB -> raw pyzmq XSUB/XPUB proxy (child process) -> nsubs SUBs; the sender and receiver loops are bench_core's
    (same frames, same sizes, same per-message decode of the meta frame on the subscriber side)."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(BENCH))
    import zmq
    from bench_core import PAYLOAD_SIZE, _raw_proxy, count_received
    from omnibroker import protocol

    tmp = tempfile.mkdtemp(prefix="omni-bench-rawtput-")
    front, back = f"ipc://{tmp}/xsub.sock", f"ipc://{tmp}/xpub.sock"
    proxy = mp.get_context("fork").Process(target=_raw_proxy, args=(front, back), daemon=True)
    proxy.start()
    ctx = zmq.Context()
    try:
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 0)       # block-free and lossless like the DEALER bench_core sends on
        pub.connect(front)
        subs = []
        for _ in range(nsubs):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.RCVHWM, protocol.SUBSCRIBER_RCVHWM)
            s.setsockopt(zmq.SUBSCRIBE, protocol.LOG.encode())
            s.connect(back)
            subs.append(s)
        time.sleep(0.3)         # subscription propagation through the proxy (as bench_core does)
        payload = protocol.encode(protocol.log_payload("bench", "manager", "info", "x" * PAYLOAD_SIZE))
        topic = protocol.LOG.encode()
        metas = [protocol.encode(protocol.EventMeta(epoch="e", seq=i + 1, ts=time.time(), pluginID="bench"))
                 for i in range(count)]
        t0 = time.perf_counter()
        for i in range(count):
            pub.send_multipart([topic, payload, metas[i]])
        return count_received(subs, count, t0)
    finally:
        proxy.kill()
        ctx.destroy(linger=0)
        shutil.rmtree(tmp, ignore_errors=True)


# --- running the scripts ----------------------------------------------------------------------------------------------
def run_script(name: str, quick: bool, out: Path, extra: list[str] | None = None) -> dict:
    script, json_opt, full, short, timeout = SCRIPTS[name]
    cmd = [sys.executable, str(BENCH / script), json_opt, str(out)] + (short if quick else full) + (extra or [])
    out.unlink(missing_ok=True)
    log(f"{name}: {' '.join(cmd[1:])}")
    logfile = OUT / f"{out.stem}.log"
    t0 = time.monotonic()
    with open(logfile, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.monotonic() - t0
    info = {"script": script, "command": " ".join(["python"] + [str(Path(c).relative_to(REPO)) if c.startswith(
        str(REPO)) else c for c in cmd[1:]]), "rc": rc, "seconds": round(seconds, 1), "json": str(out.relative_to(REPO)),
            "log": str(logfile.relative_to(REPO)), "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick}
    if rc != 0 or not out.exists():
        tail = logfile.read_text(errors="replace").strip().splitlines()[-6:]
        info["error"] = f"exit {rc}: " + " | ".join(tail)[-600:]
        log(f"{name}: FAILED ({info['error']})")
    else:
        log(f"{name}: done in {seconds:.0f} s")
    return info


# --- normalising every script's JSON into rows --------------------------------------------------------------------------
def row(section: str, figure: str, unit: str, ours: float | None, spread: float | None = None, spread_kind: str = "p99",
        n: Any = None, raw: float | None = None, raw_what: str = "", ratio: float | None = None, goal: str = "",
        met: bool | None = None, note: str = "", higher_is_better: bool = False) -> dict:
    if ratio is None and ours is not None and raw:
        ratio = ours / raw
    return {"section": section, "figure": figure, "unit": unit, "ours_median": ours, "spread": spread,
            "spread_kind": spread_kind, "n": n, "raw_median": raw, "raw_what": raw_what, "ratio": ratio, "goal": goal,
            "met": met, "note": note, "higher_is_better": higher_is_better}


def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rows_core(runs: list[dict], raws: list[dict]) -> list[dict]:
    S = "Event path and control"
    out = []
    reps = len(runs)

    def agg(key: str) -> tuple:
        rs = [r[key] for r in runs if key in r]
        ratios = [r["ratio"] for r in rs]
        return (med([r["ours"]["median"] for r in rs]), med([r["ours"]["p99"] for r in rs]),
                sum(r["ours"]["n"] for r in rs), med([r["raw"]["median"] for r in rs]), med(ratios), ratios,
                med([r["raw"]["p99"] for r in rs]))

    def each(ratios):
        return "ratio per repeat: " + ", ".join(f"{x:.2f}" for x in ratios) if len(ratios) > 1 else ""

    o, p, n, rw, ra, ratios, rp = agg("event_latency_us")
    out.append(row(S, "event latency worker → broker → SUB (200 B log payload)", "µs", o, p, "p99", n, rw,
                   f"PUB → raw XSUB/XPUB proxy → SUB (p99 {rp:.0f} µs)", ra, "≤ 1.5× raw", ra is not None and ra <= 1.5,
                   each(ratios)))
    for nsubs in (1, 10):
        key = f"log_throughput_{nsubs}sub"
        vals = [r[key]["events_per_s_per_sub"] for r in runs if key in r]
        drops = [r[key]["dropped_total"] for r in runs if key in r]
        rawv = [r[key]["events_per_s_per_sub"] for r in raws if key in r]
        rawd = [r[key]["dropped_total"] for r in raws if key in r]
        ratios = [a[key]["events_per_s_per_sub"] / b[key]["events_per_s_per_sub"] for a, b in zip(runs, raws)
                  if key in a and key in b and b[key]["events_per_s_per_sub"]]
        count = runs[0][key]["events"] if runs and key in runs[0] else None
        goal = "≥ 50,000/s" if nsubs == 1 else ""
        o = med(vals)
        out.append(row(S, f"log events/s to each of {nsubs} subscriber{'s' if nsubs > 1 else ''} "
                          f"(dropped at HWM: {sum(drops)} of {count * len(vals) if count else '?'})", "events/s", o,
                       min(vals) if vals else None, "min", f"{len(vals)}×{count}", med(rawv),
                       f"same loops, raw XSUB/XPUB proxy (dropped {sum(rawd)})", med(ratios) if ratios else None,
                       goal, (o >= 50_000) if (goal and o is not None) else None, each(ratios), higher_is_better=True))
    o, p, n, rw, ra, ratios, rp = agg("control_rtt_us")
    out.append(row(S, "control round trip, client library `ping`", "µs", o, p, "p99", n, rw,
                   f"raw REQ/REP echo (p99 {rp:.0f} µs)", ra, "≤ 2× raw", ra is not None and ra <= 2.0, each(ratios)))
    o, p, n, rw, ra, ratios, rp = agg("cli_ms")
    out.append(row(S, "one `omnictl status` process", "ms", o, p, "p99", n, rw, "one `supervisorctl status` process",
                   ra, "≤ 0.5× raw", ra is not None and ra <= 0.5, each(ratios)))
    return out


def rows_gopath(r: dict) -> list[dict]:
    S = "Go path (save → ready)"
    m, runs = r.get("median_ms", {}), r.get("runs", [])
    n = len(runs)
    deb = r.get("debounce_ms", 30)

    def mx(k):
        return max(x[k] for x in runs) * 1000 if runs else None
    sa = m.get("standalone_build")
    out = [
        row(S, "save → ready, total", "ms", m.get("total"), mx("total"), "max", n, (deb + sa) if sa else None,
            f"debounce ({deb} ms) + standalone `go build`"),
        row(S, "… debounce (inotify + trailing debounce)", "ms", m.get("debounce"), mx("debounce"), "max", n, deb,
            "configured debounce_ms"),
        row(S, "… queue for a build slot", "ms", m.get("queue"), mx("queue"), "max", n),
        row(S, "… `go build` run by omni", "ms", m.get("build"), mx("build"), "max", n, sa,
            "the same `go build` run standalone"),
        row(S, "… install (copy, fsync, rename)", "ms", m.get("install"), mx("install"), "max", n),
        row(S, "… start + handshake + health + switch", "ms", m.get("handshake_health"), mx("handshake_health"), "max",
            n),
        row(S, "overhead beyond debounce + standalone build", "ms", m.get("overhead"), mx("overhead"), "max", n,
            goal="< 100 ms", met=(m["overhead"] < 100) if m.get("overhead") is not None else None,
            note="total − measured debounce − a separate standalone build of the same edit: carries the difference "
                 "between two go builds; " + (f"per save {min(x['overhead'] for x in runs) * 1000:.0f} to "
                                              f"{max(x['overhead'] for x in runs) * 1000:.0f} ms" if runs else "")),
        row(S, "… of which omni's own steps (queue + install + start/handshake/health)", "ms",
            med([(x["queue"] + x["install"] + x["handshake_health"]) * 1000 for x in runs]),
            max((x["queue"] + x["install"] + x["handshake_health"]) * 1000 for x in runs) if runs else None, "max", n,
            note="the rest of the overhead is omni's `go build` vs the standalone one (same command and env)"),
    ]
    if sa and m.get("total"):
        ratio = m["total"] / sa
        out.append(row(S, "save → ready ÷ the same `go build` run standalone", "ratio", ratio, None, "", n,
                       goal="≤ 1.15", met=ratio <= 1.15))
    rapid = r.get("rapid", [])
    if rapid:
        reloads = [x["reloads"] for x in rapid]
        out.append(row(S, "5 saves 60 ms apart → reloads (last save served)", "reloads", med(reloads), max(reloads),
                       "max", len(rapid), goal="≤ 2, last served",
                       met=max(reloads) <= 2 and all(x["last_served"] for x in rapid)))
        out.append(row(S, "… CPU spent on the builds those saves cancelled", "CPU-s",
                       med([x["cancelled_cpu_s"] for x in rapid]), max(x["cancelled_cpu_s"] for x in rapid), "max",
                       len(rapid), note=f"{med([x['cancelled_builds'] for x in rapid])} cancelled builds (median)"))
    checkout = r.get("checkout", [])
    if checkout:
        reloads = [x["reloads"] for x in checkout]
        out.append(row(S, "`git checkout` of 30 files → reloads (new branch served)", "reloads", med(reloads),
                       max(reloads), "max", len(checkout), goal="1", met=set(reloads) == {1}
                       and all(x["served"] for x in checkout),
                       note=f"{sum(x['cancelled_builds'] for x in checkout)} cancelled builds in all"))
    for order, g in r.get("gaps", {}).items():
        fails, calls = g.get("failures", 0), g.get("calls", 0)
        out.append(row(S, f"longest invoke gap during a reload ({order}; {fails} failed of {fails + calls} calls)",
                       "ms", g.get("max_gap_ms_median"), g.get("max_gap_ms_worst"), "max", r.get("gap_runs_n")
                       or "", g.get("baseline_max_gap_ms_median"), "same client during a standalone go build, no reload",
                       goal="0 failed invokes", met=fails == 0))
    return out


def rows_bursts(r: dict) -> list[dict]:
    from omnibroker.settings import GoSettings
    S = "Go path: bursts of file events (inotify)"
    window = GoSettings().debounce_ms
    out = []
    for name, sc in r.get("scenarios", {}).items():
        x = sc["summary"]
        out.append(row(S, f"{name}: largest gap inside the burst ({x['relevant']['median']} relevant of "
                          f"{x['events']['median']} events, span {x['span_ms']['median']:.1f} ms)", "ms",
                       x["max_gap_ms"]["median"], x["max_gap_ms"]["max"], "max", r.get("runs"), window,
                       "the quiet window ([go] debounce_ms)", goal=f"< {window:g} ms",
                       met=x["max_gap_ms"]["max"] < window))
    return out


def rows_linkflags(r: dict) -> list[dict]:
    S = "Go path: build flags (rebuild after a one-line edit)"
    base = r["variants"]["default"]["median_ms"]
    return [row(S, f"go build {name}", "ms", v["median_ms"], v["max_ms"], "max", r.get("runs"), base,
                "go build without flags, GOGC=100",
                note=f"CPU {v['cpu_s']:.2f} s ({v['cpu_vs_default']:.2f}× without flags)" if "cpu_s" in v else "")
            for name, v in r.get("variants", {}).items()]


def rows_vite(r: dict) -> list[dict]:
    S = "Vite"
    s = r.get("summary", {})
    out = []
    rm, rd = r.get("ready_managed_s", []), r.get("ready_direct_s", [])
    out.append(row(S, "ready time (warm cache): start → viteStatus ready", "ms",
                   s["ready_managed_median_s"] * 1000 if s.get("ready_managed_median_s") else None,
                   max(rm) * 1000 if rm else None, "max", len(rm),
                   s["ready_direct_median_s"] * 1000 if s.get("ready_direct_median_s") else None,
                   "the same Vite run directly (exec → first HTTP answer)"))
    hm, hd = r.get("hmr_managed_ms", []), r.get("hmr_direct_ms", [])
    delta = s.get("hmr_delta_ms")
    out.append(row(S, f"HMR: save → `update` on the HMR socket (delta {delta:+.2f} ms)" if delta is not None else
                   "HMR: save → update", "ms", s.get("hmr_managed_median_ms"), max(hm) if hm else None, "max", len(hm),
                   s.get("hmr_direct_median_ms"), "the same edit on a directly run Vite, side by side",
                   goal="within 1 ms of direct", met=(delta <= 1.0) if delta is not None else None))
    out.append(row(S, "cold ready (fresh copy, dependency optimizer runs)", "ms",
                   s["cold_ready_s"] * 1000 if s.get("cold_ready_s") else None, None, "", 1))
    out.append(row(S, "Vite RSS, warm, page loaded", "MB", s.get("rss_warm_loaded_mb"), s.get("peak_rss_warm_mb"),
                   "peak", 1, note="per Vite process (node)"))
    out.append(row(S, "Vite RSS, cold, page loaded (optimizer ran)", "MB", s.get("rss_cold_loaded_mb"),
                   s.get("peak_rss_cold_mb"), "peak", 1))
    out.append(row(S, "RSS of the worker supervising Vite", "MB", s.get("worker_rss_mb"), None, "", 1))
    return out


def rows_external(r: dict) -> list[dict]:
    S = "External mode"
    out = []
    for key, label, goal, limit in (("attach", ".devinfo written → grpcConnected", "", None),
                                    ("death", "death detection: kill -9 → grpcConnected false", "< 500 ms", 500.0),
                                    ("follow_restart", "follow a restart: .devinfo replaced → reload complete", "",
                                     None)):
        x = r.get(key)
        if not x:
            continue
        out.append(row(S, label, "ms", x["median_ms"], x["max_ms"], "max", x["runs"], goal=goal,
                       met=(x["median_ms"] < limit) if limit else None,
                       note=f"death watch: {r.get('death_watch')}" if key == "death" else ""))
    return out


def rows_debug(r: dict) -> list[dict]:
    S = "Debug mode (delve)"
    normal, debug = r.get("normal", {}), r.get("debug", {})
    ns, ds = normal.get("save_ready_ms", {}), debug.get("save_ready_ms", {})
    return [
        row(S, "save → ready under delve (-N -l build, restart under the same delve)", "ms", ds.get("median"),
            ds.get("max"), "max", len(ds.get("runs", [])), ns.get("median"), "the same save in normal mode, same run"),
        row(S, "`start --debug` → breakpoint-ready (debugPort in the state, delve's API answering)", "ms",
            debug.get("breakpoint_ready_ms"), n=1, raw=normal.get("start_ready_ms"),
            raw_what="a normal start → ready, same run"),
        row(S, "idle CPU of a debugging worker (pause watcher connected)", "% of a core",
            debug.get("idle_cpu_percent"), n=f"{r.get('idle_s')} s", raw=normal.get("idle_cpu_percent"),
            raw_what="normal mode", goal="≈ 0", met=(debug.get("idle_cpu_percent") or 0) < 1.0),
    ]


def rows_bridge(r: dict) -> list[dict]:
    S = "Frontend bridge (Chromium)"
    out = []
    for key, label in (("event_to_dom_ms", "event published → DOM (stand-in broker)"),
                       ("real_broker_event_to_dom_ms", "event published → DOM (real broker)"),
                       ("ui_edit_to_dom_ms", "UI edit saved → DOM (Vite HMR + Fast Refresh)"),
                       ("go_edit_to_new_rpc_answer_ms", "Go edit saved → new RPC answer in the DOM"),
                       ("go_build_in_service_ms", "… the service's `go build` of those edits"),
                       ("go_save_to_reload_published_ms", "… save → dev_reload_complete published"),
                       ("go_reload_published_to_page_ms", "… published → on the page (bridge, WebSocket)"),
                       ("go_reload_on_page_to_dom_ms", "… on the page → answer in the DOM (remount, invoke, render)")):
        x = r.get(key)
        sa = r.get("go_standalone_build_ms") if key == "go_edit_to_new_rpc_answer_ms" else None
        if x and sa:
            out.append(row(S, label, "ms", x["median"], x["max"], "max", x["n"], sa["median"],
                           "the same edit's `go build` run by hand", goal="≤ standalone build + 100 ms",
                           met=x["median"] <= sa["median"] + 100))
        elif x:
            out.append(row(S, label, "ms", x["median"], x["max"], "max", x["n"]))
    b = r.get("burst")
    if b:
        out.append(row(S, f"10-plugin burst: events/s the page keeps up with (bridge overflows "
                          f"{b.get('bridge_overflows')})", "events/s", b.get("events_per_s"), None, "", b.get("events"),
                       higher_is_better=True))
    return out


def rows_scale(r: dict) -> list[dict]:
    n, nv = r.get("plugins"), r.get("vite_plugins")
    S = f"Scale ({n} plugins, Vite on {nv}, build_slots {r.get('build_slots')})"
    out = []
    raw = r.get("raw_go_build", {})
    for phase, label, rawkey in (("cold", "cold start → all ready (each plugin compiles + links)", "cold"),
                                 ("warm", "restart → all ready (same trees, unchanged: the build stamp skips `go build`)", "noop")):
        x = r.get(phase)
        if not x:
            continue
        ok = x.get("all_ready")
        ready = x.get("ready_s", {})
        out.append(row(S, label + ("" if ok else f" — NOT all ready: {len(x.get('not_ready', {}))} stuck"), "s",
                       x.get("all_ready_s"), None, "", 1,
                       raw.get(rawkey, {}).get("wall_s"),
                       f"{n} plain `go build`s, {r.get('build_slots')} at a time",
                       goal="≤ 1.2× plain builds" if phase == "cold" else "< 30 s",
                       met=bool(ok and (x["all_ready_s"] <= 1.2 * raw.get(rawkey, {}).get("wall_s", 0)
                                        if phase == "cold" else x["all_ready_s"] < 30)),
                       note=f"all workers registered at {x.get('all_registered_s') or 0:.1f} s; half ready at "
                            f"{ready.get('median', 0):.1f} s; machine CPU busy {x.get('machine_cpu_busy_pct', 0):.0f} %"))
    idle = r.get("idle")
    if idle:
        out.append(row(S, f"broker CPU when idle ({idle['seconds']:.0f} s window)", "%", idle.get("broker_cpu_pct"),
                       r.get("after_soak_idle", {}).get("broker_cpu_pct"), "after soak", 1, goal="< 1 %",
                       met=idle.get("broker_cpu_pct", 99) < 1.0,
                       note=f"supervisord {idle.get('supervisord_cpu_pct', 0):.2f} %, all workers "
                            f"{idle['workers_cpu_pct']['sum']:.1f} %"))
        out.append(row(S, "broker RSS when idle", "MB", idle["broker_mem"]["rss_mb"], None, "", 1,
                       note=f"USS {idle['broker_mem']['uss_mb']:.0f} MB"))
        sv = idle.get("supervisord_mem")
        if sv:
            out.append(row(S, "supervisord RSS when idle", "MB", sv["rss_mb"], None, "", 1,
                           note=f"USS {sv['uss_mb']:.1f} MB; it holds the workers' preloaded modules, which the "
                                f"workers it forks share (omniworker/preload.py)"))
        for g, label in (("workers", "worker"), ("plugins", "plugin binary"), ("vites", "Vite")):
            rs, us = idle.get(f"{g}_rss_mb", {}), idle.get(f"{g}_uss_mb", {})
            if rs.get("n"):
                out.append(row(S, f"{label} RSS, each", "MB", rs["median"], rs["max"], "max", rs["n"],
                               note=f"sum {rs['sum']:.0f} MB"))
                goal = {"goal": "≤ 12 MB", "met": us["median"] <= 12} if g == "workers" else {}
                how = ""
                if g == "workers":
                    how = ("; forked from supervisord's preloaded modules" if r.get("preload", {}).get("forked")
                           else "; exec'd")
                    later = r.get("after_soak_idle", {}).get("workers_uss_mb", {})
                    if later.get("n"):
                        how += f"; after the soak: median {later['median']:.1f}, max {later['max']:.1f} MB"
                out.append(row(S, f"{label} USS, each", "MB", us["median"], us["max"], "max", us["n"],
                               note=f"sum {us['sum']:.0f} MB{how}", **goal))
                ps = idle.get(f"{g}_pss_mb", {})
                if g == "workers" and ps.get("n"):
                    out.append(row(S, "worker PSS, each (its USS + its share of what it shares)", "MB",
                                   ps["median"], ps["max"], "max", ps["n"], note=f"sum {ps['sum']:.0f} MB"))
    soak = r.get("soak")
    if soak:
        for k, v in soak.get("rss", {}).items():
            if v.get("start_mb") is None:
                continue
            limit = max(1.0, 0.02 * v["start_mb"])
            half = v.get("second_half_growth_mb")
            growth = half if half is not None else v["end_mb"] - v["start_mb"]
            out.append(row(S, f"soak {soak['minutes']:.0f} min: {k} RSS at the end (raw column: at the start)", "MB",
                           v["end_mb"], v["max_mb"], "max", len(soak.get("samples", [])), v["start_mb"],
                           f"RSS at {soak.get('start_at_s', 0):.0f} s", goal="no growth beyond noise (2nd half)",
                           met=growth <= limit,
                           note=f"growth {v['growth_mb']:+.1f} MB in all, {growth:+.1f} MB in the second half "
                                f"(limit +{limit:.1f} MB); slope {v['slope_mb_per_min']:+.2f} MB/min"))
        out.append(row(S, f"soak: invokes at {soak['rate_per_s']:.0f}/s round-robin, events lost", "events",
                       soak.get("seq_gaps"), None, "", soak.get("invokes"), goal="0 failed, 0 lost",
                       met=soak.get("failures") == 0 and soak.get("seq_gaps") == 0,
                       note=f"{soak.get('failures')} failed invokes; {soak.get('events_received')} events received; "
                            f"invoke RTT median {soak.get('invoke_rtt_ms', {}).get('median', 0):.1f} ms"))
    if r.get("stop_s") is not None:
        left = r.get("leftovers_after_stop") or []
        out.append(row(S, "`supervisorctl shutdown` until supervisord exits; processes left then", "s", r["stop_s"],
                       None, "", 1, goal="< 5 s, 0 left", met=r["stop_s"] < 5 and not left,
                       note=f"{len(left)} processes left; on supervisord's STOPPING every worker stops its plugin "
                            "(gRPC Shutdown, then TERM) and Vite at once, and exits at once on its TERM"))
    left = r.get("leftovers_at_end")
    if left is not None:
        out.append(row(S, "processes left behind after shutdown", "processes", len(left), None, "", 1, goal="0",
                       met=not left))
    return out


# --- output ------------------------------------------------------------------------------------------------------------
def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    a = abs(v)
    if unit == "events/s":
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def markdown(rows: list[dict], runs: dict, meta: dict) -> str:
    lines = [
        "# omni benchmarks", "",
        f"Generated by `make bench` (`{meta['command']}`) on {meta['generated']}; {meta['cpus']} cores, "
        f"{meta['mem_gb']:.0f} GB RAM, load average {meta['load_start']} at the start and {meta['load_end']} at the end "
        f"(other work shares the machine). {'Quick run (shorter series).' if meta['quick'] else 'Full run.'}", "",
        "How to read it: **ratio** = ours / raw baseline, both measured in the same run, so machine noise largely "
        "cancels; a latency ratio of 1.0 means we add nothing. For throughput (events/s) the ratio is ours / raw, "
        "higher is better. *p99 / max* is the tail of our figure (the column says which). *runs* is how many samples "
        "the median is over. Goals are from issue 8; the budget and what bounds each figure are in "
        "[docs/performance.md](../docs/performance.md).", "",
        "| figure | ours median | p99 / max | runs | raw baseline median | ratio | goal | met? |",
        "|---|---:|---:|---:|---|---:|---|:---:|",
    ]
    section = None
    for r in rows:
        if r["section"] != section:
            section = r["section"]
            lines.append(f"| **{section}** | | | | | | | |")
        if r.get("missing"):
            lines.append(f"| {r['figure']} | not measured | | | | | | |")
            continue
        u = r["unit"]
        ours = f"{fmt(r['ours_median'], u)} {u}"
        spread = f"{r['spread_kind']} {fmt(r['spread'], u)}" if r["spread"] is not None else ""
        raw = f"{fmt(r['raw_median'], u)} {u}: {r['raw_what']}" if r["raw_median"] is not None else r["raw_what"]
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        fig = r["figure"] + (f" <br><sub>{r['note']}</sub>" if r["note"] else "")
        lines.append(f"| {fig} | {ours} | {spread} | {fmt(r['n']) if isinstance(r['n'], int) else (r['n'] or '')} "
                     f"| {raw} | {ratio} | {r['goal']} | {met} |")
    missed = [r for r in rows if r["met"] is False]
    lines += ["", f"Goals met: {sum(1 for r in rows if r['met'] is True)} of "
                  f"{sum(1 for r in rows if r['met'] is not None)}."]
    if missed:
        lines += ["Missed: " + "; ".join(r["figure"].split(" (")[0] for r in missed) +
                  ". What bounds each: [docs/performance.md](../docs/performance.md#where-the-goals-are-missed)."]
    lines += ["", "## Runs", "", "| script | command | exit | seconds | finished | JSON |", "|---|---|---|---:|---|---|"]
    for name, src in meta.get("external_sources", {}).items():
        lines.append(f"| {name} | (not run by run.py: its JSON was already in bench/out/) | | | {src} | "
                     f"bench/out/{name}.json |")
    for name, info in runs.items():
        for i in info if isinstance(info, list) else [info]:
            lines.append(f"| {name} | `{i.get('command', '')}` | {i.get('rc')} | {i.get('seconds', '')} | "
                         f"{i.get('finished', '')}{'' if i.get('this_run', True) else ' (earlier run)'} | "
                         f"{i.get('json', '')} |")
            if i.get("error"):
                lines.append(f"| | error: {i['error'].replace('|', '/')} | | | | |")
    return "\n".join(lines) + "\n"


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs of every script")
    ap.add_argument("--only", action="append", default=[], help="run only these scripts (NAME or NAME,NAME)")
    ap.add_argument("--core-repeats", type=int, default=3)
    ap.add_argument("--list", action="store_true", help="list the scripts and exit")
    ap.add_argument("--report-only", action="store_true", help="rebuild the results from bench/out/ without running")
    args = ap.parse_args()
    available = {k: v for k, v in SCRIPTS.items() if (BENCH / v[0]).exists()}
    if args.list:
        for k, v in available.items():
            print(f"{k:10s} {v[0]}  quick: {' '.join(v[3]) or '(none)'}")
        return 0
    only = {x for o in args.only for x in o.split(",") if x}
    unknown = only - set(available)
    if unknown:
        ap.error(f"unknown script(s) {sorted(unknown)}; known: {', '.join(available)}")
    selected = [k for k in available if (not only or k in only)] if not args.report_only else []
    OUT.mkdir(exist_ok=True)
    meta_path = OUT / "runs.json"
    runs_info: dict = load(meta_path) or {}
    for v in runs_info.values():
        for i in v if isinstance(v, list) else [v]:
            i["this_run"] = False
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    t_start = time.monotonic()
    for name in selected:
        if name == "core":
            infos, raws = [], []
            for rep in range(max(1, args.core_repeats)):
                out = OUT / ("core.json" if rep == 0 else f"core.r{rep + 1}.json")
                infos.append(run_script(name, args.quick, out))
                count = 20_000 if args.quick else 100_000
                raw = {f"log_throughput_{k}sub": raw_throughput(k, count) for k in (1, 10)}
                (OUT / ("rawtput.json" if rep == 0 else f"rawtput.r{rep + 1}.json")).write_text(json.dumps(raw, indent=2))
                raws.append(raw)
                log(f"raw throughput: {raw['log_throughput_1sub']['events_per_s_per_sub']:,.0f}/s to 1 subscriber, "
                    f"{raw['log_throughput_10sub']['events_per_s_per_sub']:,.0f}/s to each of 10")
            for stale in OUT.glob("core.r*.json"):
                if int(stale.stem.split(".r")[1]) > max(1, args.core_repeats):
                    stale.unlink()
                    (OUT / f"rawtput.r{stale.stem.split('.r')[1]}.json").unlink(missing_ok=True)
            runs_info[name] = infos
        else:
            runs_info[name] = run_script(name, args.quick, OUT / f"{name}.json")
        meta_path.write_text(json.dumps(runs_info, indent=2))

    # rows, from the latest JSON of every script
    rows: list[dict] = []
    builders: dict[str, Callable[[dict], list[dict]]] = {"gopath": rows_gopath, "vite": rows_vite,
                                                         "external": rows_external, "bridge": rows_bridge,
                                                         "scale": rows_scale, "debug": rows_debug,
                                                         "bursts": rows_bursts, "linkflags": rows_linkflags}
    sources: dict[str, Any] = {}
    for name in available:
        if name == "core":
            core_runs, raws = [], []
            for p in sorted(OUT.glob("core*.json")):       # core.json <-> rawtput.json, core.rN <-> rawtput.rN
                d, raw = load(p), load(OUT / p.name.replace("core", "rawtput", 1))
                if d:
                    core_runs.append(d)
                    raws.append(raw or {})
            sources["core"] = {"runs": core_runs, "raw_throughput": raws}
            if core_runs:
                try:
                    rows += rows_core(core_runs, raws)
                    continue
                except (KeyError, TypeError, ValueError) as e:
                    log(f"core: unexpected JSON shape: {e!r}")
            rows.append({**row("Event path and control", "bench_core figures", "", None), "missing": True})
            continue
        data = load(OUT / f"{name}.json")
        sources[name] = data
        if data is None:
            rows.append({**row(builders[name].__name__, f"bench_{name} figures", "", None), "missing": True,
                         "section": {"gopath": "Go path (save → ready)", "vite": "Vite", "external": "External mode",
                                     "bridge": "Frontend bridge (Chromium)", "scale": "Scale",
                                     "debug": "Debug mode (delve)",
                                     "bursts": "Go path: bursts of file events (inotify)",
                                     "linkflags": "Go path: build flags (rebuild after a one-line edit)"}[name]})
            continue
        try:
            rows += builders[name](data)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            log(f"{name}: unexpected JSON shape: {e!r}")
            rows.append({**row(name, f"bench_{name} figures (unexpected JSON: {e!r})", "", None), "missing": True})

    import psutil
    external = {n: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((OUT / f"{n}.json").stat().st_mtime))
                for n in available if n != "core" and n not in runs_info and (OUT / f"{n}.json").exists()}
    meta = {"external_sources": external, "generated": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
            "mem_gb": psutil.virtual_memory().total / 2 ** 30, "load_start": load_start,
            "load_end": " ".join(f"{x:.1f}" for x in os.getloadavg()), "quick": args.quick,
            "command": "python bench/run.py " + " ".join(sys.argv[1:]), "seconds": round(time.monotonic() - t_start),
            "python": platform.python_version(), "go": shutil.which("go")}
    (BENCH / "results.md").write_text(markdown(rows, runs_info, meta))
    (BENCH / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs_info,
                                                     "sources": sources}, indent=2, default=str))
    log(f"wrote bench/results.md and bench/results.json ({len(rows)} figures, {meta['seconds']} s)")
    failed = [n for n in selected for i in (runs_info[n] if isinstance(runs_info[n], list) else [runs_info[n]])
              if i.get("rc") != 0]
    if failed:
        log(f"failed: {', '.join(sorted(set(failed)))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
