"""Headless Chromium for the report tests: a screenshot, and where elements are laid out (a DOM dump).

The pages themselves carry no script. To measure them, a copy gets a small script that writes the
bounding boxes of the named elements into the DOM, and ``chromium --dump-dom`` prints the result.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, FOLD = 1400, 900
"""The reviewer's screen: 1400 wide, 900 high (what is above the fold)."""

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync"]

_PROBE = """<script>
window.addEventListener("load", () => {
  const out = {};
  for (const id of IDS) {
    const el = document.getElementById(id);
    if (!el) { out[id] = null; continue; }
    const r = el.getBoundingClientRect();
    const first = el.querySelector(".item, .none");
    const f = first ? first.getBoundingClientRect() : null;
    const style = getComputedStyle(el);
    out[id] = {top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: r.width, height: r.height,
               visible: style.visibility !== "hidden" && style.display !== "none",
               text: el.innerText.slice(0, 400), first: f ? {top: f.top, bottom: f.bottom, height: f.height} : null};
  }
  const pre = document.createElement("pre"); pre.id = "probe-boxes"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _run(args: list[str], url: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([str(CHROMIUM), *_FLAGS, f"--user-data-dir={profile}", *args, url], check=True,
                              capture_output=True, timeout=120)


def screenshot(page: Path, out: Path, *, height: int = FOLD) -> Path:
    """A PNG of ``page`` at 1400 x ``height``."""
    _run([f"--screenshot={out}", f"--window-size={WIDTH},{height}", "--hide-scrollbars"], page.resolve().as_uri())
    return out


def boxes(page: Path, ids: tuple[str, ...] = ("verdict", "faults", "unexplained")) -> dict:
    """Bounding boxes (CSS pixels, viewport 1400 wide) and text of the elements with ``ids``."""
    probe = page.with_name(f".probe-{page.name}")
    html = page.read_text(encoding="utf-8")
    probe.write_text(html.replace("</body>", _PROBE.replace("IDS", json.dumps(list(ids))) + "</body>"), encoding="utf-8")
    try:
        dom = _run([f"--window-size={WIDTH},{FOLD}", "--dump-dom"], probe.resolve().as_uri()).stdout.decode()
    finally:
        probe.unlink()
    found = re.search(r'<pre id="probe-boxes">(.*?)</pre>', dom, re.S)
    assert found, "the probe script did not run"
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def above_the_fold(box: dict | None, *, whole: bool = False) -> bool:
    """The element starts (``whole``: lies entirely) inside the first 1400x900 of the page, and its first
    list item (when it has one) starts there too."""
    if not box or not box["visible"] or box["height"] <= 0 or box["left"] < 0 or box["right"] > WIDTH:
        return False
    if whole:
        return box["top"] >= 0 and box["bottom"] <= FOLD
    first = box.get("first")
    return 0 <= box["top"] < FOLD - 60 and (first is None or first["top"] + 20 <= FOLD)
