"""The course's widgets in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright.

For each widget notebook (smoke profile): run all cells, move every slider with the keyboard and see its
figure redrawn (one figure, a new image), find no "Error displaying widget" (also after a page reload) and no
console error other than the Colab badge, which cannot load offline. Screenshots go to build/browser/.

    make test-browser        # needs Debian's chromium (apt install chromium) and playwright (test extra)
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIDGET_NOTEBOOKS = ["01_lora_from_scratch.ipynb", "03_bezier_curves.ipynb", "04_bayesian_model_averaging.ipynb",
                    "05_variational_rank_selection.ipynb", "06_bayesian_lora.ipynb", "07_capstone.ipynb"]
OFFLINE_HOSTS = ("colab.research.google.com",)     # badges: unreachable offline, and that is fine
SHOTS = ROOT / "build" / "browser"
ERROR_OUTPUT = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
LAB_SETTINGS = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
                "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"}}


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "no chromium: install Debian's package (apt install chromium) or set CHROMIUM=/path/to/chromium"
        if os.environ.get("MINIBAYESLORA_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free port with a random token over a copy of the widget notebooks; stopped by its PID."""
    root = tmp_path_factory.mktemp("lab")
    for name in WIDGET_NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / name, root / name)
    settings = root / ".settings"
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    # A workspace of its own: JupyterLab reopens the tabs of the last session (the user's, or the previous notebook's)
    # and their cells would be counted and run with this notebook's.
    env = {**os.environ, "MINIBAYESLORA_SMOKE": "1", "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / ".workspaces"),
           "MINIBAYESLORA_FIGURES": str(root / "figures")}
    log = open(root / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
                               f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited ({server.returncode}): {(root / 'server.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("JupyterLab did not answer within 120 s")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", token
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _current(page):
    """The notebook in the visible tab: hidden tabs keep their cells in the page."""
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")


def _shutdown_kernels(url: str, token: str) -> None:
    """Stop every kernel of the server, so that one notebook's kernel does not hold memory while the next runs."""
    headers = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels", headers=headers), timeout=10) as response:
        kernels = json.load(response)
    for kernel in kernels:
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels/{kernel['id']}", method="DELETE",
                                                      headers=headers), timeout=30)


def _run_all(page, name: str, timeout_s: float = 1200) -> float:
    page.get_by_text("Kernel status: Idle").first.wait_for(state="attached", timeout=120_000)   # the kernel is up
    start, clicked, started, reported = time.time(), -1e9, False, time.time()
    while True:   # done when every code cell shows an execution count, or a cell failed and nothing runs
        prompts = [p.strip() for p in _current(page).locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]
        if time.time() - reported > 60:   # progress in the log, and a picture of where it is
            done = sum(any(ch.isdigit() for ch in p) for p in prompts)
            print(f"{name}: {time.time() - start:.0f} s, {done}/{len(prompts)} code cells run, prompts {prompts}", flush=True)
            page.screenshot(path=str(SHOTS / f"{name.removesuffix('.ipynb')}_progress.png"))
            reported = time.time()
        running = any("*" in p for p in prompts)
        started = started or running or any(any(ch.isdigit() for ch in p) for p in prompts)
        if not started and time.time() - clicked > 30:      # Run > Run All Cells, again if the first click went unheard
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.locator("li[data-command='runmenu:run-all']").click()
            clicked = time.time()
        if prompts and all(any(ch.isdigit() for ch in p) for p in prompts):
            return time.time() - start
        if not running and _current(page).locator(ERROR_OUTPUT).count():
            return time.time() - start
        assert time.time() - start < timeout_s, f"the notebook did not finish: {prompts}"
        page.wait_for_timeout(1000)


def _image(widget):
    return widget.locator(".widget-output img, .jp-OutputArea-output img")


@pytest.fixture
def page(lab, browser):
    """A 1366×768 page; afterwards (passed or failed) the page is closed and the server's kernels stopped."""
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    try:
        yield page
    finally:
        page.close()
        _shutdown_kernels(*lab)


@pytest.mark.parametrize("name", WIDGET_NOTEBOOKS)
def test_widgets_run_redraw_and_survive_a_reload(lab, page, name):
    url, token = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    console_errors, failed = [], []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("requestfailed", lambda r: failed.append((r.url, r.failure or "")))
    page.goto(f"{url}/lab/tree/{name}?reset&token={token}")   # reset: no tab but this notebook
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    seconds = _run_all(page, name)
    errors = _current(page).locator(ERROR_OUTPUT)
    assert errors.count() == 0, f"{name}: a cell failed: {errors.first.inner_text()[:1000]}"

    widgets = _current(page).locator(".widget-interact")
    assert widgets.count() >= 1, f"{name}: no widget was displayed"
    redraws = []
    for i in range(widgets.count()):
        widget = widgets.nth(i)
        widget.scroll_into_view_if_needed()
        handles = widget.locator(".noUi-handle")
        assert handles.count() >= 1, f"{name}: widget {i} has no slider"
        for j in range(handles.count()):
            before = _image(widget).first.get_attribute("src")
            handles.nth(j).focus()
            started = time.time()
            changed = "([el, src]) => { const img = el.querySelector('img'); return img && img.src !== src; }"
            page.keyboard.press("ArrowLeft")
            try:
                page.wait_for_function(changed, arg=[widget.element_handle(), before], timeout=30_000)
            except Exception:       # a slider already at its first value: move it the other way
                page.keyboard.press("ArrowRight")
                page.wait_for_function(changed, arg=[widget.element_handle(), before], timeout=60_000)
            redraws.append(time.time() - started)
            page.wait_for_timeout(500)
            assert _image(widget).count() == 1, f"{name}: widget {i} shows {_image(widget).count()} figures after a move"
        widget.screenshot(path=str(SHOTS / f"{name.removesuffix('.ipynb')}_widget{i}.png"))
    assert page.get_by_text("Error displaying widget").count() == 0, f"{name}: a dead widget"

    # Save, as a reader would, and reload the page: the saved outputs refer to widget models, which the running
    # kernel must still hold (a progress bar closed during the run would show "model not found" here).
    _current(page).locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    page.wait_for_timeout(3000)
    page.reload()
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    page.locator(".widget-interact .noUi-handle").first.wait_for(timeout=60_000)
    page.wait_for_timeout(3000)
    assert page.get_by_text("Error displaying widget").count() == 0, f"{name}: a dead widget after the reload"
    page.screenshot(path=str(SHOTS / f"{name.removesuffix('.ipynb')}_reloaded.png"))

    # the reload above aborts JupyterLab's own polling of its server (net::ERR_ABORTED): that is not a failed request
    unexpected = [u for u, why in failed if not any(host in u for host in OFFLINE_HOSTS)
                  and not (u.startswith(url) and "ERR_ABORTED" in why)]
    assert not unexpected, f"{name}: requests failed: {unexpected}"
    resource_errors = [m for m in console_errors if m.startswith("Failed to load resource")]
    others = [m for m in console_errors if m not in resource_errors]
    assert not others and len(resource_errors) <= len(failed), f"{name}: console errors {others or resource_errors}"
    print(f"{name}: ran in {seconds:.0f} s; redraws {', '.join(f'{r:.2f}' for r in redraws)} s")
