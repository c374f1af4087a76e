"""The shared contract check (../shared/tools/contract_check.py), run from the repo root as the team runs it."""
import subprocess
import sys

import pytest

from support.example import REPO

CHECK = REPO.parent / "shared" / "tools" / "contract_check.py"


@pytest.mark.skipif(not CHECK.exists(), reason=f"{CHECK} is not beside this checkout")
def test_shared_contract_check_passes():
    out = subprocess.run([sys.executable, str(CHECK)], cwd=REPO, capture_output=True, text=True, timeout=180)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert out.returncode == 0 and last.startswith("ok:"), out.stdout + out.stderr
