"""report.html opens in headless Chromium from the file system with every image loaded.

Skips where Chromium is not installed (Debian: apt-get install chromium).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")

# A page beside the report that loads it in a frame and lists, once everything has
# loaded, each image of the report with whether it decoded (naturalWidth > 0).
PROBE = """<!doctype html><html><body>
<iframe id="report" src="report.html" width="1200" height="900"></iframe>
<script>
window.addEventListener("load", () => {
  const images = [...document.getElementById("report").contentDocument.images];
  const result = images.map(img => [img.getAttribute("src"), img.complete && img.naturalWidth > 0]);
  const out = document.createElement("pre");
  out.id = "result";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script></body></html>
"""


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=120,
    )


def test_every_image_of_the_report_loads_in_chromium(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    probe = run / "probe.html"
    probe.write_text(PROBE)
    # file:// pages are distinct origins; this flag lets the probe read its frame.
    done = chromium(tmp_path, "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                    probe.as_uri())
    found = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe did not run:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    images = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(images) >= 3, images  # the loss plot and the two sample grids
    missing = [src for src, loaded in images if not loaded]
    assert not missing, f"images that did not load: {missing}"
