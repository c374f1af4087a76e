"""omnibroker.process.watch_children_with_pidfds: asyncio still gets each child's exit status, without a thread per
child. Run in a fresh interpreter: it changes the process's event loop policy."""
from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import asyncio, sys, threading
from omnibroker.process import watch_children_with_pidfds
on = sys.argv[1] == "pidfd" and watch_children_with_pidfds()
async def main():
    procs = [await asyncio.create_subprocess_exec("sh", "-c", f"sleep 0.3; exit {i}") for i in range(3)]
    threads = threading.active_count()
    codes = [await p.wait() for p in procs]
    print(on, threads, codes)
asyncio.run(main())
"""


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12 watches children with pidfds by itself")
def test_exit_statuses_without_a_thread_per_child():
    def run(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=30,
                              check=True).stdout.split(None, 1)

    on, rest = run("pidfd")
    assert on == "True" and rest.strip() == "1 [0, 1, 2]"        # the main thread only
    on, rest = run("default")
    assert on == "False" and rest.strip() == "4 [0, 1, 2]"       # one waitpid thread per child
