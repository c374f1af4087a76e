"""Browser tests: real supervisord (tests/support/service.py) running a private copy of examples/hello-plugin, and
Debian's Chromium driven by Playwright for Python. Screenshots go to tests/artifacts/ (git-ignored)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from support.config import plugin_toml
from support.example import EXAMPLE, REPO
from support.service import Service

ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    path = shutil.which("chromium")
    if not path:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return path


def copy_plugin(dest: Path) -> Path:
    """A private copy of the example plugin: everything but build/ and ui/node_modules (linked to the original)."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("build", "node_modules", "dist", ".devinfo"))
    modules = EXAMPLE / "ui" / "node_modules"
    if not modules.is_dir():
        pytest.skip("examples/hello-plugin/ui/node_modules missing (cd examples/hello-plugin/ui && npm ci)")
    (dest / "ui" / "node_modules").symlink_to(modules)
    return dest


class Omni:
    """The running service as the browser tests see it."""

    def __init__(self, svc: Service, plugin_dir: Path):
        self.svc = svc
        self.plugin_dir = plugin_dir
        self.port, self.token = wait_bridge(svc)

    @property
    def url(self) -> str:
        """The dashboard's URL with its token, as `make run` and `omnictl dashboard` print it."""
        return (self.svc.runtime / "bridge.url").read_text().strip()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def bridge_log(self) -> str:
        return (self.svc.runtime / "omnibridge.log").read_text(errors="replace")

    def wait_bridge_log(self, text: str, timeout: float = 10.0) -> None:
        """supervisord copies the bridge's stderr into omnibridge.log a little later: poll the file for `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.bridge_log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in omnibridge.log:\n{self.bridge_log()[-2000:]}")
            time.sleep(0.05)


def wait_bridge(svc: Service, timeout: float = 30.0) -> tuple[int, str]:
    return svc.bridge_address(timeout)


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    plugin_dir = copy_plugin(tmp_path_factory.mktemp("plugins") / "hello")
    svc = Service(config_text=plugin_toml("hello", plugin_dir, cookie=None))
    svc.start()
    try:
        yield Omni(svc, plugin_dir)
    finally:
        for name in ("omnibridge.log", "omniworker-hello.log", "omnibroker.log"):
            text = svc.logs(name, lines=400)
            if text:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                (ARTIFACTS / f"{name}.txt").write_text(text)
        svc.cleanup()


@pytest.fixture
def fake_bridge():
    """The real omnibridge process in front of omnibridge.testing.FakeBroker with 10 plugins (no Vite, no Go)."""
    from omnibridge.testing import BridgeProcess
    with BridgeProcess(plugins=[f"p{i:02d}" for i in range(10)]) as bp:
        yield bp


@pytest.fixture(scope="session", autouse=True)
def _clean_failed_artifacts():
    if ARTIFACTS.is_dir():
        for old in ARTIFACTS.glob("FAILED-*"):
            old.unlink()


@pytest.fixture(scope="module")
def browser():
    """Module scope: Playwright's sync API keeps an event loop running in this thread while it is alive, which
    other test modules (asyncio.run) must not see."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.console = []
    pg.on("console", lambda m: pg.console.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: pg.console.append(f"pageerror: {e}"))
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            pg.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"), full_page=True)
        except Exception:       # noqa: BLE001
            pass
        (ARTIFACTS / f"FAILED-{request.node.name}.console.txt").write_text("\n".join(pg.console))
    context.close()


@pytest.fixture
def shot():
    """shot(page, name): a full-page screenshot kept as tests/artifacts/<name>.png."""
    def take(pg, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    return take
