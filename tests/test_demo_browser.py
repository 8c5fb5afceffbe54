"""``i2i demo`` in headless Chromium: an image uploaded through the page comes back translated
at its own size, in eval and then in train mode, and the page asks nothing of any other host.

The demo runs as the command a user types, in its own process on 127.0.0.1; Playwright
drives the system's Chromium. Skips where Chromium is not installed (Debian: apt-get
install chromium) or does not start.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
# --headless comes from Playwright's headless=True
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
# wider than the translator's default tile (1024): the page's image goes through the tiled path
WIDTH, HEIGHT = 1100, 37


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def demo_url(tiny_run, tmp_path):
    """``i2i demo`` serving the tiny run; stopped with Ctrl+C (SIGINT) afterwards."""
    log = tmp_path / "demo.log"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "i2i", "demo", str(tiny_run), "--port", str(free_port()),
                                    "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (found := re.search(r"demo running at (http://127\.0\.0\.1:\d+/)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, f"the demo did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield found[1]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_demo_translates_an_uploaded_image_in_chromium(demo_url, tmp_path):
    from playwright.sync_api import Error, sync_playwright

    image = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(image)
    elsewhere = []
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        except Error as error:
            pytest.skip(f"Chromium does not start: {str(error).splitlines()[0]}")
        try:
            page = browser.new_page()
            page.on("request", lambda request: elsewhere.append(request.url)
                    if not request.url.startswith((demo_url, "data:", "blob:")) else None)
            page.goto(demo_url)
            page.locator("#input input[type=file]").set_input_files(image)
            page.wait_for_function("(document.querySelector('#input img') || {}).naturalWidth > 0", timeout=30_000)  # uploaded
            for mode in ("eval", "train"):
                page.get_by_label(mode, exact=True).check()
                page.get_by_role("button", name="Translate").click()
                page.wait_for_function(f"document.querySelector('#timing').innerText.includes('{mode} mode:')", timeout=120_000)
                page.wait_for_function("(document.querySelector('#output img') || {}).naturalWidth > 0", timeout=30_000)
                size = page.evaluate("[document.querySelector('#output img').naturalWidth, document.querySelector('#output img').naturalHeight]")
                assert size == [WIDTH, HEIGHT], (mode, size)
                assert re.fullmatch(rf"{WIDTH}x{HEIGHT} pixels, {mode} mode: \d+\.\d\d s", page.inner_text("#timing").strip())
        finally:
            browser.close()
    assert not elsewhere, f"the page asked other hosts: {elsewhere}"
