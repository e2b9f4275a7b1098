"""The reports as a reader sees them: rendered by a real headless browser (Debian's chromium).

A tiny study is processed for real (one good session, one with a broken .bval), and its
session report and group report are opened in chromium: every image must decode, nothing may
reach the console (errors, failed loads, uncaught exceptions), local links must point at
files, and the group report's table must sort. A synthetic 5000-session group report checks
size and sorting at scale. Screenshots are kept as test artifacts under
``$CSTBATCH_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the checkout); the test prints
where.

chromium is found as ``$CSTBATCH_CHROMIUM`` or on PATH; without it the browser tests skip,
unless ``CSTBATCH_REQUIRE_BROWSER=1`` (``.ci/run`` sets it after installing chromium), where
they fail.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from test_slurm import make_study

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CSTBATCH_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "browser"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]
BIG = 5000

#: Put first in <head>: records page errors (capture phase: also images and links that fail to
#: load) and console.error calls.
PROBE_HEAD = """<script>window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target || {};
  window.__errors.push(e.message || ("failed to load " + (t.src || t.href || t.tagName)));
}, true);
(function () { var f = console.error; console.error = function () {
  window.__errors.push("console.error: " + Array.prototype.join.call(arguments, " ")); f.apply(console, arguments); }; })();
</script>"""
#: Put last in <body>: after load, writes what it found into <pre id="probe"> (read from the
#: DOM chromium dumps): each image's decoded size, local link targets, and, where the page has
#: a sortable table, the "Left FA" column after one and two clicks on its header.
PROBE_TAIL = """<script>window.addEventListener("load", function () {
  var out = {errors: window.__errors, links: [], sort: null};
  out.images = Array.prototype.map.call(document.images, function (i) {
    return {ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight, alt: i.alt}; });
  Array.prototype.forEach.call(document.querySelectorAll("a[href]"), function (a) {
    var h = a.getAttribute("href"); if (!/^[a-z]+:/i.test(h) && h.charAt(0) !== "#") out.links.push(h); });
  var t = document.querySelector("table.sortable");
  if (t) {
    var heads = t.tHead.rows[0].cells, col = -1;
    for (var i = 0; i < heads.length; i++) if (heads[i].textContent === "Left FA") col = i;
    var column = function () { return Array.prototype.map.call(t.tBodies[0].rows, function (r) {
      return r.cells[col].textContent; }); };
    heads[col].click(); var up = column(), upAria = heads[col].getAttribute("aria-sort");
    heads[col].click(); var down = column();
    out.sort = {up: up, down: down, aria: [upAria, heads[col].getAttribute("aria-sort")], rows: up.length};
  }
  var pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def chromium() -> str:
    exe = os.environ.get("CSTBATCH_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if exe is None:
        if os.environ.get("CSTBATCH_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium not found but CSTBATCH_REQUIRE_BROWSER=1 (.ci/run installs it)")
        pytest.skip("chromium not installed (.ci/run installs it with apt-get)")
    return exe


def browse(page: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="cstbatch-chromium-") as profile:
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=timeout)


def probe(report: Path) -> dict:
    """Open ``report`` (a probed copy beside it, so relative links resolve) and return what the
    probe saw, plus the console lines chromium logged."""
    text = report.read_text(encoding="utf-8")
    assert text.count("<head>") == 1 and text.count("</body>") == 1
    copy = report.with_name(f".probe-{report.name}")
    copy.write_text(text.replace("<head>", "<head>" + PROBE_HEAD).replace("</body>", PROBE_TAIL + "</body>"),
                    encoding="utf-8")
    try:
        proc = browse(copy, "--dump-dom", "--virtual-time-budget=20000")
    finally:
        copy.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no probe result (chromium exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    import html

    result = json.loads(html.unescape(found.group(1)))
    result["console"] = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return result


def screenshot(report: Path, name: str, height: int = 1800) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / name
    target.unlink(missing_ok=True)
    proc = browse(report, f"--screenshot={target}", f"--window-size=1280,{height}", "--hide-scrollbars")
    assert target.exists(), proc.stderr[-3000:]
    return target


def assert_clean(result: dict, min_images: int) -> None:
    assert result["errors"] == [] and result["console"] == [], (result["errors"], result["console"])
    assert len(result["images"]) >= min_images, result["images"]
    assert all(i["ok"] and i["w"] > 50 and i["h"] > 50 for i in result["images"]), result["images"]


def assert_picture(png: Path) -> None:
    """A screenshot of a page, not a blank or an error tab: many colours, mostly light."""
    import matplotlib.image

    pixels = matplotlib.image.imread(png)[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1200, pixels.shape
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200
    assert 0.6 < pixels.mean() < 0.99


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    """A tiny study processed for real: sub-01 succeeds, sub-03 fails at ingest."""
    from cstbatch.engine.runner import run_doit
    from cstbatch.study import load_study

    root = tmp_path_factory.mktemp("browser-study")
    manifest = make_study(root, broken=True, subjects=(1, 3))
    out = root / "out"
    with redirect_stdout(io.StringIO()):
        run_doit(load_study(manifest=manifest, output_dir=out), ["run"])
    return out


def big_study_report(out: Path, n: int = BIG) -> Path:
    """The group report of n synthetic sessions (every 97th failed), from metrics rows as the
    aggregation reads them back."""
    from cstbatch.outputs.group_report import write_group_report

    rng = np.random.default_rng(17)
    rows, sessions = [], []
    for i in range(n):
        key, sub = f"sub-{i:05d}_ses-01", f"sub-{i:05d}"
        fl, fr = 0.5 + 0.03 * rng.standard_normal(2)
        vl, vr = 4000 + 300 * rng.standard_normal(2)
        failed = i % 97 == 0
        sessions.append({"key": key, "subject": sub, "session": "ses-01", "status": "failed" if failed else "success",
                         "last_step": "track" if failed else "report", "failed_step": "track" if failed else None,
                         "error_category": "processing" if failed else None,
                         "error": "ValueError: no seeds in mask" if failed else None, "log": f"logs/{key}.log"})
        rows.append({"participant_id": sub, "session_id": "ses-01", "key": key, "status": "failed"} if failed else
                    {"participant_id": sub, "session_id": "ses-01", "key": key, "status": "success",
                     "left_fa_mean": fl, "right_fa_mean": fr, "left_streamline_count": int(rng.integers(80, 140)),
                     "right_streamline_count": int(rng.integers(80, 140)), "left_volume_mm3": vl,
                     "right_volume_mm3": vr, "laterality_fa_mean": (fl - fr) / (fl + fr),
                     "laterality_volume_mm3": (vl - vr) / (vl + vr)})
    failed = sum(s["status"] == "failed" for s in sessions)
    summary = {"study": f"{n} sessions", "sessions": sessions,
               "totals": {"sessions": n, "success": n - failed, "failed": failed, "skipped": 0, "pending": 0}}
    return write_group_report(out, summary, rows)


@pytest.fixture(scope="module")
def big_report(tmp_path_factory) -> Path:
    return big_study_report(tmp_path_factory.mktemp("big-group"))


# -- tests -----------------------------------------------------------------------------------------

def test_group_report_of_5000_sessions_stays_small(big_report):
    text = big_report.read_text(encoding="utf-8")
    assert big_report.stat().st_size < 5e6, big_report.stat().st_size
    cohort = text.split('<table class="sortable">')[1].split("</table>")[0]
    assert cohort.count("<tr") == BIG + 1  # header + one row per session
    assert text.count("data:image/png;base64,") == 2  # the aggregate plots, not one per session
    assert "<script>" in text and "sortBy" in text


def test_session_and_group_reports_render_in_a_browser(processed, capsys):
    session = processed / "sub-01" / "ses-01" / "metrics" / "sub-01_ses-01_report.html"
    group = processed / "group_report.html"
    shown = probe(session)
    assert_clean(shown, min_images=3)
    shown = probe(group)
    assert_clean(shown, min_images=2)
    assert "sub-01/ses-01/metrics/sub-01_ses-01_report.html" in shown["links"]
    missing = [h for h in shown["links"] if not (processed / h).exists()]
    assert missing == [], missing
    assert shown["sort"]["rows"] == 2 and shown["sort"]["aria"] == ["ascending", "descending"]
    shots = [screenshot(session, "session_report.png", 2400), screenshot(group, "group_report.png")]
    for shot in shots:
        assert_picture(shot)
    with capsys.disabled():
        print(f"\nbrowser screenshots: {', '.join(map(str, shots))}")


def test_big_group_report_sorts_in_a_browser(big_report, capsys):
    shown = probe(big_report)
    assert_clean(shown, min_images=2)
    sort = shown["sort"]
    assert sort["rows"] == BIG and sort["aria"] == ["ascending", "descending"]

    def numbers(column):
        values = [float(v.replace("\u2212", "-")) for v in column if v not in ("", "n/a")]
        assert len(values) == BIG - len(range(0, BIG, 97))
        return values

    up, down = numbers(sort["up"]), numbers(sort["down"])
    assert up == sorted(up) and down == sorted(down, reverse=True)
    assert sort["up"][-1] == sort["down"][-1] == "n/a"  # failed sessions last either way
    shot = screenshot(big_report, "group_report_5000.png")
    assert_picture(shot)
    with capsys.disabled():
        print(f"\nbrowser screenshot: {shot}")
