"""Headless Chromium for the report tests: find it, dump a page's DOM, and ask the rendered page
what is visible (a test-only copy of the page gets a script; the report itself has none)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PROBE = """<script>
const found = {};
for (const selector of %s) {
  const el = document.querySelector(selector);
  const box = el ? el.getBoundingClientRect() : null;
  found[selector] = {visible: !!el && box.width > 0 && box.height > 0
                     && getComputedStyle(el).visibility !== "hidden", text: el ? el.innerText : ""};
}
document.body.setAttribute("data-probe", JSON.stringify(found));
</script>"""


def browser() -> str | None:
    return next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))), None)


def require_browser() -> str:
    found = browser()
    if found is None:
        if os.environ.get("GRAPHOPT_REQUIRE_BROWSER"):  # CI installs chromium and sets this
            pytest.fail("GRAPHOPT_REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("no headless browser installed (apt install chromium)")
    return found


def command(tmp_path: Path) -> list[str]:
    return [require_browser(), "--headless", "--no-sandbox", "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}"]


def dump_dom(page: Path, tmp_path: Path) -> str:
    return subprocess.run(command(tmp_path) + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                          timeout=120, check=True).stdout


def probe(page: Path, selectors: list[str], tmp_path: Path) -> dict[str, dict]:
    """{selector: {"visible": laid out with a size and not hidden, "text": its rendered text}}."""
    copy = tmp_path / f"probe-{page.name}"
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE % json.dumps(selectors) + "</body>"),
                    encoding="utf-8")
    found = re.search(r'data-probe="([^"]*)"', dump_dom(copy, tmp_path))
    assert found, "the probe script did not run"
    return json.loads(html.unescape(found.group(1)))
