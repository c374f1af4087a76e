"""Scale: N registered plugins (default 100; Go path on all, Vite on 10) under one real service (supervisord, broker,
one worker per plugin), on private copies of examples/hello-plugin.

Phases, in one run:
  raw      the floor: the same N fresh copies built with plain `go build`, `build_slots` at a time (what omni's cold
           start cannot beat), then built again (no-op: outputs up to date), same parallelism
  cold     supervisord start -> every plugin ready (goStatus ready + grpcConnected; viteStatus ready for the Vite
           ones); every plugin compiles and links its own copy
  idle     broker / supervisord / worker CPU % over --idle-seconds; RSS and USS of the broker, each worker, each
           plugin binary and each Vite
  soak     --soak-minutes of steady events: a client calls `invoke` round-robin over all plugins at --soak-rate/s
           (each call: control request -> broker -> worker -> gRPC -> plugin, whose log line comes back as a log
           event to a subscriber that checks `seq` for gaps); RSS of the broker and of two workers sampled every 10 s
  warm     supervisord stopped and started again on the same trees and home (the morning restart: nothing changed,
           so each worker's build stamp matches and it starts the installed binary without `go build`; the raw
           baseline is what the no-op `go build`s alone would cost) -> every plugin ready again
Cleanup: supervisord shut down, then a scan for any process left behind (none is expected; any found is reported
and killed).

    .venv/bin/python bench/bench_scale.py [--plugins 100] [--vite 10] [--soak-minutes 10] [--quick] [--json PATH]

Needs fs.inotify.max_user_instances above N + Vites + what else runs (one inotify instance per worker's Go watcher
and per Vite; the default 128 is not enough next to other users): the script says so and stops otherwise.
"""
from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from support.example import EXAMPLE, GO_ENV, copy_example  # noqa: E402
from support.service import Service  # noqa: E402

from omnibroker import protocol  # noqa: E402
from omnibroker.client import parse_event  # noqa: E402

MB = 2 ** 20
GREET = "/hello.Greeter/Greet"


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    if not xs:
        return {"n": 0}
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "n": len(xs),
            "p99": xs[min(len(xs) - 1, int(len(xs) * 0.99))]}


def inotify_in_use() -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                        n += 1
                except OSError:
                    pass
        except OSError:
            pass
    return n


def preflight(n: int, vites: int) -> None:
    try:
        limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    except OSError:
        limit = 1 << 30
    used = inotify_in_use()
    need = n + vites + 8
    if used + need > limit:
        raise SystemExit(f"fs.inotify.max_user_instances is {limit}, {used} in use, this run needs ~{need} more "
                         f"(one per worker's Go watcher and per Vite): raise it first, e.g. "
                         f"`sudo sysctl fs.inotify.max_user_instances=1024`")
    avail = psutil.virtual_memory().available
    need_mem = n * 90 * MB + vites * 300 * MB
    if avail < need_mem * 1.3:
        raise SystemExit(f"only {avail / MB:.0f} MB available; {n} plugins ({vites} with Vite) need ~"
                         f"{need_mem / MB:.0f} MB")


def load_greeter():
    spec = importlib.util.spec_from_file_location("greeter_pb", EXAMPLE / "greeter_pb.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def plugin_ids(n: int) -> list[str]:
    return [f"p{i:03d}" for i in range(n)]


def config_text(root: Path, ids: list[str], vites: int, vite_ports: tuple[int, int]) -> str:
    lines = ["[service]", f"vite_ports = [{vite_ports[0]}, {vite_ports[1]}]",
             "# build_slots: the default (number of cores)", ""]
    env = ", ".join(f'{k} = "{v}"' for k, v in GO_ENV.items())
    for i, pid in enumerate(ids):
        lines += [f"[plugins.{pid}]", f'path = "{root / pid}"', "autostart = true",
                  f"vite = {'true' if i < vites else 'false'}", f"[plugins.{pid}.build]", f"env = {{ {env} }}",
                  # every copy is the example plugin, whose go-plugin cookie value is "hello" (not the plugin id)
                  f"[plugins.{pid}.handshake]", 'cookie_value = "hello"', ""]
    return "\n".join(lines)


def ready(s: dict, vite: bool) -> bool:
    return s.get("goStatus") == "ready" and bool(s.get("grpcConnected")) and (not vite or s.get("viteStatus") == "ready")


# --- raw floor ----------------------------------------------------------------------------------------------------------
def raw_builds(root: Path, n: int, slots: int) -> dict:
    """Plain `go build` of n fresh copies, `slots` at a time; then the same again (no-op)."""
    trees = []
    for i in range(n):
        dest = root / f"r{i:03d}"
        copy_example(dest, ui=False)
        trees.append(dest)
    env = dict(os.environ, **GO_ENV)

    def build(tree: Path) -> float:
        t = time.monotonic()
        subprocess.run(["go", "build", "-o", "build/bin/plugin", "./pkg"], cwd=tree, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return time.monotonic() - t

    out = {}
    for phase in ("cold", "noop"):
        t0, ru0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        with ThreadPoolExecutor(slots) as pool:
            each = list(pool.map(build, trees))
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        out[phase] = {"wall_s": time.monotonic() - t0, "each_s": stats(each), "cpu_s": cpu}
        log(f"raw {phase}: {n} go builds, {slots} at a time: {out[phase]['wall_s']:.1f} s, {cpu:.1f} CPU-s "
            f"(each: median {out[phase]['each_s']['median']:.2f} s)")
    return out


# --- the service ----------------------------------------------------------------------------------------------------------
class Watch:
    """Status events -> latest state per plugin and the first time each plugin was seen registered / ready."""

    def __init__(self, svc: Service, ids: list[str], vite_ids: set[str]):
        self.svc, self.ids, self.vite_ids = svc, ids, vite_ids
        self.sock = svc.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, protocol.SUBSCRIBER_RCVHWM)
        self.sock.setsockopt(zmq.SUBSCRIBE, protocol.STATUS.encode())
        self.sock.connect(svc.endpoint("events"))     # before the broker binds: ZeroMQ reconnects
        self.states: dict[str, dict] = {}
        self.registered: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.t0 = 0.0

    def _apply(self, s: dict, now: float) -> None:
        pid = s.get("pluginID")
        if pid not in self.states and pid not in self.ids:
            return
        self.states[pid] = s
        if s.get("workerStatus") == "up" and pid not in self.registered:
            self.registered[pid] = now - self.t0
        if ready(s, pid in self.vite_ids) and pid not in self.ready_at:
            self.ready_at[pid] = now - self.t0

    def run_until_ready(self, timeout: float, stall: float = 90.0) -> bool:
        """Until all are ready, `timeout` passes, or no status event came for `stall` seconds (all stuck)."""
        deadline = time.monotonic() + timeout
        last_list = 0.0
        last_report = last_event = time.monotonic()
        while time.monotonic() < deadline:
            if self.sock.poll(200):
                last_event = time.monotonic()
                while self.sock.poll(0):
                    ev = parse_event(self.sock.recv_multipart())
                    self._apply(ev.payload, time.monotonic())
            elif time.monotonic() - last_event > stall:
                log(f"no status event for {stall:.0f} s: giving up")
                return False
            now = time.monotonic()
            if now - last_list > 3.0:          # a `list` now and then: states from before we subscribed
                last_list = now
                reply = self.svc.request("list", wait=2.0)
                if reply is not None and reply.status == "ok":
                    for s in reply.result["plugins"]:
                        self._apply(s, now)
            if now - last_report > 10.0:
                last_report = now
                go = [s.get("goStatus") for s in self.states.values()]
                log(f"t={now - self.t0:5.1f}s registered {len(self.registered)}/{len(self.ids)} "
                    f"ready {len(self.ready_at)}/{len(self.ids)}; goStatus: "
                    + ", ".join(f"{k} {go.count(k)}" for k in sorted(set(go))))
            if len(self.ready_at) == len(self.ids):
                return True
        return False

    def close(self) -> None:
        self.sock.close(0)


def start_phase(svc: Service, ids: list[str], vite_ids: set[str], timeout: float, label: str) -> dict:
    watch = Watch(svc, ids, vite_ids)
    cpu0, wall0 = psutil.cpu_times(), time.monotonic()
    watch.t0 = wall0
    try:
        svc.start(timeout=60)
        t_ping = time.monotonic() - wall0
        ok = watch.run_until_ready(timeout)
        wall = time.monotonic() - wall0
    finally:
        watch.close()
    cpu1 = psutil.cpu_times()
    busy = sum(getattr(cpu1, f) - getattr(cpu0, f) for f in ("user", "system", "nice", "irq", "softirq", "steal"))
    states = watch.states
    not_ready = {p: {k: states.get(p, {}).get(k) for k in ("workerStatus", "goStatus", "viteStatus", "grpcConnected",
                                                            "lastError")}
                 for p in ids if p not in watch.ready_at}
    builds = [states[p].get("lastBuildDuration", 0) / 1e9 for p in ids if states.get(p, {}).get("lastBuildDuration")]
    res = {
        "all_ready": ok, "all_ready_s": wall if ok else None, "ping_s": t_ping,
        "all_registered_s": max(watch.registered.values()) if len(watch.registered) == len(ids) else None,
        "ready_s": stats(list(watch.ready_at.values())),
        "ready_go_only_s": stats([t for p, t in watch.ready_at.items() if p not in vite_ids]),
        "ready_vite_s": stats([t for p, t in watch.ready_at.items() if p in vite_ids]),
        "omni_build_s": stats(builds),
        "machine_cpu_busy_pct": 100 * busy / (wall * (os.cpu_count() or 1)),
        "machine_cpu_busy_s": busy,
        "not_ready": not_ready,
    }
    log(f"{label}: {'all' if ok else 'NOT all'} {len(ids)} ready after {wall:.1f} s (ping {t_ping:.1f} s, all "
        f"registered {res['all_registered_s']}, machine CPU busy {res['machine_cpu_busy_pct']:.0f} %)")
    if not ok:
        log(f"not ready: {json.dumps(dict(list(not_ready.items())[:5]))}")
    return res


def proc_tree(svc: Service, ids: list[str], vite_ids: set[str]) -> dict:
    """pids: broker, supervisord, workers, plugins, vites."""
    reply = svc.call("list", wait=10)
    states = {s["pluginID"]: s for s in reply["plugins"]}
    workers = {p: states[p].get("workerPid") for p in ids if states.get(p, {}).get("workerPid")}
    plugins = {p: states[p].get("pluginPid") for p in ids if states.get(p, {}).get("pluginPid")}
    vites = {}
    for p in vite_ids:
        try:
            for c in psutil.Process(workers[p]).children(recursive=True):
                if c.name() == "node" or "vite" in " ".join(c.cmdline()[:2]):
                    vites[p] = c.pid
                    break
        except (KeyError, psutil.Error):
            pass
    return {"broker": svc.program_pid("omnibroker"), "supervisord": svc.proc.pid, "workers": workers,
            "plugins": plugins, "vites": vites}


def preload_state(svc: Service) -> dict:
    """How supervisord starts workers (omniworker/preload.py): forked from its preloaded modules, or exec'd."""
    import xmlrpc.client
    try:
        return svc.rpc().omniworker.getPreload()
    except (xmlrpc.client.Fault, OSError) as e:
        return {"forked": False, "why_not": str(e)}


def mem(pid: int, uss: bool = True) -> dict | None:
    try:
        p = psutil.Process(pid)
        if uss:
            m = p.memory_full_info()
            return {"rss_mb": m.rss / MB, "uss_mb": m.uss / MB, "pss_mb": getattr(m, "pss", 0) / MB}
        return {"rss_mb": p.memory_info().rss / MB}
    except psutil.Error:
        return None


def cpu_s(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def cpu_account(pids: dict) -> dict:
    """CPU-seconds spent so far, by group: the workers' own, their finished children's (the `go build`s), the plugin
    binaries', the Vites' (with their children), supervisord's and the broker's. Taken right after the cold start, it
    says where the cold start's CPU went."""
    out = {"workers": 0.0, "go_builds": 0.0, "plugins": 0.0, "vites": 0.0}
    for pid in pids["workers"].values():
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out["workers"] += t.user + t.system
        out["go_builds"] += t.children_user + t.children_system
    for pid in pids["plugins"].values():
        out["plugins"] += cpu_s(pid) or 0.0
    for pid in pids["vites"].values():
        try:
            tree = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            continue
        out["vites"] += sum(cpu_s(p.pid) or 0.0 for p in tree)
    out["supervisord"] = cpu_s(pids["supervisord"]) or 0.0
    out["broker"] = cpu_s(pids["broker"]) or 0.0
    n = len(pids["workers"])
    log("cold start CPU-s: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items())
        + (f"; per worker {out['workers'] / n:.2f}" if n else ""))
    return out


def idle_phase(pids: dict, seconds: float) -> dict:
    singles = {"broker": pids["broker"], "supervisord": pids["supervisord"]}
    groups = {"workers": pids["workers"], "plugins": pids["plugins"], "vites": pids["vites"]}
    before = {k: cpu_s(v) for k, v in singles.items()}
    before_g = {g: {p: cpu_s(pid) for p, pid in d.items()} for g, d in groups.items()}
    t0 = time.monotonic()
    time.sleep(seconds)     # the measurement window itself: nothing to wait on
    wall = time.monotonic() - t0
    after = {k: cpu_s(v) for k, v in singles.items()}
    res: dict = {"seconds": wall}
    for k in singles:
        if before[k] is not None and after[k] is not None:
            res[f"{k}_cpu_pct"] = 100 * (after[k] - before[k]) / wall
    for g, d in groups.items():
        pct = []
        for p, pid in d.items():
            a, b = before_g[g].get(p), cpu_s(pid)
            if a is not None and b is not None:
                pct.append(100 * (b - a) / wall)
        res[f"{g}_cpu_pct"] = {"sum": sum(pct), **stats(pct)}
    res["broker_mem"] = mem(pids["broker"])
    res["supervisord_mem"] = mem(pids["supervisord"])
    for g, d in groups.items():
        ms = [m for m in (mem(pid) for pid in d.values()) if m]
        res[f"{g}_rss_mb"] = stats([m["rss_mb"] for m in ms])
        res[f"{g}_uss_mb"] = stats([m["uss_mb"] for m in ms])
        res[f"{g}_pss_mb"] = stats([m["pss_mb"] for m in ms])
        for kind in ("rss", "uss", "pss"):
            res[f"{g}_{kind}_mb"]["sum"] = sum(m[f"{kind}_mb"] for m in ms)
    vm = psutil.virtual_memory()
    res["machine_used_mb"] = (vm.total - vm.available) / MB
    log(f"idle {wall:.0f} s: broker {res.get('broker_cpu_pct', float('nan')):.2f} % CPU, "
        f"{res['broker_mem']['rss_mb']:.0f} MB RSS; supervisord {res.get('supervisord_cpu_pct', float('nan')):.2f} %; "
        f"workers {res['workers_cpu_pct']['sum']:.1f} % in all; worker RSS median {res['workers_rss_mb'].get('median', 0):.0f}"
        f" MB, USS median {res['workers_uss_mb'].get('median', 0):.0f} MB")
    return res


def soak_phase(svc: Service, pids: dict, ids: list[str], minutes: float, rate: float) -> dict:
    greeter = load_greeter()
    request = base64.b64encode(greeter.encode_greet_request("soak")).decode()
    tracked = {"broker": pids["broker"]}
    for p in ids[:1] + [p for p in ids if p not in pids["vites"]][:1]:
        tracked[f"worker {p}" + (" (Vite)" if p in pids["vites"] else " (Go only)")] = pids["workers"][p]
        tracked[f"plugin {p}"] = pids["plugins"].get(p)
    tracked = {k: v for k, v in tracked.items() if v}
    sub = svc.ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, protocol.SUBSCRIBER_RCVHWM)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(svc.endpoint("events"))
    time.sleep(0.3)         # subscription propagation; no event to wait on
    counts = {"events": 0, "log_events": 0, "gaps": 0}
    stop = threading.Event()

    def consume() -> None:
        last = None
        while not stop.is_set():
            if not sub.poll(200):
                continue
            while sub.poll(0):
                frames = sub.recv_multipart()
                meta = protocol.decode_meta(frames[2])
                counts["events"] += 1
                if frames[0] == protocol.LOG.encode():
                    counts["log_events"] += 1
                if last is not None and meta.seq != last + 1:
                    counts["gaps"] += meta.seq - last - 1
                last = meta.seq
    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    calls = failures = 0
    rtts: list[float] = []
    samples: list[dict] = []
    t0 = time.monotonic()
    end = t0 + minutes * 60
    next_sample = t0
    period = 1.0 / rate
    next_call = t0
    i = 0
    while True:
        now = time.monotonic()
        if now >= next_sample:
            row = {"t_s": now - t0}
            for k, pid in tracked.items():
                m = mem(pid, uss=False)
                row[k] = m["rss_mb"] if m else None
            samples.append(row)
            next_sample += 10.0
        if now >= end:
            break
        if now < next_call:
            time.sleep(min(next_call, next_sample, end) - now)
            continue
        next_call += period
        plugin = ids[i % len(ids)]
        i += 1
        t = time.perf_counter()
        reply = svc.request("invoke", wait=15.0, plugin=plugin, method=GREET, request=request)
        if reply is not None and reply.status == "ok":
            calls += 1
            rtts.append((time.perf_counter() - t) * 1000)
        else:
            failures += 1
    stop.set()
    reader.join(2)
    sub.close(0)
    wall = time.monotonic() - t0
    # start = the first sample after 10 % of the soak (min 10 s): allocator arenas and caches fill up first
    warm = [s for s in samples if s["t_s"] >= max(10.0, 0.1 * minutes * 60)] or samples
    first, last = warm[0], samples[-1]
    series = {}
    for k in tracked:
        xs = [(s["t_s"] / 60, s[k]) for s in warm if s.get(k) is not None]
        slope = 0.0
        if len(xs) >= 3:
            mx = statistics.mean(x for x, _ in xs)
            my = statistics.mean(y for _, y in xs)
            den = sum((x - mx) ** 2 for x, _ in xs)
            slope = sum((x - mx) * (y - my) for x, y in xs) / den if den else 0.0
        vals = [y for _, y in xs]
        # the second half alone: libzmq's per-pipe message queues grow in 16 KB chunks until each pipe has carried a
        # few hundred messages (at one heartbeat a second per worker that takes minutes), then stay flat
        half = [s for s in samples if s["t_s"] >= samples[-1]["t_s"] / 2 and s.get(k) is not None]
        series[k] = {"start_mb": first.get(k), "end_mb": last.get(k), "growth_mb": (last.get(k) or 0) - (first.get(k) or 0),
                     "min_mb": min(vals) if vals else None, "max_mb": max(vals) if vals else None,
                     "slope_mb_per_min": slope,
                     "second_half_start_mb": half[0][k] if half else None,
                     "second_half_growth_mb": (half[-1][k] - half[0][k]) if half else None}
    res = {"minutes": wall / 60, "rate_per_s": calls / wall, "invokes": calls, "failures": failures,
           "invoke_rtt_ms": stats(rtts), "events_received": counts["events"], "log_events": counts["log_events"],
           "seq_gaps": counts["gaps"], "rss": series, "samples": samples, "start_at_s": first["t_s"]}
    log(f"soak {wall / 60:.1f} min: {calls} invokes ({failures} failed), {counts['events']} events "
        f"({counts['log_events']} log, {counts['gaps']} lost); " + "; ".join(
            f"{k} {v['start_mb']:.1f} -> {v['end_mb']:.1f} MB" for k, v in series.items() if v["start_mb"]))
    return res


def stop_service(svc: Service, timeout: float = 120.0) -> float:
    """`supervisorctl shutdown` (SIGTERM when it fails), then the wait for supervisord's exit: seconds from the
    command to the exit."""
    t0 = time.monotonic()
    if svc.proc is not None and svc.proc.poll() is None:
        ctl = subprocess.run([str(Path(sys.executable).parent / "supervisorctl"), "-c", "supervisor.d/omni.conf",
                              "shutdown"], cwd=REPO, env=svc.env, capture_output=True, text=True)
        if "Shut down" not in ctl.stdout:
            log(f"supervisorctl shutdown: {ctl.stdout.strip()} {ctl.stderr.strip()}: SIGTERM instead")
            svc.proc.send_signal(signal.SIGTERM)
        try:
            svc.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log("supervisord did not stop in time: SIGKILL")
            os.killpg(svc.proc.pid, signal.SIGKILL)
            svc.proc.wait(5)
    svc.client.close()
    return time.monotonic() - t0


def leftovers(root: Path, runtimes: list[Path]) -> list[dict]:
    """Processes that belong to this run: cmdline, cwd or OMNI_RUNTIME_DIR under our temp root."""
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd", "name"]):
        if p.pid == me:
            continue
        try:
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["cwd"] or "")
            env_rt = ""
            if str(root) not in text:
                try:
                    env_rt = p.environ().get("OMNI_RUNTIME_DIR", "")
                except psutil.Error:
                    pass
            if str(root) in text or any(env_rt == str(r) for r in runtimes):
                found.append({"pid": p.pid, "name": p.info["name"], "cmdline": text[:200]})
        except psutil.Error:
            continue
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plugins", type=int, default=100)
    ap.add_argument("--vite", type=int, default=10, help="how many of them run Vite (default 10)")
    ap.add_argument("--soak-minutes", type=float, default=None, help="default 10, or 1 with --quick")
    ap.add_argument("--soak-rate", type=float, default=20.0, help="invokes per second during the soak")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all plugins to be ready")
    ap.add_argument("--vite-ports", default="15600:15700", help="[first, last) for this run's Vites")
    ap.add_argument("--no-raw", action="store_true", help="skip the plain go build baseline")
    ap.add_argument("--no-warm", action="store_true", help="skip the restart phase")
    ap.add_argument("--quick", action="store_true", help="1-minute soak")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    soak_minutes = args.soak_minutes if args.soak_minutes is not None else (1.0 if args.quick else 10.0)
    n, nv = args.plugins, min(args.vite, args.plugins)
    preflight(n, nv)
    first, last = (int(x) for x in args.vite_ports.split(":"))
    ids = plugin_ids(n)
    vite_ids = set(ids[:nv])
    slots = os.cpu_count() or 2         # [service] build_slots default
    root = Path(tempfile.mkdtemp(prefix="omni-bench-scale-"))
    res: dict = {"plugins": n, "vite_plugins": nv, "build_slots": slots, "cpus": os.cpu_count(),
                 "mem_total_mb": psutil.virtual_memory().total / MB, "load_at_start": os.getloadavg(),
                 "soak_minutes": soak_minutes, "soak_rate": args.soak_rate}
    runtimes: list[Path] = []
    svc = svc2 = None
    try:
        log(f"copying the example plugin {n} times ({nv} with ui/) under {root}")
        for i, pid in enumerate(ids):
            copy_example(root / pid, ui=i < nv)
        if not args.no_raw:
            res["raw_go_build"] = raw_builds(root / "raw", n, slots)
        cfg = config_text(root, ids, nv, (first, last))
        svc = Service(config_text=cfg)
        runtimes.append(svc.runtime)
        home = svc.home
        log(f"cold start: supervisord with {n} plugins")
        res["cold"] = start_phase(svc, ids, vite_ids, args.timeout, "cold")
        pids = proc_tree(svc, ids, vite_ids)
        res["cold"]["cpu_s"] = cpu_account(pids)
        res["process_counts"] = {k: (len(v) if isinstance(v, dict) else 1) for k, v in pids.items()}
        res["preload"] = preload_state(svc)
        log(f"workers: {'forked from the preloaded supervisord' if res['preload'].get('forked') else 'exec'}")
        time.sleep(5)       # let start-up stragglers settle (Vite's dependency scan) before measuring idle
        res["idle"] = idle_phase(pids, args.idle_seconds)
        if soak_minutes > 0:
            res["soak"] = soak_phase(svc, pids, ids, soak_minutes, args.soak_rate)
            res["after_soak_idle"] = idle_phase(pids, args.idle_seconds)
        log("stopping supervisord")
        res["stop_s"] = stop_service(svc)
        res["leftovers_after_stop"] = leftovers(root, runtimes)
        if not args.no_warm:
            svc2 = Service(config_text=cfg, extra_env={"OMNIVIEW_HOME": str(home)})
            runtimes.append(svc2.runtime)
            log("warm start: same trees and home, nothing changed (build stamps match)")
            res["warm"] = start_phase(svc2, ids, vite_ids, args.timeout, "warm")
            res["stop_warm_s"] = stop_service(svc2)
    finally:
        for s in (svc, svc2):
            if s is not None:
                try:
                    stop_service(s)
                    s.ctx.destroy(linger=0)
                except Exception as e:      # noqa: BLE001
                    log(f"stop failed: {e}")
        left = leftovers(root, runtimes)
        for p in left:
            try:
                os.kill(p["pid"], signal.SIGKILL)
            except OSError:
                pass
        res["leftovers_at_end"] = left
        if left:
            log(f"LEFTOVER processes (killed): {left}")
        else:
            log("no leftover processes")
        for s in (svc, svc2):
            if s is not None:
                import shutil
                shutil.rmtree(s.tmp, ignore_errors=True)
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    summary = {k: res[k] for k in ("cold", "warm") if k in res}
    print(json.dumps({k: {kk: v[kk] for kk in ("all_ready", "all_ready_s", "all_registered_s", "machine_cpu_busy_pct")}
                      for k, v in summary.items()}, indent=1))
    return 0 if res.get("cold", {}).get("all_ready") else 1


if __name__ == "__main__":
    sys.exit(main())
