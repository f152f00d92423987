"""``dreambooth3d app`` in a real browser: Chromium driven by Playwright is refused a bad photo in the page,
then uploads examples/red_toy, runs
``--preset smoke`` (the real pipeline on the CPU, a few minutes), watches the live ``[n/7]`` progress,
restarts the server in the middle of the job (the job is listed as unfinished and resumed with one
click) and ends with the GLB in the 3D viewer and a working download.

Needs threestudio, Gradio, the ``playwright`` package and a Chromium (Debian: ``apt-get install
chromium``; ``playwright install`` needs the internet, so the system browser is used:
$DREAMBOOTH3D_CHROMIUM, else chromium on PATH). Skipped with the reason without one of them.
DREAMBOOTH3D_APP_SCREENSHOT=FILE saves a picture of the finished job (the README's docs/app.png).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.threestudio, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RED_TOY = REPO / "examples" / "red_toy"
# the page makes no network calls of its own; keep Chromium's off too (no internet here)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_S = 1500  # a smoke run takes 1-3 min alone; the machine may be shared


def chromium_path() -> str:
    path = os.environ.get("DREAMBOOTH3D_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium: apt-get install chromium, or set DREAMBOOTH3D_CHROMIUM to a Chromium binary")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``dreambooth3d app`` as a user starts it, in a subprocess."""

    def __init__(self, out_root: Path, port: int, log: Path):
        self.out_root, self.port, self.log = out_root, port, log

    def start(self) -> "Server":
        env = {**os.environ, "NO_COLOR": "1"}
        self.logf = open(self.log, "ab")
        start = self.logf.tell()  # a restart appends to the same log
        self.proc = subprocess.Popen([sys.executable, "-m", "threestudio_dreambooth3d.cli", "app", "--out-root",
                                      str(self.out_root), "--preset", "smoke", "--port", str(self.port)],
                                     stdout=self.logf, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while "Running on local URL" not in self.log.read_bytes()[start:].decode(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the app did not start:\n" + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.3)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it: its running job is stopped cleanly first."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def status(page) -> str:
    return page.locator("#status textarea").input_value()


def wait_status(page, pattern: str, timeout_s: float, seen: list) -> str:
    """Poll the status box until it matches; every distinct value is kept in ``seen``."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = status(page)
        if not seen or seen[-1] != text:
            seen.append(text)
        if re.search(pattern, text):
            return text
        if text.startswith("error:") or re.match(r"job \w+: failed", text):
            raise AssertionError(f"the job failed:\n{text}\n{page.locator('#log textarea').input_value()}")
        assert time.monotonic() < deadline, f"status never matched {pattern!r}; last: {text!r}"
        time.sleep(0.5)


def pick_job(page, state: str) -> None:
    """Choose the first job in the list whose label starts with ``state``."""
    page.locator("#jobs input").click()
    page.get_by_role("option", name=re.compile(rf"^{state} · ")).first.click()


def test_browser_upload_run_restart_resume_download(threestudio, tmp_path):
    pytest.importorskip("gradio")
    sync_api = pytest.importorskip("playwright.sync_api")
    browser_path = chromium_path()
    out_root = tmp_path / "jobs"
    port = free_port()
    server = Server(out_root, port, tmp_path / "app.log").start()
    seen: list = []
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
            # a bad photo: an error in the page before anything is queued, never a traceback
            bad = tmp_path / "notes.png"
            bad.write_text("not an image")
            page = browser.new_page()
            page.goto(server.url)
            page.wait_for_selector("#photos")
            page.locator("#photos input[type=file]").set_input_files([str(p) for p in sorted(RED_TOY.iterdir())]
                                                                    + [str(bad)])
            page.locator("#class_noun textarea").fill("toy")
            page.locator("#prompt textarea").fill("a sks toy on a table")
            page.wait_for_function("document.querySelectorAll('#photos tr.file').length >= 5", timeout=60_000)
            page.locator("#run").click()
            page.wait_for_function("document.querySelector('#status textarea').value.startsWith('error:')",
                                   timeout=60_000)
            assert status(page).startswith("error: 04_notes.png cannot be read as an image")
            assert "Traceback" not in page.locator("#log textarea").input_value()
            assert not list(out_root.glob("*/job.json"))
            page.close()

            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(server.url)
            page.wait_for_selector("#photos")
            assert page.locator("#preset input").input_value() == "smoke"  # --preset sets the page's default
            page.locator("#photos input[type=file]").set_input_files([str(p) for p in sorted(RED_TOY.iterdir())])
            page.locator("#class_noun textarea").fill("toy")
            page.locator("#prompt textarea").fill("a sks toy on a table")
            page.wait_for_function("document.querySelectorAll('#photos tr.file').length >= 4", timeout=60_000)
            page.locator("#run").click()

            # live progress: the [n/7] step line and a bar of a running step, while the job runs
            wait_status(page, r"\[[1-6]/7\] .*\n.*: \[#*\.*\] \d+/\d+", RUN_TIMEOUT_S, seen)
            job_dir = next(out_root.glob("*/job.json")).parent
            # restart the server in the middle of the job
            wait_status(page, r"\[[2-6]/7\] ", RUN_TIMEOUT_S, seen)
            server.stop()
            record = json.loads((job_dir / "job.json").read_text())
            assert record["state"] == "unfinished", record
            server = Server(out_root, port, tmp_path / "app.log").start()
            page.goto(server.url)
            page.wait_for_selector("#jobs")
            pick_job(page, "unfinished")
            wait_status(page, rf"^job {job_dir.name}: unfinished", 60, seen)
            page.locator("#resume").click()
            text = wait_status(page, r": finished", RUN_TIMEOUT_S, seen)
            assert "finetune: skipped" in (job_dir / "run.out").read_text().split("=== attempt 2")[-1]
            assert "[7/7] summary: done" in text

            # the results: pseudo views, turntable, the GLB in the 3D viewer, the download
            page.wait_for_selector("#pseudo_views img", timeout=60_000)
            page.wait_for_selector("#turntable video", timeout=60_000)
            page.wait_for_selector("#mesh canvas", timeout=60_000)
            # the viewer's own link to the file it shows
            glb_url = page.locator("#mesh a[download]").first.get_attribute("href")
            assert glb_url.endswith("/model.glb"), glb_url
            glb = page.request.get(glb_url)
            assert glb.ok and glb.body()[:4] == b"glTF"
            href = page.locator("#download a").first.get_attribute("href")
            zipped = page.request.get(href if href.startswith("http") else server.url.rstrip("/") + href)
            assert zipped.ok
            names = zipfile.ZipFile(io.BytesIO(zipped.body())).namelist()
            assert "summary.html" in names and any(n.startswith("results/mesh/") and n.endswith(".glb")
                                                   for n in names)
            # only files under --out-root are served
            outside = page.request.get(server.url + "gradio_api/file=" + str(REPO / "setup.py"))
            assert outside.status in (403, 404), outside.status
            shot = os.environ.get("DREAMBOOTH3D_APP_SCREENSHOT")
            if shot:
                page.screenshot(path=shot, full_page=True)
            browser.close()
    finally:
        server.stop()
    steps = [s for s in seen if re.search(r"\[\d/7\]", s)]
    assert len({re.search(r"\[(\d)/7\]", s)[1] for s in steps}) >= 3, seen  # it moved while we watched
