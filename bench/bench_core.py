"""Core figures against raw pyzmq baselines measured in the same run (issue 3 and 8).

- control RTT: client library `ping` vs a raw REQ/REP echo (separate process, same message)
- event latency: worker DEALER -> broker -> SUB vs raw PUB -> XSUB/XPUB proxy (separate process) -> SUB
- log throughput to 1 and 10 subscribers, with what the high-water mark dropped (counted from seq gaps)
- one `omnictl status` process vs one `supervisorctl status` process
Ours and raw are measured in alternating blocks (ABBA), so a change of machine load hits both.

    .venv/bin/python bench/bench_core.py [--json out.json] [--quick]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.example import copy_example  # noqa: E402
from support.service import Service  # noqa: E402

from omnibroker import protocol  # noqa: E402

PAYLOAD_SIZE = 200


def stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median": statistics.median(xs), "p99": xs[min(len(xs) - 1, int(len(xs) * 0.99))], "max": xs[-1],
            "n": len(xs)}


# --- raw baselines (run in child processes, like the broker) ----------------------------------------------------------
def _raw_rep(endpoint: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind(endpoint)
    while True:
        sock.send(sock.recv())


def _raw_proxy(front: str, back: str) -> None:
    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.SNDHWM, protocol.EVENTS_SNDHWM)    # before bind: accepted connections take bind-time options
    xsub.bind(front)
    xpub.bind(back)
    zmq.proxy(xsub, xpub)


def rtt_samples(send_recv, n: int, warmup: int = 100) -> list[float]:
    for _ in range(warmup):
        send_recv()
    xs = []
    for _ in range(n):
        t = time.perf_counter()
        send_recv()
        xs.append((time.perf_counter() - t) * 1e6)
    return xs


def rtt(send_recv, n: int) -> dict:
    return stats(rtt_samples(send_recv, n))


def latency_samples(pub_send, sub: zmq.Socket, n: int, warmup: int = 50) -> list[float]:
    """Send one event at a time carrying its send time; measure until the SUB has it."""
    xs = []
    for i in range(n + warmup):
        t = time.perf_counter()
        pub_send(t)
        if not sub.poll(2000):
            raise RuntimeError("event lost in latency run")
        sub.recv_multipart()
        if i >= warmup:
            xs.append((time.perf_counter() - t) * 1e6)
    return xs


def event_latency(pub_send, sub: zmq.Socket, n: int) -> dict:
    return stats(latency_samples(pub_send, sub, n))


def interleaved(sample_ours, sample_raw, n: int, blocks: int = 10) -> tuple[dict, dict]:
    """Alternate blocks of ours and raw (ABBA...) so both see the same machine load; `sample_*(k)` -> k samples."""
    ours, raw = [], []
    per = max(1, n // blocks)
    for i in range(blocks):
        order = ((ours, sample_ours), (raw, sample_raw)) if i % 2 == 0 else ((raw, sample_raw), (ours, sample_ours))
        for out, fn in order:
            out.extend(fn(per))
    return stats(ours), stats(raw)


def count_received(subs: list, count: int, t0: float) -> dict:
    """Drain the subscribers until each has `count` events or all are silent for 1 s; losses from seq gaps."""
    nsubs = len(subs)
    got, first, last = [0] * nsubs, [None] * nsubs, [0] * nsubs
    done_at = t0
    while True:
        ready = False
        for i, s in enumerate(subs):
            while s.poll(0):
                frames = s.recv_multipart()
                seq = protocol.decode_meta(frames[2]).seq
                first[i] = first[i] or seq
                last[i] = seq
                got[i] += 1
                ready = True
                done_at = time.perf_counter()
        if all(g >= count for g in got):
            break
        if not ready and not any(s.poll(1000) for s in subs):
            break
    elapsed = done_at - t0
    dropped = [(last[i] - first[i] + 1) - got[i] if first[i] else count for i in range(nsubs)]
    return {"events": count, "received_min": min(got), "dropped_total": sum(dropped),
            "events_per_s_per_sub": min(got) / elapsed if elapsed else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 500 if args.quick else 3000
    tmp = tempfile.mkdtemp(prefix="omni-bench-")
    ctx = zmq.Context()
    results: dict = {}
    procs = [mp.Process(target=_raw_rep, args=(f"ipc://{tmp}/rep.sock",), daemon=True),
             mp.Process(target=_raw_proxy, args=(f"ipc://{tmp}/xsub.sock", f"ipc://{tmp}/xpub.sock"), daemon=True)]
    for p in procs:
        p.start()
    svc = Service()
    try:
        svc.start()
        svc.call("add", plugin="bench", path=str(copy_example(Path(tmp) / "bench", ui=False, go=False)))
        svc.wait_state("bench", lambda s: s["workerStatus"] == "up")
        body = protocol.encode(protocol.Request(id="1", command="ping", properties={}))

        # control RTT
        req = ctx.socket(zmq.REQ)
        req.connect(f"ipc://{tmp}/rep.sock")
        raw_call, ours_call = (lambda: (req.send(body), req.recv())), (lambda: svc.client.call("ping"))
        rtt_samples(raw_call, 0)
        rtt_samples(ours_call, 0)
        ours, raw = interleaved(lambda k: rtt_samples(ours_call, k, 10), lambda k: rtt_samples(raw_call, k, 10), n)
        results["control_rtt_us"] = {"ours": ours, "raw": raw, "ratio": ours["median"] / raw["median"],
                                     "what": "client-library ping vs raw REQ/REP echo"}

        # event latency
        filler = "x" * PAYLOAD_SIZE
        pub = ctx.socket(zmq.PUB)
        pub.connect(f"ipc://{tmp}/xsub.sock")
        rsub = ctx.socket(zmq.SUB)
        rsub.setsockopt(zmq.SUBSCRIBE, b"")
        rsub.connect(f"ipc://{tmp}/xpub.sock")
        meta = protocol.encode(protocol.EventMeta(epoch="e", seq=1, ts=0.0, pluginID="bench"))
        time.sleep(0.3)     # subscription propagation through the proxy; no event to wait on
        raw_send = lambda t: pub.send_multipart(      # noqa: E731
            [protocol.LOG.encode(), protocol.encode(protocol.log_payload("bench", "manager", "info", filler)), meta])

        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(svc.endpoint("workers"))
        # The fake worker registers with the pid of a stand-in process, not ours: the broker SIGKILLs a registered
        # worker that has been silent for 12.5 s, which this one is from the end of the throughput runs on.
        stand_in = subprocess.Popen(["sleep", "3600"])
        procs.append(stand_in)
        dealer.send_multipart([protocol.K_REGISTER, protocol.encode(protocol.Register(
            plugin="bench", pid=stand_in.pid, state=protocol.DevServerState(pluginID="bench")))])
        assert dealer.poll(5000) and dealer.recv_multipart()[0] == protocol.K_WELCOME
        osub = svc.subscribe(protocol.LOG).sock
        time.sleep(0.3)
        ours_send = lambda t: dealer.send_multipart(      # noqa: E731
            [protocol.K_EVENT, protocol.LOG.encode(),
             protocol.encode(protocol.log_payload("bench", "manager", "info", filler))])
        latency_samples(raw_send, rsub, 0)
        latency_samples(ours_send, osub, 0)
        ours_ev, raw_ev = interleaved(lambda k: latency_samples(ours_send, osub, k, 10),
                                      lambda k: latency_samples(raw_send, rsub, k, 10), n)
        results["event_latency_us"] = {"ours": ours_ev, "raw": raw_ev, "ratio": ours_ev["median"] / raw_ev["median"],
                                       "what": "worker->broker->SUB vs PUB->XSUB/XPUB proxy->SUB"}

        # throughput with 1 and 10 subscribers
        for nsubs in (1, 10):
            subs = [svc.subscribe(protocol.LOG).sock for _ in range(nsubs)]
            time.sleep(0.3)
            count = 20_000 if args.quick else 100_000
            payload = protocol.encode(protocol.log_payload("bench", "manager", "info", filler))
            t0 = time.perf_counter()
            for _ in range(count):
                dealer.send_multipart([protocol.K_EVENT, protocol.LOG.encode(), payload])
            counted = count_received(subs, count, t0)
            results[f"log_throughput_{nsubs}sub"] = counted
            for s in subs:
                s.close(0)

        # one CLI process each
        env = svc.env
        conf = str(Path(__file__).resolve().parent.parent / "supervisor.d" / "omni.conf")

        def timed(cmd, k):
            xs = []
            for _ in range(k):
                t = time.perf_counter()
                subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
                xs.append((time.perf_counter() - t) * 1e3)
            return xs
        bindir = Path(sys.executable).parent
        ours_cmd = [str(bindir / "omnictl"), "status", "bench"]
        sup_cmd = [str(bindir / "supervisorctl"), "-c", conf, "status"]
        timed(ours_cmd, 1)
        timed(sup_cmd, 1)
        runs = 6 if args.quick else 16
        ours_cli, sup_cli = interleaved(lambda k: timed(ours_cmd, k), lambda k: timed(sup_cmd, k), runs, runs // 2)
        results["cli_ms"] = {"ours": ours_cli, "raw": sup_cli, "ratio": ours_cli["median"] / sup_cli["median"],
                             "what": "one `omnictl status` process vs one `supervisorctl status` process"}
    finally:
        svc.cleanup()
        for p in procs:
            p.kill()
            if isinstance(p, subprocess.Popen):
                p.wait()
        ctx.destroy(linger=0)

    for key, r in results.items():
        if "ratio" in r:
            print(f"{key:<24} ours median {r['ours']['median']:9.1f} p99 {r['ours']['p99']:9.1f} | raw median "
                  f"{r['raw']['median']:9.1f} p99 {r['raw']['p99']:9.1f} | ratio {r['ratio']:.2f}  ({r['what']})")
        else:
            print(f"{key:<24} {json.dumps(r)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
