"""Example plugin: a plain-text Markdown report, registered as the reporter ``markdown``.

Select it with ``"options": {"reporter": "markdown"}``. A reporter receives a
``cstbatch.steps.report.SessionReportInput`` (paths of the session's outputs and its parsed
metrics) and returns the files it wrote; it never needs to know the folder layout.
"""
from pathlib import Path

from cstbatch.atomic import write_text
from cstbatch.hookspecs import hookimpl


def _fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_report(session, out_dir, options):
    m = session.metrics
    left, right, li = m.get("left", {}), m.get("right", {}), m.get("laterality", {})
    lines = [f"# CST report: {session.key}", "",
             "| metric | left | right | laterality index |", "|---|---|---|---|"]
    for key in ("streamline_count", "volume_mm3", "fa_mean", "md_mean", "rd_mean", "ad_mean"):
        lines.append(f"| {key} | {left.get(key)} | {right.get(key)} | {_fmt(li.get(key))} |")
    path = Path(out_dir) / f"{session.key}_report.md"
    write_text(path, "\n".join(lines) + "\n")
    return [path]


@hookimpl
def register_reporters(register):
    register("markdown", markdown_report, version="1", description="Markdown table of the CST metrics")
