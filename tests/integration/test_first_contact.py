"""First contact: the commands a developer types, as typed (issue 14 items 10–13).

The fresh-shell test runs `supervisord -c supervisor.d/omni.conf` exactly as typed in the repo root with the venv
active and nothing else in the environment (env -i with PATH and HOME). Its default runtime dir is then
/tmp/omni-<uid> and its bridge port 15170, which a developer's own `make run` may be using: the test runs in private
mount, network and pid namespaces (a tmpfs on /tmp, its own loopback, every process killed with the namespace), so
it collides with nothing. The repo's omni.toml is replaced by an empty one inside the namespace only, so the service
builds nothing; a plugin added with `omnictl add` proves the worker include files are found too.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support.example import REPO, VENV_BIN
from support.service import Service

from omnibroker import protocol, zmtp

FRESH_SHELL = r"""
set -u
mount -t tmpfs tmpfs /tmp
ip link set lo up
mkdir -p /tmp/home /tmp/probe
printf 'id: probe\nname: probe\nversion: 0.0.1\n' > /tmp/probe/plugin.yaml
: > /tmp/empty.toml
mount --bind /tmp/empty.toml "$REPO/omni.toml"
cd "$REPO"
typed() { env -i PATH="$REPO/.venv/bin:/usr/local/bin:/usr/bin:/bin" HOME=/tmp/home "$@"; }
trap 'typed supervisorctl -c supervisor.d/omni.conf shutdown >/dev/null 2>&1' EXIT
typed supervisord -c supervisor.d/omni.conf || { echo "SUPERVISORD FAILED"; exit 1; }
deadline=$((SECONDS + 60))
until typed omnictl --timeout 1 ping >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "NO PING"; cat /tmp/omni-*/supervisord.log; exit 1; }
    sleep 0.1
done
echo "== ping"; typed omnictl ping
echo "== add"; typed omnictl add probe --path /tmp/probe >/dev/null
until typed supervisorctl -c supervisor.d/omni.conf status omniworker-probe | grep -q RUNNING; do
    [ $SECONDS -lt $deadline ] || { echo "NO WORKER"; exit 1; }
    sleep 0.1
done
until typed omnictl status probe --json | grep -q '"workerStatus": "up"'; do
    [ $SECONDS -lt $deadline ] || { echo "WORKER NOT UP"; exit 1; }
    sleep 0.1
done
echo "== supervisorctl"; typed supervisorctl -c supervisor.d/omni.conf status
echo "== runtime"; stat -c '%a %U %n' /tmp/omni-$(id -u); ls /tmp/omni-$(id -u)/workers
echo "== list"; typed omnictl list --json
echo "== shutdown"; typed supervisorctl -c supervisor.d/omni.conf shutdown
trap - EXIT
until [ ! -e /tmp/omni-$(id -u)/supervisord.pid ]; do
    [ $SECONDS -lt $deadline ] || { echo "NO SHUTDOWN"; exit 1; }
    sleep 0.1
done
echo "== done"
"""


def _namespaces_available() -> str:
    if os.geteuid() != 0:
        return "needs root for private mount/network/pid namespaces (unshare)"
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "-m", "-n", "-p", "-f", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare refused here: {probe.stderr.decode().strip()}"
    return ""


def test_supervisord_as_typed_in_a_fresh_shell():
    why = _namespaces_available()
    if why:
        pytest.skip(why)
    run = subprocess.run(["unshare", "-m", "-n", "-p", "-f", "--mount-proc", "bash", "-c", FRESH_SHELL],
                         env={"REPO": str(REPO), "PATH": os.environ["PATH"]}, capture_output=True, text=True,
                         timeout=120)
    out = run.stdout + run.stderr
    assert "cannot be expanded" not in out, f"the venv lacks omni-supervisor-defaults.pth (`make setup`):\n{out}"
    assert run.returncode == 0 and "== done" in out, out
    sections = dict(part.split("\n", 1) for part in out.split("== ")[1:])
    assert sections["ping"].startswith("pong: epoch"), out
    for program in ("omnibroker", "omnibridge", "omnievents", "omniworker-probe"):
        assert any(line.startswith(program) and "RUNNING" in line for line in sections["supervisorctl"].splitlines()), \
            out
    mode, _, path = sections["runtime"].splitlines()[0].split(" ", 2)
    assert (mode, path) == ("700", f"/tmp/omni-{os.geteuid()}"), out
    assert "omniworker-probe.conf" in sections["runtime"], out
    assert '"pluginID": "probe"' in sections["list"], out
    assert "Shut down" in sections["shutdown"], out


# --- item 11: no service answers at once; a restarting broker is waited for --------------------------------------

def omnictl(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    run = subprocess.run([str(VENV_BIN / "omnictl"), *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    return run, time.monotonic() - t0


def bare_env(runtime: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    return dict(env, OMNI_RUNTIME_DIR=str(runtime))


def test_omnictl_without_service_answers_at_once(tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    run, took = omnictl("status", "hello", env=bare_env(runtime))
    assert run.returncode == 3, run
    assert f"no omni service at {runtime}: start it with `supervisord -c {REPO}/supervisor.d/omni.conf`" \
        in run.stderr, run.stderr
    assert took < 1.0, f"omnictl took {took:.2f}s with no socket file"
    # A socket file left behind by a dead service: the connection is refused.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(runtime / "control.sock"))        # bound, never listening: connect() gets ECONNREFUSED
    try:
        run, took = omnictl("ping", env=bare_env(runtime))
    finally:
        stale.close()
    assert run.returncode == 3 and f"no omni service at {runtime}" in run.stderr, run
    assert took < 1.0, f"omnictl took {took:.2f}s on a refused connection"


def test_omnictl_waits_for_a_restarting_broker(service):
    sup = service.supervisor()
    sup.stopProcess("omnibroker")
    assert not zmtp.listening(str(service.runtime / "control.sock"))
    proc = subprocess.Popen([str(VENV_BIN / "omnictl"), "ping"], env=bare_env(service.runtime),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sup.startProcess("omnibroker", False)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.startswith("pong"), (out, err)


# --- item 12: a worker stopped by hand in supervisorctl ------------------------------------------------------------

def supervisorctl(service: Service, *args: str) -> str:
    run = subprocess.run([str(VENV_BIN / "supervisorctl"), "-c", "supervisor.d/omni.conf", *args], cwd=REPO,
                         env=bare_env(service.runtime), capture_output=True, text=True, timeout=60)
    return run.stdout + run.stderr


def probe_plugin(root: Path) -> Path:
    root.mkdir()
    (root / "plugin.yaml").write_text("id: probe\nname: probe\nversion: 0.0.1\n")
    return root


def test_worker_stopped_in_supervisorctl_answers_at_once_and_start_runs_it(service, tmp_path):
    service.call("add", plugin="probe", path=str(probe_plugin(tmp_path / "probe")))
    service.wait_state("probe", lambda s: s["workerStatus"] == "up", what="worker up")
    old_pid = service.wait_program("omniworker-probe")
    events = service.subscribe(protocol.STATUS)
    assert "stopped" in supervisorctl(service, "stop", "omniworker-probe")
    events.wait(lambda e: e.payload["pluginID"] == "probe" and e.payload["workerStatus"] == "stopped",
                what="workerStatus stopped")
    state = service.call("status", plugin="probe")
    assert state["workerStatus"] == "stopped" and state["workerPid"] == 0, state

    t0 = time.monotonic()
    reply = service.request("invoke", wait=30, plugin="probe", method="/x.Y/Z", request="")
    took = time.monotonic() - t0
    assert reply.status == "error" and reply.code == "worker_unavailable", reply
    assert "omniworker-probe" in reply.reason and "STOPPED" in reply.reason and "omnictl start probe" in reply.reason
    assert f"{service.runtime}/logs/omniworker-probe.log" in reply.reason, reply.reason
    assert took < 2.0, f"invoke on a stopped worker took {took:.1f}s"

    # omnictl names the worker, not the broker, as the part that did not answer
    run, took = omnictl("invoke", "probe", "--method", "/x.Y/Z", "--request", "", env=bare_env(service.runtime))
    assert run.returncode == 1 and took < 2.0, (run, took)
    assert "the broker answered; the worker for 'probe' did not (worker_unavailable)" in run.stderr, run.stderr
    assert "omniworker-probe.log" in run.stderr and "broker running" not in run.stderr, run.stderr

    # `stop` of a plugin whose worker is stopped: nothing runs, so it is done at once
    run, took = omnictl("stop", "probe", "--json", env=bare_env(service.runtime))
    assert run.returncode == 0 and took < 2.0, (run, took)
    assert json.loads(run.stdout)["mode"] == "idle" and json.loads(run.stdout)["workerStatus"] == "stopped"
    assert service.program_pid("omniworker-probe") is None

    # `start` is the wish to run it: the program is started again and the plugin answers
    run, took = omnictl("start", "probe", "--no-vite", "--no-go", "--json", env=bare_env(service.runtime))
    assert run.returncode == 0, run
    assert json.loads(run.stdout)["workerStatus"] == "up", run.stdout
    new_pid = service.wait_program("omniworker-probe", not_pid=old_pid)
    assert service.call("status", plugin="probe")["workerPid"] == new_pid


def test_worker_stopped_before_the_broker_started_is_reported_stopped(service, tmp_path):
    service.call("add", plugin="probe", path=str(probe_plugin(tmp_path / "probe")))
    service.wait_state("probe", lambda s: s["workerStatus"] == "up", what="worker up")
    assert "stopped" in supervisorctl(service, "stop", "omniworker-probe")
    broker = service.program_pid("omnibroker")
    os.kill(broker, signal.SIGKILL)
    service.wait_program("omnibroker", not_pid=broker)
    service.wait_ping()
    service.wait_state("probe", lambda s: s["workerStatus"] == "stopped", timeout=10, what="stopped after restart")
    t0 = time.monotonic()
    reply = service.request("invoke", wait=30, plugin="probe", method="/x.Y/Z", request="")
    assert reply.code == "worker_unavailable" and time.monotonic() - t0 < 2.0, reply


# --- item 13: omnictl's flags and words ----------------------------------------------------------------------------

def test_omnictl_flags_after_the_subcommand_and_plain_words(service, tmp_path):
    service.call("add", plugin="probe", path=str(probe_plugin(tmp_path / "probe")))
    service.wait_state("probe", lambda s: s["workerStatus"] == "up", what="worker up")
    env = bare_env(service.runtime)
    after, _ = omnictl("status", "probe", "--json", "--timeout", "3", env=env)
    before, _ = omnictl("--json", "status", "probe", env=env)
    assert after.returncode == 0 and before.returncode == 0, (after, before)
    assert json.loads(after.stdout)["pluginID"] == json.loads(before.stdout)["pluginID"] == "probe"
    human, _ = omnictl("status", "probe", env=env)
    lines = dict(line.split(None, 1) if " " in line.strip() else (line.strip(), "") for line in
                 human.stdout.splitlines())
    assert lines["grpcConnected"] == "no" and lines["registered"] == "yes", human.stdout
    assert lines["lastBuildTime"] == "never" and lines["lastBuildDuration"] == "none", human.stdout
    assert "True" not in human.stdout and "False" not in human.stdout, human.stdout


def test_omnictl_names_a_silent_worker_and_its_log(service, tmp_path):
    service.call("add", plugin="probe", path=str(probe_plugin(tmp_path / "probe")))
    service.wait_state("probe", lambda s: s["workerStatus"] == "up", what="worker up")
    pid = service.wait_program("omniworker-probe")
    os.kill(pid, signal.SIGSTOP)        # alive but silent: the broker answers for it
    try:
        run, took = omnictl("logs", "probe", env=bare_env(service.runtime))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert run.returncode == 1, run
    assert "the broker answered; the worker for 'probe' did not (" in run.stderr, run.stderr
    assert f"omniworker-probe (log: {service.runtime}/logs/omniworker-probe.log)" in run.stderr, run.stderr
    assert "broker running" not in run.stderr
