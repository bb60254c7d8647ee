"""End to end in a real headless Chromium (Debian's, never a downloaded one).

Starts `streamlit run streamlit_app.py`, visits every page, uploads a photo on
the Classify page and waits for a class name and a probability. With
STUDIO_SCREENSHOTS=DIR it also saves a screenshot of each page there (that is
how docs/screenshots/ is made, against the shipped runs).
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from helpers import ROOT, png_bytes

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGES = [("", "CIFAR-10 Studio"), ("Dataset", "Dataset"), ("Augmentation", "Augmentation preview"),
         ("Train", "Train"), ("Compare", "Compare runs"), ("Evaluate", "Evaluate a run"),
         ("Classify", "Classify your photos")]
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed "
                                 "(.ci/run installs it)")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(shipped_runs, tmp_path):
    if os.environ.get("STUDIO_SCREENSHOTS"):
        shipped_runs = {"runs": ROOT / "artifacts" / "runs", "cache": None, "data": None}
    port = _free_port()
    env = dict(os.environ, CIFAR_RUNS_DIR=str(shipped_runs["runs"]), CIFAR_JOBS_DB=str(tmp_path / "jobs.sqlite"))
    if shipped_runs["cache"]:
        env.update(CIFAR_CORE_CACHE=str(shipped_runs["cache"]), CIFAR10_SOURCE=str(shipped_runs["data"]))
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port",
                                str(port), "--server.headless", "true"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield url, started
    finally:
        process.terminate()
        process.wait(20)


SCRIPT_FINISHED = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    return app && app.getAttribute('data-test-script-state') === 'notRunning'
        && !document.querySelector('[data-testid="stSkeleton"]');
}"""


def _wait_for_page(page, title: str, timeout_ms: int = 120_000) -> None:
    page.get_by_role("heading", name=title).first.wait_for(timeout=timeout_ms)
    page.wait_for_function(SCRIPT_FINISHED, timeout=timeout_ms)
    assert page.locator("[data-testid='stException']").count() == 0, f"{title}: exception on the page"


def test_every_page_and_an_upload_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, started = server
    shots = os.environ.get("STUDIO_SCREENSHOTS")
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[:, None, None], (1, 96, 3))))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for path, title in PAGES:
            page.goto(f"{url}/{path}")
            _wait_for_page(page, title)
            if path == "":
                print(f"\nhome page rendered {time.perf_counter() - started:.1f} s after `streamlit run`")
            if shots:
                page.screenshot(path=os.path.join(shots, f"{path or 'Home'}.png"), full_page=True)
        page.goto(f"{url}/Classify")
        _wait_for_page(page, "Classify your photos")
        uploaded = time.perf_counter()
        page.locator("input[type='file']").first.set_input_files(str(photo))
        prediction = page.get_by_text("Prediction:").first
        prediction.wait_for(timeout=180_000)
        page.wait_for_function(SCRIPT_FINISHED, timeout=180_000)
        print(f"upload to first prediction: {time.perf_counter() - uploaded:.1f} s")
        text = prediction.inner_text()
        assert "%" in text and any(name in text for name in ("cat", "dog", "ship", "airplane", "automobile",
                                                              "bird", "deer", "frog", "horse", "truck"))
        if shots:
            page.screenshot(path=os.path.join(shots, "Classify-upload.png"), full_page=True)
        # A file that is not an image gets a clear message on the page, not a traceback.
        fake = tmp_path / "holiday.jpg"
        fake.write_text("this is not a photo")
        page.goto(f"{url}/Classify")
        _wait_for_page(page, "Classify your photos")
        page.locator("input[type='file']").first.set_input_files(str(fake))
        page.get_by_text("holiday.jpg: not an image").first.wait_for(timeout=120_000)
        page.wait_for_function(SCRIPT_FINISHED, timeout=120_000)
        assert page.locator("[data-testid='stException']").count() == 0
        browser.close()
