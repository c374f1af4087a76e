"""What Omniview's own code expects of dev-server events, written as checks (omniviewdev/omniview at 94485cc,
omniviewdev/plugin-sdk). Each function cites where the fact comes from; the tests feed omni's real events through them.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

# backend/pkg/plugin/devserver/types.go: DevProcessStatus
DEV_PROCESS_STATUS = {"idle", "starting", "building", "running", "ready", "error", "stopped"}
# types.go: DevServerMode
DEV_SERVER_MODE = {"idle", "managed", "external"}
# types.go: DevServerState (json names) and their JSON types
STATE_FIELDS = {"pluginID": str, "mode": str, "devPath": str, "vitePort": int, "viteURL": str, "viteStatus": str,
                "goStatus": str, "lastBuildDuration": int, "lastBuildTime": str, "lastError": str,
                "grpcConnected": bool}
# ui/features/devtools/types.ts: DevBuildError
BUILD_ERROR_FIELDS = {"file": str, "line": int, "column": int, "message": str, "severity": str}
SEVERITIES = {"error", "warning"}
# Go's time.Time{} formatted with time.RFC3339 (instance.go State(): lastBuildTime.Format(time.RFC3339))
GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def aggregate_status(state: dict) -> str:
    """ui/features/devtools/types.ts getAggregateStatus, line for line."""
    if state["goStatus"] == "error" or state["viteStatus"] == "error":
        return "error"
    if state["goStatus"] == "building" or state["viteStatus"] == "starting":
        return "building"
    if state["viteStatus"] == "stopped" and not state["grpcConnected"]:
        return "stopped"
    if not state["grpcConnected"]:
        return "connecting"
    return "ready"


def frontend_loads_dev_ui(state: dict) -> bool:
    """ui/features/plugins/react/PluginServiceProvider.tsx: it returns early unless
    `state.viteStatus === 'ready' && state.vitePort > 0`, then imports `${devBase}/src/entry.ts`."""
    return state["viteStatus"] == "ready" and isinstance(state["vitePort"], int) and state["vitePort"] > 0


def js_date_ok(text: str) -> bool:
    """Would `new Date(text)` in a browser be a valid date? For the RFC 3339 strings Go and omni write: yes exactly
    when it parses as an ISO date-time ("" is Invalid Date)."""
    if not isinstance(text, str) or not text:
        return False
    try:
        dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def state_problems(state: dict) -> list[str]:
    """Everything in one DevServerState that Omniview's frontend would read differently from Omniview's own."""
    problems = []
    for name, kind in STATE_FIELDS.items():
        if name not in state:
            problems.append(f"missing {name}")
        elif not isinstance(state[name], kind) or (kind is int and isinstance(state[name], bool)):
            problems.append(f"{name} is {type(state[name]).__name__}, not {kind.__name__}")
    if problems:
        return problems
    for name in ("viteStatus", "goStatus"):
        if state[name] not in DEV_PROCESS_STATUS:
            problems.append(f"{name} {state[name]!r} is not a DevProcessStatus")
    if state["mode"] not in DEV_SERVER_MODE:
        problems.append(f"mode {state['mode']!r} is not a DevServerMode")
    # instance.go State() / manager.go handleExternalConnect: viteURL only when Vite is ready on a port
    if state["viteURL"] and not (state["viteStatus"] == "ready" and state["vitePort"] > 0):
        problems.append(f"viteURL {state['viteURL']!r} while viteStatus is {state['viteStatus']!r}")
    if state["viteStatus"] == "ready" and state["viteURL"] != f"http://127.0.0.1:{state['vitePort']}":
        problems.append(f"viteStatus ready but viteURL {state['viteURL']!r}")
    if not js_date_ok(state["lastBuildTime"]):
        problems.append(f"lastBuildTime {state['lastBuildTime']!r} is not a date (new Date() gives Invalid Date)")
    if state["lastBuildTime"] == GO_ZERO_TIME and state["lastBuildDuration"]:
        problems.append("lastBuildDuration set while lastBuildTime says no build yet")
    # a Go side that claims to run while nothing is connected misleads getAggregateStatus's readers
    if state["goStatus"] in ("running", "ready") and not state["grpcConnected"]:
        problems.append(f"goStatus {state['goStatus']!r} with grpcConnected false")
    return problems


def build_error_problems(err: dict) -> list[str]:
    problems = [f"{k} missing or not {t.__name__}" for k, t in BUILD_ERROR_FIELDS.items()
                if not isinstance(err.get(k), t) or (t is int and isinstance(err.get(k), bool))]
    if not problems and err["severity"] not in SEVERITIES:
        problems.append(f"severity {err['severity']!r} is not 'error' or 'warning'")
    return problems


def reload_meta_problems(meta: Any, plugin_id: str) -> list[str]:
    """plugin/dev_reload_start and _complete carry PluginMeta (plugin-sdk pkg/config/meta.go); the frontend reads
    `meta.id`."""
    if not isinstance(meta, dict):
        return [f"payload is {type(meta).__name__}, not a PluginMeta object"]
    if meta.get("id") != plugin_id:
        return [f"meta.id is {meta.get('id')!r}, not {plugin_id!r}"]
    return []


def reload_error_problems(payload: Any, plugin_id: str) -> list[str]:
    """plugin/dev_reload_error: the frontend does `const [meta, error] = ev.data`."""
    if not (isinstance(payload, list) and len(payload) == 2):
        return [f"payload is {payload!r:.120}, not [meta, error]"]
    meta, error = payload
    return reload_meta_problems(meta, plugin_id) + ([] if isinstance(error, str) and error
                                                     else [f"error text is {error!r}"])
