"""What a worker loads: each part's libraries only with that part (grpc and the Go watcher's watchdog with a Go half,
the Vite code with a UI half, PyYAML at the first plugin.yaml read, protobuf never), so an idle worker stays small
(docs/performance.md, "A worker's memory and start-up")."""
import json
import subprocess
import sys

from grpc_health.v1 import health_pb2

from omniworker import goplugin

HEAVY = ("grpc", "google.protobuf", "watchdog", "yaml", "omniworker.vite", "omniworker.gopath",
         "omniworker.external", "omniworker.delve")


def loaded_after(code: str) -> set[str]:
    """The HEAVY modules a fresh interpreter holds after running `code`."""
    probe = f"import json, sys\n{code}\nprint(json.dumps([m for m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return {m for m in json.loads(out) if m in HEAVY}


def test_an_idle_worker_loads_no_part():
    assert loaded_after("import omniworker.worker") == set()


def test_the_go_half_loads_grpc_and_watchdog_but_no_protobuf():
    assert loaded_after("import omniworker.worker, omniworker.gopath") == {"grpc", "watchdog", "omniworker.gopath"}


def test_the_vite_half_loads_neither_grpc_nor_watchdog():
    assert loaded_after("import omniworker.worker, omniworker.vite") == {"omniworker.vite"}


def test_health_check_bytes_are_grpc_health_v1():
    assert goplugin.HEALTH_REQUEST == health_pb2.HealthCheckRequest(service="plugin").SerializeToString()
    assert goplugin.HEALTH_SERVING == health_pb2.HealthCheckResponse(
        status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()
    assert goplugin.HEALTH_SERVING != health_pb2.HealthCheckResponse(
        status=health_pb2.HealthCheckResponse.NOT_SERVING).SerializeToString()
