"""End to end in a real headless Chromium (Debian's, never a downloaded one), with a latency budget.

Starts `streamlit run streamlit_app.py`, visits every page twice through the
sidebar, uploads photos on the Classify page, and measures what a presenter
waits for. Each figure is a p95 over repeated actions; a budget broken by more
than half fails the test (a slow CI machine should not flap). The figures go to
a JSON file: STUDIO_LATENCY_REPORT=PATH writes it there, measured on the
shipped runs (that is how docs/latency.json is made); otherwise to a temporary
folder, on the suite's tiny runs. STUDIO_SCREENSHOTS=DIR also saves a screenshot
of each page there (docs/screenshots/).
"""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest
from helpers import ROOT, free_port, png_bytes

from cifar_core.backend import cpu_name

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOME = "CIFAR-10 Studio"
PAGES = [("", HOME), ("Dataset", "Dataset"), ("Augmentation", "Augmentation preview"), ("Train", "Train a model"),
         ("Race", "Race and replay"), ("Compare", "Compare runs"), ("Evaluate", "Evaluate a run"),
         ("Classify", "Classify your photos"), ("Audience", "Audience mode"), ("Calibration", "Calibration"),
         ("Labels", "Label issues"), ("Embedding", "Embedding map"), ("Robustness", "Robustness lab"),
         ("Inside", "Inside the network"), ("Deploy", "Deploy")]
# Seconds, p95; issue #20's budget. The test fails past BUDGET_SLACK times a budget.
BUDGETS = {"home_first_view": 3.0, "page_switch": 1.5, "photo_answer": 1.0, "dataset_page": 2.0}
BUDGET_SLACK = 1.5
MAX_IDLE_CPU_SHARE = 0.2
PHOTOS = 3
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed "
                                 "(.ci/run installs it)")]

SCRIPT_FINISHED = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    return app && app.getAttribute('data-test-script-state') === 'notRunning'
        && !document.querySelector('[data-testid="stSkeleton"]');
}"""


def _measuring_shipped_runs() -> bool:
    return bool(os.environ.get("STUDIO_SCREENSHOTS") or os.environ.get("STUDIO_LATENCY_REPORT"))


@pytest.fixture
def studio_env(shipped_runs, tmp_path):
    env = dict(os.environ, CIFAR_JOBS_DB=str(tmp_path / "jobs.sqlite"))
    if _measuring_shipped_runs():
        shipped_runs = {"runs": ROOT / "artifacts" / "runs", "cache": None, "data": None}
        env.pop("CIFAR_CORE_CACHE", None)  # the machine's own decoded-dataset cache, as a user has it
    # A copy: the live race's job must add its run neither to artifacts/runs nor to the suite's shared runs.
    shutil.copytree(shipped_runs["runs"], tmp_path / "runs", ignore=shutil.ignore_patterns(".writer.lock"))
    env["CIFAR_RUNS_DIR"] = str(tmp_path / "runs")
    if shipped_runs["cache"]:
        env.update(CIFAR_CORE_CACHE=str(shipped_runs["cache"]), CIFAR10_SOURCE=str(shipped_runs["data"]))
    return env


@contextmanager
def streamlit_server(env: dict, *extra_args: str, port: int | None = None):
    """`streamlit run` on a port (a free one unless given); yields (url, the moment it was started, its pid)."""
    port = port or free_port()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port",
                                str(port), "--server.headless", "true", *extra_args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        yield url, started, process.pid
    finally:
        process.terminate()
        process.wait(20)


def _wait_for_page(page, title: str, timeout_ms: int = 120_000) -> None:
    page.get_by_role("heading", name=title).first.wait_for(timeout=timeout_ms)
    page.wait_for_function(SCRIPT_FINISHED, timeout=timeout_ms)
    assert page.locator("[data-testid='stException']").count() == 0, f"{title}: exception on the page"


def _first_view(page, url: str, started: float) -> float:
    page.goto(f"{url}/", wait_until="commit")
    _wait_for_page(page, HOME)
    return time.perf_counter() - started


def _switch_to(page, title: str) -> float:
    """Click the page's sidebar link; seconds until it is drawn and its script has finished."""
    clicked = time.perf_counter()
    page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=title, exact=True).click()
    _wait_for_page(page, title)
    return time.perf_counter() - clicked


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far (/proc/PID/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _studio_processes(pid: int) -> list[int]:
    """The server and its children (the model worker), where the kernel lists them."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [pid, *map(int, handle.read().split())]
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN
        return [pid]


def _idle_cpu_share(pid: int, seconds: float = 4.0) -> float:
    """The share of one core the server and its model worker use while the page sits still."""
    processes = _studio_processes(pid)
    before = sum(_cpu_seconds(p) for p in processes)
    time.sleep(seconds)
    return (sum(_cpu_seconds(p) for p in processes) - before) / seconds


def _wait_until_models_ready(page, started: float, timeout_s: float = 180.0) -> float:
    """Seconds from `streamlit run` until the sidebar says the models are ready (the home page
    is reloaded through the sidebar until it does)."""
    while not page.get_by_text("Models ready").count():
        assert time.perf_counter() - started < timeout_s, "the models never became ready"
        time.sleep(0.5)
        _switch_to(page, HOME)
    return time.perf_counter() - started


def _drop_photo(page, path) -> float:
    """Upload one photo; seconds until every model's answer is on the page."""
    dropped = time.perf_counter()
    page.locator("input[type='file']").first.set_input_files(str(path))
    page.get_by_role("heading", name=path.name).first.wait_for(timeout=180_000)
    page.get_by_text("read by").first.wait_for(timeout=180_000)
    page.wait_for_function(SCRIPT_FINISHED, timeout=180_000)
    seconds = time.perf_counter() - dropped
    assert page.locator("[data-testid='stException']").count() == 0
    text = page.get_by_text("Prediction:").first.inner_text()
    assert "%" in text and any(name in text for name in ("cat", "dog", "ship", "airplane", "automobile",
                                                          "bird", "deer", "frog", "horse", "truck"))
    page.locator("[data-testid='stFileChipDeleteBtn'] button").first.click()
    # Gone from the page, not merely a finished script: the removal's own rerun may not have begun yet.
    page.get_by_role("heading", name=path.name).first.wait_for(state="detached", timeout=60_000)
    page.wait_for_function(SCRIPT_FINISHED, timeout=60_000)
    return seconds


def _replay(page) -> None:
    """Race and replay: the recorded runs replay, labelled as a replay, with their chart."""
    _switch_to(page, "Race and replay")
    page.get_by_role("button", name="Start the replay").click()
    page.get_by_text("nothing is training now").first.wait_for(timeout=30_000)
    page.get_by_text("REPLAY").first.wait_for(timeout=30_000)
    page.wait_for_function(SCRIPT_FINISHED, timeout=30_000)
    assert page.locator(".js-plotly-plot").count() >= 1
    assert page.locator("[data-testid='stException']").count() == 0


def _live_race(page) -> None:
    """Start a one-epoch job on the Train page; the Race page draws it live, labelled as live."""
    _switch_to(page, "Train a model")
    page.get_by_label("Epochs").fill("1")
    page.get_by_label("Train on a subset of N images (0 = all)").fill("1000")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Started job").first.wait_for(timeout=60_000)
    _switch_to(page, "Race and replay")
    page.get_by_text("demo · live").first.wait_for(timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0


def _robustness_lab(page, photo) -> list[float]:
    """Drop a photo on the Robustness lab and step the severity slider: seconds per step until every
    model's top 3 for the newly corrupted photo is on the page."""
    _switch_to(page, "Robustness lab")
    page.locator("input[type='file']").first.set_input_files(str(photo))
    page.get_by_text("severity 3").first.wait_for(timeout=60_000)
    page.wait_for_function(SCRIPT_FINISHED, timeout=60_000)
    steps = []
    for severity in (4, 5):
        slider = page.get_by_role("slider").first
        stepped = time.perf_counter()
        slider.press("ArrowRight")  # focuses the thumb, then steps it
        answer = page.get_by_text(f"severity {severity}").first
        for _ in range(3):  # a key press that lands while the slider is being redrawn is lost: press again
            try:
                answer.wait_for(timeout=10_000)
                break
            except Exception:  # noqa: BLE001 - playwright's TimeoutError
                slider.press("ArrowRight")
        page.wait_for_function(SCRIPT_FINISHED, timeout=60_000)
        steps.append(round(time.perf_counter() - stepped, 3))
    assert page.locator("[data-testid='stException']").count() == 0
    return steps


def _audience_mode(playwright, page, samples, photo) -> None:
    """The presenter opens the room; a phone (a second browser context) joins by the URL on the
    screen and sends a photo, which appears with each model's vote; a request without the code
    and a flood from one device are refused while the presenter's pages stay within budget."""
    import threading

    import httpx

    _switch_to(page, "Audience mode")
    page.get_by_role("button", name="Open the room").click()
    page.get_by_text("Join code:").first.wait_for(timeout=30_000)
    join_url = page.locator("strong", has_text="/join/").first.inner_text()
    phone_browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    phone = {k: v for k, v in playwright.devices["Pixel 7"].items() if k != "default_browser_type"}
    phone_page = phone_browser.new_context(**phone).new_page()
    phone_page.goto(join_url)
    phone_page.locator("input[type='file']").set_input_files(str(photo))
    phone_page.get_by_role("button", name="Send").click()
    phone_page.get_by_text("Thanks! Your photo is on the screen.").wait_for(timeout=30_000)
    page.get_by_text("#1 · ").first.wait_for(timeout=60_000)
    assert httpx.get(join_url.rsplit("/", 1)[0] + "/WRONG9", timeout=5).status_code == 403
    flood = []
    flooding = threading.Thread(target=lambda: flood.extend(
        httpx.post(f"{join_url}/photo", files={"photo": ("x.png", photo.read_bytes())}, timeout=10).status_code
        for _ in range(40)))
    flooding.start()
    for title in ("Compare runs", "Audience mode"):
        samples["page_switch"].append(_switch_to(page, title))
    flooding.join()
    assert 429 in flood and 500 not in flood
    phone_browser.close()


def _summary(samples: dict[str, list[float]]) -> dict:
    report = {}
    for name, values in samples.items():
        p95 = float(np.percentile(values, 95))
        report[name] = {"p95_s": round(p95, 3), "samples_s": [round(v, 3) for v in values],
                        "budget_s": BUDGETS[name], "within_budget": p95 <= BUDGETS[name]}
    return report


def _launch(playwright, profile):
    return playwright.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                         viewport={"width": 1400, "height": 1000})


def test_every_page_an_upload_and_the_latency_budget(studio_env, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = os.environ.get("STUDIO_SCREENSHOTS")
    rng = np.random.default_rng(0)
    photos = []
    for i in range(PHOTOS):
        photo = tmp_path / f"photo-{i}.png"
        photo.write_bytes(png_bytes(rng.integers(0, 256, (96 + 8 * i, 128, 3), dtype=np.uint8)))
        photos.append(photo)
    samples: dict[str, list[float]] = {name: [] for name in BUDGETS}
    by_page: dict[str, list[float]] = {}
    report_extra: dict[str, object] = {"page_switch_by_page_s": by_page}
    with sync_playwright() as playwright:
        browser = _launch(playwright, tmp_path / "profile")
        page = browser.new_page()
        # A browser that never saw the studio downloads its JavaScript first; the budget is for the
        # presenter's browser, which has: any earlier visit to the same address caches it (the
        # browser keys its cache by host and port, so the second server listens where the first did).
        # Both are reported.
        port = free_port()
        with streamlit_server(studio_env, port=port) as (url, started, _):
            never_visited = _first_view(page, url, started)
            # The dataset read once on this machine (decoded into the cache, if it was not already).
            dataset_first_read = _switch_to(page, "Dataset")
        with streamlit_server(studio_env, "--", "--audience", "--audience-port", str(free_port()),
                              port=port) as (url, started, server):
            samples["home_first_view"].append(_first_view(page, url, started))
            # The presenter's title slide: the budget below is for a studio whose models are warm.
            models_ready = _wait_until_models_ready(page, started)
            server_idle = _idle_cpu_share(server)
            for round_ in range(2):
                for path, title in PAGES[1:] + PAGES[:1]:
                    seconds = _switch_to(page, title)
                    samples["dataset_page" if path == "Dataset" else "page_switch"].append(seconds)
                    by_page.setdefault(title, []).append(round(seconds, 3))
                    if shots and round_ == 1:
                        page.screenshot(path=os.path.join(shots, f"{path or 'Home'}.png"), full_page=True)
            _replay(page)
            report_extra["corruption_slider_s"] = _robustness_lab(page, photos[0])
            _switch_to(page, "Classify your photos")
            for photo in photos:
                samples["photo_answer"].append(_drop_photo(page, photo))
            _audience_mode(playwright, page, samples, photos[0])
            # A file that is not an image gets a clear message on the page, not a traceback.
            _switch_to(page, "Classify your photos")
            fake = tmp_path / "holiday.jpg"
            fake.write_text("this is not a photo")
            page.locator("input[type='file']").first.set_input_files(str(fake))
            page.get_by_text("holiday.jpg: not an image").first.wait_for(timeout=120_000)
            page.wait_for_function(SCRIPT_FINISHED, timeout=120_000)
            assert page.locator("[data-testid='stException']").count() == 0
            _live_race(page)  # last: its training job must not disturb the timings above
        browser.close()
    report = {"measured_on": f"{cpu_name()}, {os.cpu_count()} cores",
              "runs": "shipped runs (artifacts/runs)" if _measuring_shipped_runs() else "the suite's tiny runs",
              "measured_at": time.strftime("%Y-%m-%d"), "browser": "Debian Chromium, headless",
              "home_first_view_never_visited_s": round(never_visited, 3),
              "models_ready_after_s": round(models_ready, 3), "server_idle_cpu_share": round(server_idle, 3),
              "dataset_first_read_s": round(dataset_first_read, 3), **report_extra, "budgets": _summary(samples)}
    out = os.environ.get("STUDIO_LATENCY_REPORT") or str(tmp_path / "latency.json")
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    print("\n" + json.dumps(report, indent=2))
    broken = {name: figures["p95_s"] for name, figures in report["budgets"].items()
              if figures["p95_s"] > BUDGET_SLACK * figures["budget_s"]}
    assert not broken, f"latency budget broken by more than {BUDGET_SLACK - 1:.0%}: {broken}"
    # A server busy with nobody clicking takes a core from every page drawn next (its file watcher
    # rewalked the project after each inotify overflow: 0.9 of a core, all session long).
    assert server_idle < MAX_IDLE_CPU_SHARE, f"the idle server and worker used {server_idle:.0%} of a core"
