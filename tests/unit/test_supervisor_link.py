"""omnibroker.supervisor_link's update of our programs against a fake supervisord: every new or changed worker
program is added in one system.multicall (so supervisord forks them in one pass: omniworker/preload.py), other
programs are left alone, and a fault in the answer is raised as a single call would raise it."""
from __future__ import annotations

import xmlrpc.client

import pytest

from doubles import FakeSupervisorRPC
from omnibroker.supervisor_link import _update_ours


def test_all_new_and_changed_workers_are_added_in_one_request():
    rpc = FakeSupervisorRPC(added=["omniworker-a", "omniworker-b", "other"], changed=["omniworker-c"],
                            removed=["omniworker-d", "other2"])
    done = _update_ours(rpc)
    assert done == {"added": ["omniworker-a", "omniworker-b"], "changed": ["omniworker-c"],
                    "removed": ["omniworker-d"]}
    assert rpc.multicalls == [["supervisor.addProcessGroup omniworker-c", "supervisor.addProcessGroup omniworker-a",
                               "supervisor.addProcessGroup omniworker-b"]]
    # the removed and the changed ones are stopped and removed first, one by one; `other*` are never touched
    assert [c for c in rpc.calls if c[0] != "reloadConfig"] == [
        ("stopProcessGroup", "omniworker-d", True), ("removeProcessGroup", "omniworker-d"),
        ("stopProcessGroup", "omniworker-c", True), ("removeProcessGroup", "omniworker-c")]


def test_nothing_to_add_makes_no_multicall():
    rpc = FakeSupervisorRPC(removed=["omniworker-d"])
    assert _update_ours(rpc)["removed"] == ["omniworker-d"]
    assert rpc.multicalls == []


def test_a_fault_in_the_answer_is_raised_after_all_were_run():
    rpc = FakeSupervisorRPC(added=["omniworker-a", "omniworker-b"], faults={"omniworker-a"})
    with pytest.raises(xmlrpc.client.Fault, match="ALREADY_ADDED: omniworker-a"):
        _update_ours(rpc)
    assert len(rpc.multicalls[0]) == 2
