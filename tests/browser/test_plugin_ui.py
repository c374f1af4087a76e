"""The dashboard loads real plugin UIs the way Omniview does (issue 14 item 6): a real Vite serving a fixture UI from
tests/browser/fixtures/, the real bridge in front of omnibridge.testing.FakeBroker (which says Vite is `ready` on that
port), Chromium. Two shapes of entry:

- ui-component: no src/entry.ts, so src/entry.tsx, whose default export is a React component: rendered, with React
  Fast Refresh keeping its state across an edit;
- ui-routes: src/entry.ts exports an Omniview plugin object with routes: its index route's component is rendered,
  and the card lists the module's exports and routes.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from support.example import EXAMPLE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LOAD_TIMEOUT = 90_000       # ms: Vite's first dependency optimisation on 2 shared cores


class Vite:
    """`vite` serving a private copy of a fixture UI (node_modules linked to the example plugin's)."""

    def __init__(self, fixture: str, dest: Path):
        modules = EXAMPLE / "ui" / "node_modules"
        if not (modules / ".bin" / "vite").exists():
            pytest.skip("examples/hello-plugin/ui/node_modules missing (make setup)")
        self.dir = dest / fixture
        shutil.copytree(FIXTURES / fixture, self.dir)
        (self.dir / "node_modules").symlink_to(modules)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log_path = dest / f"vite-{fixture}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["node_modules/.bin/vite", "--host", "127.0.0.1", "--port", str(self.port), "--strictPort",
             "--clearScreen", "false"], cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vite exited {self.proc.returncode}: {self.logs()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break           # it answers
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"vite did not answer within 60 s: {self.logs()}") from None
                time.sleep(0.1)     # polling a port a child process opens: nothing to wait on

    def warm(self, *paths: str) -> None:
        """Ask for the modules the dashboard will load, and wait until Vite has pre-bundled react-dom/client (which
        only the dashboard asks for). A cold Vite re-bundles its dependencies as it discovers them and then makes the
        pages it serves reload once: the tests below count on a page that is not reloaded behind their back."""
        for path in (*paths, "/@id/react-dom/client"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=60).close()
            except urllib.error.HTTPError as e:
                raise AssertionError(f"vite answered {e.code} for {path}: {self.logs()}") from None
        deadline = time.monotonic() + 60
        while "dependency optimized: react-dom/client" not in self.logs() or "reloading" not in self.logs():
            assert time.monotonic() < deadline, f"vite did not settle its dependencies: {self.logs()}"
            time.sleep(0.1)     # polling Vite's log file: nothing to wait on

    def logs(self) -> str:
        """The log's tail without colours (Vite colours its output when `CI` is set, as on the CI machine)."""
        from omniworker.context import strip_ansi
        return strip_ansi(self.log_path.read_text(errors="replace"))[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def ui_bridge(tmp_path_factory):
    """One bridge, two plugins: `comp` (ui-component) and `routes` (ui-routes), each with its own Vite."""
    from omnibridge.testing import BridgeProcess, running_state

    tmp = tmp_path_factory.mktemp("ui")
    vites = {}
    try:
        vites["comp"] = Vite("ui-component", tmp)
        vites["routes"] = Vite("ui-routes", tmp)
        vites["comp"].warm("/src/entry.tsx")
        vites["routes"].warm("/src/entry.ts", "/src/Home.tsx", "/src/Settings.tsx")
        with BridgeProcess(plugins=list(vites)) as bp:
            for pid, vite in vites.items():
                st = running_state(pid, vite.port)
                st.viteStatus, st.viteURL = "ready", f"http://127.0.0.1:{vite.port}"
                bp.fake.status(st)
            yield bp, vites
    finally:
        for vite in vites.values():
            vite.close()


def test_component_entry_is_rendered_and_hot_updated_with_its_state(page, ui_bridge, shot):
    bp, vites = ui_bridge
    page.goto(bp.url)
    label, counter = page.get_by_test_id("fixture-label"), page.get_by_test_id("fixture-counter")
    expect(label).to_have_text("Component fixture", timeout=LOAD_TIMEOUT)
    expect(page.get_by_test_id("fixture-plugin")).to_have_text("comp")          # the dashboard's props
    info = page.get_by_test_id("view-info-comp")
    expect(info).to_contain_text("module /src/entry.tsx loaded")                  # after a 404 on src/entry.ts
    expect(info).to_contain_text("default (component)")
    expect(info).to_contain_text("rendering: default export Counter")
    for _ in range(3):
        counter.click()
    expect(counter).to_have_text("count: 3")
    page.evaluate("window.__noReload = true")
    key = page.get_by_test_id("view-comp").get_attribute("data-reload-key")
    entry = vites["comp"].dir / "src" / "entry.tsx"
    entry.write_text(entry.read_text().replace("Component fixture", "Hot-updated fixture"))
    expect(label).to_have_text("Hot-updated fixture", timeout=LOAD_TIMEOUT)
    expect(counter).to_have_text("count: 3")                                      # Fast Refresh kept the state
    assert page.get_by_test_id("view-comp").get_attribute("data-reload-key") == key     # no remount
    assert page.evaluate("window.__noReload === true")                            # no page reload
    shot(page, "12-component-entry-hot-updated")


def test_plugin_object_entry_renders_its_index_route_and_lists_what_it_exports(page, ui_bridge, shot):
    bp, _ = ui_bridge
    page.goto(bp.url)
    expect(page.get_by_test_id("fixture-home")).to_have_text("Routes fixture: home", timeout=LOAD_TIMEOUT)
    expect(page.get_by_test_id("fixture-settings")).to_have_count(0)
    info = page.get_by_test_id("view-info-routes")
    expect(info).to_contain_text("module /src/entry.ts loaded")
    expect(info).to_contain_text("Settings (component)")
    expect(info).to_contain_text("default (plugin object)")
    expect(info).to_contain_text("plugin (plugin object)")
    expect(info).to_contain_text("routes: / → Home, settings → Settings")
    expect(info).to_contain_text("rendering: the index route's Home")
    expect(page.get_by_test_id("view-note-routes")).to_have_attribute("data-status", "ok")
    shot(page, "13-plugin-object-entry")


def test_vite_error_in_the_entry_is_shown_and_retry_loads_the_fixed_one(page, ui_bridge):
    bp, vites = ui_bridge
    entry = vites["routes"].dir / "src" / "entry.ts"
    good = entry.read_text()
    entry.write_text(good.replace("export default plugin;", "export default plugin +;"))
    try:
        page.goto(bp.url)
        note = page.get_by_test_id("view-note-routes")
        expect(note).to_have_attribute("data-status", "error", timeout=LOAD_TIMEOUT)
        expect(note).to_contain_text("Vite could not serve /src/entry.ts (HTTP 500)")
        expect(note).to_contain_text("entry.ts")
        expect(page.get_by_test_id("fixture-home")).to_have_count(0)
    finally:
        entry.write_text(good)
    note.get_by_role("button", name="retry").click()
    expect(page.get_by_test_id("fixture-home")).to_have_text("Routes fixture: home", timeout=LOAD_TIMEOUT)
    expect(note).to_have_attribute("data-status", "ok")
