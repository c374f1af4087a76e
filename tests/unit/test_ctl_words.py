"""omnictl's human output (units, plain words, readable times), `rebuild`'s reply, and the venv's supervisord
defaults hook, without a service."""
from __future__ import annotations

import asyncio
import datetime as dt
import os

from omnibroker import ctl, locations
from omnibroker.commands import COMMANDS


def test_state_in_plain_words_with_units():
    now = dt.datetime.now(dt.timezone.utc)
    stamp = (now - dt.timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    out = ctl._human("status", {"pluginID": "hello", "lastBuildDuration": 4916255401, "grpcConnected": True,
                                "buildQueued": False, "lastBuildTime": stamp, "vitePort": 0, "lastError": ""})
    lines = {k: v.strip() for k, v in (line.split(None, 1) for line in out.splitlines())}
    assert lines["lastBuildDuration"] == "4.92 s"
    assert lines["grpcConnected"] == "yes" and lines["buildQueued"] == "no"
    local = (now - dt.timedelta(seconds=30)).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert lines["lastBuildTime"] == f"{local} (30 s ago)"
    assert lines["vitePort"] == "none" and lines["lastError"] == "none"


def test_durations_and_zero_time():
    assert ctl._word("lastBuildDuration", 812_400_000) == "812 ms"
    assert ctl._word("lastBuildDuration", 0) == "none"
    assert ctl._word("lastBuildDuration", 95 * 10**9) == "1 min 35 s"
    assert ctl._word("lastBuildTime", "0001-01-01T00:00:00Z") == "never"
    assert ctl._word("lastBuildTime", "") == "never"


def test_log_times_are_local_clock_times():
    stamp = "2026-12-01T14:10:05.123Z"
    local = dt.datetime(2026, 12, 1, 14, 10, 5, 123000, tzinfo=dt.timezone.utc).astimezone()
    out = ctl._human("logs", {"entries": [{"timestamp": stamp, "source": "vite", "level": "info", "message": "hi"}]})
    assert out.startswith(local.strftime("%H:%M:%S") + ".123 vite")


def test_global_flags_before_or_after_the_subcommand():
    def parse(*argv):
        return ctl._build_parser(list(argv)).parse_args(list(argv))
    for argv in (("--timeout", "3", "status", "hello", "--json"), ("status", "hello", "--json", "--timeout", "3"),
                 ("--json", "status", "--timeout", "3", "hello")):
        args = parse(*argv)
        assert (args.command_name, args.plugin, args.ctl_json, args.ctl_timeout) == ("status", "hello", True, 3.0)
    args = parse("--timeout", "2", "invoke", "hello", "--method", "/a.B/C", "--request", "", "--timeout", "7")
    assert (args.ctl_timeout, args.timeout) == (2.0, 7.0)      # after `invoke`, --timeout is invoke's own
    assert parse("status", "hello").ctl_timeout == 5.0 and not parse("status", "hello").ctl_json


def test_rebuild_replies_accepted_as_documented():
    class Broker:
        async def forward(self, cmd, props):
            return {"pluginID": props["plugin"], "goStatus": "ready"}      # what the worker answers: its state

    result = asyncio.run(COMMANDS["rebuild"].execute(Broker(), {"plugin": "hello"}))
    assert result == {"pluginID": "hello", "accepted": True}
    assert ctl._human("rebuild", result).startswith("hello: rebuild accepted")
    doc = open(os.path.join(locations.REPO, "docs", "protocol.md")).read()
    assert '| `rebuild` | `plugin` | `{"pluginID", "accepted": true}`' in doc


def test_supervisor_defaults_only_for_supervisor_on_omni_conf(monkeypatch, tmp_path):
    monkeypatch.delenv("OMNI_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    conf = locations.SUPERVISOR_CONF
    locations.supervisor_defaults(["/x/bin/supervisord", "-c", "/etc/other.conf"])
    locations.supervisor_defaults(["/x/bin/python", "-c", conf])
    assert "OMNI_RUNTIME_DIR" not in os.environ and not (tmp_path / "omni").exists()
    locations.supervisor_defaults(["/x/bin/supervisorctl", f"--configuration={conf}", "status"])
    assert os.environ["OMNI_RUNTIME_DIR"] == str(tmp_path / "omni") and not (tmp_path / "omni").exists()
    monkeypatch.delenv("OMNI_RUNTIME_DIR")
    locations.supervisor_defaults(["/x/bin/supervisord", f"-c{conf}", "-n"])
    assert os.environ["OMNI_RUNTIME_DIR"] == str(tmp_path / "omni")
    assert (tmp_path / "omni").stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("OMNI_RUNTIME_DIR", "/elsewhere")
    locations.supervisor_defaults(["/x/bin/supervisord", "-c", conf])
    assert os.environ["OMNI_RUNTIME_DIR"] == "/elsewhere"
