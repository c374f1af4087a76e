import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service import Service  # noqa: E402


@pytest.fixture
def service():
    """A fresh real service (supervisord + broker + listener) with no plugins."""
    svc = Service()
    svc.start()
    yield svc
    svc.cleanup()


@pytest.fixture(scope="module")
def shared_service():
    """One real service for a module's tests that do not break it."""
    svc = Service()
    svc.start()
    yield svc
    svc.cleanup()
