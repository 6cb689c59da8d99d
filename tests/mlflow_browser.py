"""Test helpers: serve an MLflow store with `msreid ui --serve` on 127.0.0.1 and drive headless
Chromium (Debian's `chromium` through Playwright; Playwright's own browser download needs the
internet)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("MSREID_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
INSTALL_HINT = ("install the browser test's dependencies: `apt-get install -y chromium` (Debian) and "
                "`pip install -e '.[test]'` (Playwright); .ci/run does both")


def missing_browser() -> str | None:
    """Why the browser test cannot run here (None when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Playwright is not installed; {INSTALL_HINT}"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM}; {INSTALL_HINT}"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(tracking_uri: str, experiment: str, log_path: Path, timeout_s: float = 90.0):
    """Run `msreid ui --serve` (what `make ui` runs) on a free port; yield (base URL, its stdout)."""
    port = free_port()
    command = [sys.executable, "-m", "msreid.cli", "ui", "--serve", "--experiment", experiment,
               "--tracking-uri", tracking_uri, "--port", str(port)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, log_path.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own group (gunicorn/uvicorn workers)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def chromium_browser():
    """Headless Debian Chromium through Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def fresh_tab(browser, url: str, width: int = 1600, height: int = 1000):
    """``url`` opened in a new browser context: a fresh tab, as when a printed link is pasted
    (no state of MLflow's single-page app carried over)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(url)
    return page


@contextlib.contextmanager
def chromium_page(width: int = 1600, height: int = 1000):
    """A Playwright page in headless Debian Chromium."""
    with chromium_browser() as browser:
        yield browser.new_page(viewport={"width": width, "height": height})


def plot_traces(page) -> list[list[dict]]:
    """The Plotly traces of every chart the page has drawn: per chart, ``{type, name, x, y}``."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(
        p => (p.data || []).map(t => ({type: t.type, name: t.name || null,
                                        x: Array.from(t.x || []), y: Array.from(t.y || [])})))""")


def wait_for_traces(page, found, what: str, timeout_s: float = 90.0):
    """Poll ``plot_traces`` until ``found(traces)`` returns something truthy; return it."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        got = found(plot_traces(page))
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"no {what} in the page; charts: {plot_traces(page)}")


SHOTS = {"table5": "mlflow_table5.png", "table3": "mlflow_table3.png"}
"""README's pictures: the saved view of each table (msreid.tracking.views)."""


def printed_links(printed: str) -> dict[str, str]:
    """``{label: link}`` of the lines `msreid ui` printed (``<label>: http...``)."""
    return {line.split(": ", 1)[0]: line.split(": ", 1)[1]
            for line in printed.splitlines() if ": http" in line}


def save_screenshots(browser, links: dict[str, str], folder: Path) -> list[Path]:
    """Screenshots of the latest benchmark's table views (as `msreid ui` printed them) and the
    parent's labelled figure of Table 3, each opened in a fresh tab."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for table, name in SHOTS.items():
        url = next((u for label, u in links.items() if label.startswith(f"{table} of ")), None)
        if url is None:
            continue
        page = fresh_tab(browser, url)
        wait_for_traces(page, lambda t: sum(1 for c in t if c) >= 3, f"{table}'s charts")
        with contextlib.suppress(Exception):  # the assistant side panel, when it is open
            page.locator("button[aria-label='Close']").last.click(timeout=5000)
        time.sleep(2)
        page.screenshot(path=str(folder / name))
        saved.append(folder / name)
        page.context.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    """Retake README's MLflow screenshots from a store (a real smoke run: `make benchmark`)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--tracking-uri", required=True, help="sqlite:///<abs path>/mlflow.db")
    parser.add_argument("--experiment", default="msreid-benchmark")
    parser.add_argument("--out", default="docs/img", help="folder of the PNG files")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with mlflow_ui(args.tracking_uri, args.experiment, out / "mlflow_ui.log") as (base, printed):
        with chromium_browser() as browser:
            saved = save_screenshots(browser, printed_links(printed), out)
    (out / "mlflow_ui.log").unlink()
    print("\n".join(str(p) for p in saved))
    return 0 if len(saved) == len(SHOTS) else 1


if __name__ == "__main__":
    sys.exit(main())
