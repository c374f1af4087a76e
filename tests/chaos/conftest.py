"""Chaos suite: print the measured recovery times at the end of the run (and write them as JSON when
OMNI_CHAOS_RESULTS names a file), so docs/reliability.md can quote a real run."""
import json
import os
from pathlib import Path


def pytest_terminal_summary(terminalreporter):
    import kit
    if not kit.RESULTS:
        return
    terminalreporter.section("omni chaos: measured recovery")
    for key, values in kit.RESULTS.items():
        terminalreporter.write_line(f"{key:14} " + "  ".join(f"{k}={v}" for k, v in values.items()))
    out = os.environ.get("OMNI_CHAOS_RESULTS")
    if out:
        Path(out).write_text(json.dumps(kit.RESULTS, indent=2, sort_keys=True))
