"""children.marked(): which live processes carry a mark, wherever OMNI_CHILD sits in their environment."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

from omniworker.children import MARK, marked


def test_marked_finds_the_mark_first_last_or_alone_and_nothing_else():
    prefix = f"/test-marked/{uuid.uuid4().hex}|p|"
    envs = [{MARK: prefix + "a", **os.environ},                 # first entry
            {**os.environ, MARK: prefix + "b"},                 # last entry
            {MARK: prefix + "c"},                               # alone
            {**os.environ, "X": MARK + "=" + prefix + "d"},     # only inside another variable's value: not marked
            {**os.environ, MARK: prefix[:-2] + "q|e"}]          # another plugin's mark
    procs = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], env=env,
                              stdin=subprocess.PIPE) for env in envs]
    try:
        assert sorted(marked(prefix)) == sorted(p.pid for p in procs[:3])
        assert marked(prefix + "a") == [procs[0].pid]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert marked(prefix) == []
