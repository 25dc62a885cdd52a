"""The quickstart notebook in a real browser: JupyterLab on 127.0.0.1, headless Chromium.

JupyterLab serves a temporary root holding a copy of ``notebooks/01-quickstart.ipynb`` and of
``examples/word-count``; Playwright drives Debian's Chromium (never a downloaded browser) to
run all cells from the Run menu, then waits until the rendered widget shows the bar at 100%
and the ✓ status, and saves a screenshot to ``test-output/browser-quickstart.png``.

Needs: ``apt-get install -y chromium chromium-driver`` and the ``playwright`` and
``jupyterlab`` Python packages (``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1``; never run
``playwright install``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ROOT / "test-output" / "browser-quickstart.png"
RUN_TIMEOUT_MS = 120_000

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
pytest.importorskip("jupyterlab", reason="pip install jupyterlab")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lab_env(home: Path) -> dict[str, str]:
    """Jupyter's folders under ``home``: no user config, settings or kernel leaks in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "DASK_BATCHAPI", "JUPYTER", "IPYTHON"))
    }
    data = home / "data"
    kernel = data / "kernels" / "python3"  # the notebook's kernel: this environment's Python
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            }
        )
    )
    settings = home / "settings" / "@jupyterlab"
    # No news or update checks: nothing leaves the machine, no toast over the notebook.
    _write_settings(
        settings / "apputils-extension" / "notification.jupyterlab-settings",
        {"fetchNews": "false", "checkForUpdates": False},
    )
    # Start the notebook's kernel at once (instead of asking in a "Select Kernel" dialog).
    _write_settings(
        settings / "notebook-extension" / "tracker.jupyterlab-settings",
        {"autoStartDefaultKernel": True},
    )
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(data),
        JUPYTER_PATH=str(data),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        IPYTHONDIR=str(home / "ipython"),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    return env


def _write_settings(path: Path, values: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    raise RuntimeError(f"JupyterLab did not start: {log.read_text(errors='replace')[-3000:]}")


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab server."""

    base: str
    token: str

    def api(self, path: str) -> str:
        return f"{self.base}/api/{path}?token={self.token}"

    @property
    def notebook_url(self) -> str:
        return f"{self.base}/lab/tree/01-quickstart.ipynb?token={self.token}"

    def wait_for_connected_kernel(self, timeout: float = 60) -> None:
        """Until the notebook's kernel is idle with the page connected to it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(self.api("sessions"), timeout=5) as answer:
                kernels = [s["kernel"] for s in json.load(answer)]
            if any(k["execution_state"] == "idle" and k["connections"] > 0 for k in kernels):
                return
            time.sleep(0.2)
        raise TimeoutError(f"no connected, idle kernel after {timeout} s: {kernels}")


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1 with a token, serving a copy of the quickstart."""
    root = tmp_path / "root"
    (root / "examples").mkdir(parents=True)
    shutil.copytree(ROOT / "examples" / "word-count", root / "examples" / "word-count")
    shutil.copy(ROOT / "notebooks" / "01-quickstart.ipynb", root)
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyterlab.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.allow_root=True",  # CI runs as root
        "--LabApp.news_url=",
        "--LabApp.extension_manager=readonly",  # no extension listing from a package index
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=root, env=_lab_env(tmp_path / "jupyter"), stdout=out, stderr=out
        )
    try:
        server = Lab(f"http://127.0.0.1:{port}", token)
        _wait_until_up(server.api("status"), process, log)
        yield server
    finally:
        process.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.timeout(300)
def test_quickstart_runs_in_jupyterlab_and_shows_the_finished_widget(lab):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(lab.notebook_url)
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            lab.wait_for_connected_kernel()  # Run All before that runs nothing

            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

            # The job's widget, then the re-attached one: ✓ succeeded, the bar at 100%.
            done = page.locator(".batchapi-progress").filter(
                has=page.locator(".batchapi-status", has_text="✓ succeeded")
            )
            done.nth(1).wait_for(timeout=RUN_TIMEOUT_MS)
            widget = done.first
            assert widget.locator(".batchapi-bar").get_attribute("aria-valuenow") == "100"
            assert widget.locator(".batchapi-percent").inner_text() == "100%"
            counts = widget.locator(".batchapi-counts").inner_text()
            assert counts == "10 succeeded / 0 failed attempts / 10 batches"
            bar = widget.locator(".batchapi-bar-succeeded").bounding_box()
            track = widget.locator(".batchapi-bar").bounding_box()
            assert bar["width"] == pytest.approx(track["width"], abs=1)  # drawn full, green
            # The last cell's output (the API and its jobs) is there: the run is over.
            page.locator("table", has_text="succeeded").last.wait_for(timeout=30_000)

            widget.scroll_into_view_if_needed()
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            assert SCREENSHOT.stat().st_size > 10_000
        finally:
            browser.close()
