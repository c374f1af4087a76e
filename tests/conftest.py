import pytest

from support.service import Service

pytest_plugins = ["support.aio"]


@pytest.fixture
def service():
    """A fresh real service (supervisord + broker + listener) with no plugins."""
    with Service() as svc:
        yield svc


@pytest.fixture(scope="module")
def shared_service():
    """One real service for a module's tests that do not break it."""
    with Service() as svc:
        yield svc
