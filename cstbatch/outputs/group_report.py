"""The group report: one self-contained HTML page for the whole study.

FA distributions per side and laterality scatter plots first (they summarise any number of
sessions), then the cohort table (links to each session's report; sortable by any column, in
a scrolling box with a fixed header, so 5000 sessions stay usable: ~2 MB), QC flags, robust
outliers and failed sessions (step, category, message, log); the longitudinal section
(:mod:`cstbatch.outputs.longitudinal_report`) after the plots.

Inputs are what the aggregation already has: ``summary`` from
:func:`cstbatch.outputs.aggregate.generate_batch_summary` and ``rows``, the rows of
``batch_metrics.csv`` (python values or the strings read back from the CSV; missing columns
are fine). Step records are read, when present, for registration quality and whole-brain
streamline counts. The page has no dates, so it only changes when the study's results do.

Outliers: per metric, over the successful sessions, robust z = (x − median) / (1.4826 · MAD)
(MAD: median absolute deviation; when it is 0, 1.2533 · mean absolute deviation is used);
a session is listed when |z| > 3. At least :data:`MIN_SESSIONS_FOR_OUTLIERS` sessions with a
value are needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from cstbatch.outputs.figures import (
    H1,
    H2,
    H3,
    SIDE_COLORS,
    UL,
    Document,
    Fig,
    Link,
    P,
    RowClass,
    Table,
    fmt,
    new_figure,
    render_html,
    style,
    to_float,
)

OUTLIER_THRESHOLD = 3.0
MIN_SESSIONS_FOR_OUTLIERS = 5
BASE_METRICS = ("streamline_count", "volume_mm3", "mean_length_mm", "fa_mean", "md_mean", "rd_mean", "ad_mean")
#: Columns screened for outliers.
OUTLIER_METRICS = tuple(f"{side}_{m}" for side in ("left", "right") for m in BASE_METRICS) + \
    tuple(f"laterality_{m}" for m in BASE_METRICS)
QC_MIN_STREAMLINES = 10
QC_MIN_REGISTRATION_R = 0.35  # = cstbatch.steps.qc.MIN_REGISTRATION_R (measured there)
#: Outlying points named on a plot, largest |z| first: beyond a dozen the names hide the data
#: (a 5000-session study has ~100 outlying values); the outlier table lists them all.
MAX_PLOT_LABELS = 12

#: Click (or Enter on) a column header of the cohort table to sort by it, again to reverse.
#: Numbers sort as numbers (the report writes minus as U+2212), "n/a" and empty cells last;
#: ties keep the current order. Plain DOM, no library, nothing logged.
SORT_SCRIPT = r"""(function () {
function key(text) {
  var t = text.trim();
  if (t === "" || t === "n/a") return null;
  var x = Number(t.replace(/\u2212/g, "-").replace(/^\+/, "").replace(/,/g, ""));
  return isNaN(x) ? t.toLowerCase() : x;
}
function sortBy(table, col, th) {
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  var asc = th.getAttribute("aria-sort") !== "ascending";
  var items = rows.map(function (r, i) { return {row: r, i: i, k: key(r.cells[col].textContent)}; });
  var numeric = items.every(function (a) { return a.k === null || typeof a.k === "number"; });
  items.sort(function (a, b) {
    if (a.k === null || b.k === null) return (a.k === null) - (b.k === null) || a.i - b.i;
    var x = numeric ? a.k : String(a.k), y = numeric ? b.k : String(b.k);
    var c = x < y ? -1 : x > y ? 1 : 0;
    return (asc ? c : -c) || a.i - b.i;
  });
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
  th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  var frag = document.createDocumentFragment();
  items.forEach(function (a) { frag.appendChild(a.row); });
  body.appendChild(frag);
}
Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    th.tabIndex = 0;
    th.title = "sort by this column";
    th.addEventListener("click", function () { sortBy(table, col, th); });
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") sortBy(table, col, th); });
  });
});
})();"""


def _labelled(keys: Sequence[str], metrics: Sequence[str], z_of: Mapping[tuple[str, str], float]) -> set[int]:
    """Indices of the points to name: the :data:`MAX_PLOT_LABELS` with the largest |z|."""
    scored = []
    for i, k in enumerate(keys):
        z = max((abs(z_of[(k, m)]) for m in metrics if (k, m) in z_of), default=None)
        if z is not None:
            scored.append((-z, k, i))
    return {i for _, _, i in sorted(scored)[:MAX_PLOT_LABELS]}


def robust_z(values: Iterable[Any]) -> np.ndarray:
    """Robust z-scores (median/MAD, see module doc); NaN stays NaN, all 0 when there is no spread."""
    x = np.array([to_float(v) for v in values], float)
    ok = np.isfinite(x)
    z = np.full(x.shape, np.nan)
    if not ok.any():
        return z
    med = float(np.median(x[ok]))
    dev = np.abs(x[ok] - med)
    scale = 1.4826 * float(np.median(dev))
    if scale <= 0:
        scale = 1.2533 * float(np.mean(dev))
    z[ok] = (x[ok] - med) / scale if scale > 0 else 0.0
    return z


def _ok(row: Mapping[str, Any]) -> bool:
    return str(row.get("status") or "success") == "success"


def find_outliers(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = OUTLIER_METRICS,
                  threshold: float = OUTLIER_THRESHOLD,
                  min_sessions: int = MIN_SESSIONS_FOR_OUTLIERS) -> list[dict[str, Any]]:
    """``[{key, metric, value, median, z}]`` for |robust z| > ``threshold`` (successful rows only)."""
    good = [r for r in rows if _ok(r)]
    out = []
    for metric in metrics:
        vals = np.array([to_float(r.get(metric)) for r in good], float)
        if np.isfinite(vals).sum() < min_sessions:
            continue
        z = robust_z(vals)
        med = float(np.nanmedian(vals))
        for r, v, zi in zip(good, vals, z):
            if np.isfinite(zi) and abs(zi) > threshold:
                out.append({"key": str(r.get("key", "")), "metric": metric, "value": float(v), "median": med,
                            "z": float(zi)})
    out.sort(key=lambda o: (o["key"], o["metric"]))
    return out


def _prefixed(value: str | None, prefix: str) -> str | None:
    if not value or value == "n/a":
        return None
    return value if value.startswith(prefix) else f"{prefix}{value}"


def session_dir(subject: str, session: str | None) -> Path:
    """The session's folder, relative to the derivative dataset (``sub-X[/ses-Y]``)."""
    sub = _prefixed(str(subject), "sub-") or "sub-unknown"
    ses = _prefixed(session, "ses-") if session else None
    return Path(sub, ses) if ses else Path(sub)


def report_href(subject: str, session: str | None, key: str) -> str:
    return (session_dir(subject, session) / "metrics" / f"{key}_report.html").as_posix()


def _record_info(output_dir: Path, rel: Path, key: str, step: str) -> dict:
    from cstbatch.outputs.layout import SessionLayout
    from cstbatch.outputs.records import read_record

    rec = read_record(SessionLayout(Path(output_dir), key, rel).record(step)) or {}
    return rec.get("info") or {}


def _cohort(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per session: the summary's fields merged with its metrics row (by key)."""
    by_key = {str(r.get("key")): r for r in rows if r.get("key")}
    entries, seen = [], set()
    for s in summary.get("sessions") or []:
        key = str(s.get("key"))
        seen.add(key)
        row = dict(by_key.get(key, {}))
        entries.append({**row, "key": key, "subject": s.get("subject") or row.get("participant_id") or "",
                        "session": s.get("session") or (row.get("session_id") if row.get("session_id") != "n/a"
                                                        else None),
                        "status": s.get("status") or row.get("status") or "unknown", "_summary": s})
    for key, row in by_key.items():
        if key not in seen:
            ses = row.get("session_id")
            entries.append({**row, "key": key, "subject": row.get("participant_id") or "",
                            "session": ses if ses and ses != "n/a" else None,
                            "status": row.get("status") or "unknown", "_summary": {}})
    return entries


#: below this share of a part of the precentral gyrus inside the image (metrics.json's
#: ``gyrus_coverage``), the cohort table marks the field of view as cutting it: the tract's
#: missing ends there are the image's, not the anatomy's. The share the session's fov_truncated
#: flag and report use, ``cstbatch.steps.coverage.COMPLETE_FRACTION`` (this layer cannot import
#: it; a test keeps the two equal).
GYRUS_HELD_NOTE = 0.9


def face_ends_percent(entry: Mapping[str, Any], side: str) -> float | None:
    """% of a side's streamlines ending in the lateral (face) part of the precentral gyrus."""
    parts = [to_float(entry.get(f"{side}_cortical_ends_{k}")) for k in ("medial", "middle", "lateral")]
    total = sum(p for p in parts if p == p)
    return 100.0 * parts[2] / total if total and parts[2] == parts[2] else None


def face_ends_cell(entry: Mapping[str, Any]) -> str:
    """'L / R' face-area ends (%), each marked * when the image holds less than
    :data:`GYRUS_HELD_NOTE` of that side's face area."""
    cells = []
    for side in ("left", "right"):
        held = to_float(entry.get(f"gyrus_coverage_{side}_lateral"))
        cells.append(fmt(face_ends_percent(entry, side), 0) + ("*" if held == held and held < GYRUS_HELD_NOTE else ""))
    return " / ".join(cells)


def _flags(entry: Mapping[str, Any], reg_q: float) -> list[str]:
    flags = []
    if entry["status"] != "success":
        return flags
    if not np.isfinite(to_float(entry.get("left_fa_mean"))) or not np.isfinite(to_float(entry.get("right_fa_mean"))):
        flags.append("missing CST metrics")
    for side in ("left", "right"):
        n = to_float(entry.get(f"{side}_streamline_count"))
        if np.isfinite(n) and n < QC_MIN_STREAMLINES:
            flags.append(f"{int(n)} {side} CST streamlines")
    if np.isfinite(reg_q) and reg_q < QC_MIN_REGISTRATION_R:
        flags.append(f"registration r = {reg_q:.2f}")
    return flags


def _qc_flags(entry: Mapping[str, Any]) -> list[dict]:
    """The session's QC flags (steps/qc.py): from batch_summary.json, else codes from the CSV row."""
    qc = [f for f in (entry["_summary"].get("qc_flags") or []) if isinstance(f, Mapping)]
    if not qc and entry.get("qc_flags"):
        qc = [{"code": c, "message": ""} for c in str(entry["qc_flags"]).split(";") if c]
    return qc


def fa_distribution_figure(entries: Sequence[Mapping[str, Any]], outliers: Mapping[tuple[str, str], float]):
    """Box plot + strip of FA per side, sessions joined left–right; outlying values ringed.

    ``outliers``: (key, metric) → robust z; a side's point is ringed when ``<side>_fa_mean`` is
    one, and the largest few are named. The joining lines are one collection and fade as the
    cohort grows, so thousands of sessions draw quickly and still show the distribution.
    """
    from matplotlib.collections import LineCollection

    fig = new_figure(4.6, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    keys = [e["key"] for e in entries]
    vals = {s: np.array([to_float(e.get(f"{s}_fa_mean")) for e in entries], float) for s in ("left", "right")}
    data = [v[np.isfinite(v)] for v in vals.values()]
    ax.boxplot([d if d.size else [np.nan] for d in data], positions=[1, 2], widths=0.45, showfliers=False,
               medianprops={"color": "black"})
    n = len(entries)
    jitter = (np.arange(n) - (n - 1) / 2) / max(n, 1) * 0.3 if n else np.zeros(0)
    both = np.isfinite(vals["left"]) & np.isfinite(vals["right"])
    segments = np.stack([np.c_[1 + jitter, vals["left"]], np.c_[2 + jitter, vals["right"]]], axis=1)[both]
    fade = min(1.0, 30.0 / max(n, 1) ** 0.5)  # 1 up to 900 sessions, 0.42 at 5000
    ax.add_collection(LineCollection(segments, colors="#999", linewidths=0.5 * fade, alpha=fade, zorder=1))
    for pos, side in ((1, "left"), (2, "right")):
        v = vals[side]
        ok = np.isfinite(v)
        ax.scatter(pos + jitter[ok], v[ok], s=14 * fade, color=SIDE_COLORS[side], zorder=2, edgecolors="none",
                   alpha=max(fade, 0.5))
        metric = f"{side}_fa_mean"
        out = np.array([(k, metric) in outliers for k in keys], bool) & ok
        if out.any():
            ax.scatter(pos + jitter[out], v[out], s=60, facecolors="none", edgecolors="black", lw=1.0, zorder=3)
            for i in sorted(_labelled(keys, [metric], outliers) & set(np.nonzero(out)[0].tolist())):
                ax.annotate(keys[i], (pos + jitter[i], v[i]), xytext=(5, 0), textcoords="offset points",
                            fontsize=6, va="center")
    ax.set_xticks([1, 2])
    ax.set_xticklabels(["left CST", "right CST"])
    ax.set_xlim(0.5, 2.5)
    ax.set_ylabel("mean FA")
    ax.set_title("FA per side (lines join a session's two sides)")
    if not any(d.size for d in data):  # e.g. every CST not found: say so, not an empty frame
        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center")
    ax.grid(axis="y", alpha=0.3, lw=0.5)
    fig.subplots_adjust(left=0.16, right=0.97, top=0.91, bottom=0.1)
    return fig


def laterality_figure(entries: Sequence[Mapping[str, Any]], outliers: Mapping[tuple[str, str], float]):
    """FA left vs right (identity line) and FA laterality vs volume laterality.

    A point is highlighted when one of the metrics it plots is an outlier (``(key, metric)`` →
    robust z); the few most outlying are named.
    """
    fig = new_figure(8.6, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    keys = [e["key"] for e in entries]
    fl = np.array([to_float(e.get("left_fa_mean")) for e in entries], float)
    fr = np.array([to_float(e.get("right_fa_mean")) for e in entries], float)
    li_fa = np.array([to_float(e.get("laterality_fa_mean")) for e in entries], float)
    li_vol = np.array([to_float(e.get("laterality_volume_mm3")) for e in entries], float)
    def scatter(ax, x, y, metrics):
        out = np.array([any((k, m) in outliers for m in metrics) for k in keys], bool)
        ok = np.isfinite(x) & np.isfinite(y)
        fade = min(1.0, 30.0 / max(len(keys), 1) ** 0.5)
        ax.scatter(x[ok & ~out], y[ok & ~out], s=16 * max(fade, 0.4), color="#444", edgecolors="none",
                   alpha=max(fade, 0.3), label="session")
        if (ok & out).any():
            ax.scatter(x[ok & out], y[ok & out], s=30, color="#e07b00", edgecolors="black", lw=0.6,
                       label="outlier (|robust z| > 3)")
            for i in sorted(_labelled(keys, metrics, outliers) & set(np.nonzero(ok & out)[0].tolist())):
                ax.annotate(keys[i], (x[i], y[i]), xytext=(4, 3), textcoords="offset points", fontsize=6)
        return ok

    ok = scatter(ax1, fl, fr, ("left_fa_mean", "right_fa_mean"))
    if ok.any():
        lo, hi = float(min(fl[ok].min(), fr[ok].min())), float(max(fl[ok].max(), fr[ok].max()))
        pad = 0.05 * (hi - lo) + 0.01
        ax1.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#999", lw=0.8, ls="--", label="left = right")
        ax1.set_xlim(lo - pad, hi + pad)
        ax1.set_ylim(lo - pad, hi + pad)
        ax1.legend(loc="lower right", frameon=False)
    ax1.set_xlabel("left CST mean FA")
    ax1.set_ylabel("right CST mean FA")
    ax1.set_title("FA: left vs right")
    ax1.grid(alpha=0.3, lw=0.5)
    ok2 = scatter(ax2, li_vol, li_fa, ("laterality_fa_mean", "laterality_volume_mm3"))
    ax2.axhline(0, color="#999", lw=0.8)
    ax2.axvline(0, color="#999", lw=0.8)
    if ok2.any():
        lim = max(0.05, float(np.nanmax(np.abs(np.r_[li_vol[ok2], li_fa[ok2]]))) * 1.15)
        ax2.set_xlim(-lim, lim)
        ax2.set_ylim(-lim, lim)
    ax2.set_xlabel("volume laterality index (L − R)/(L + R)")
    ax2.set_ylabel("FA laterality index")
    ax2.set_title("Laterality: FA vs volume (negative: left lower)")
    ax2.grid(alpha=0.3, lw=0.5)
    for ax, ok_ in ((ax1, ok), (ax2, ok2)):
        if not ok_.any():
            ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.91, bottom=0.14, wspace=0.28)
    return fig


def build_group_document(output_dir: Path, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                         repeated: Mapping[str, Any] | None = None) -> Document:
    """``repeated``: the longitudinal tables (:func:`cstbatch.outputs.aggregate.write_longitudinal`)."""
    from cstbatch._version import __version__
    from cstbatch.outputs.longitudinal_report import longitudinal_blocks

    output_dir = Path(output_dir)
    entries = _cohort(summary, rows)
    good = [e for e in entries if e["status"] == "success"]
    outliers = find_outliers(good)
    out_by_key: dict[str, list[dict]] = {}
    for o in outliers:
        out_by_key.setdefault(o["key"], []).append(o)
    study = str(summary.get("study") or "study")
    t = summary.get("totals") or {}
    n_total = t.get("sessions", len(entries))
    version = summary.get("cstbatch_version") or __version__

    b = [H1(f"cstbatch group report — {study}"),
         P(f"{n_total} sessions: {t.get('success', len(good))} succeeded, {t.get('failed', 0)} failed, "
           f"{t.get('skipped', 0)} skipped, {t.get('pending', 0)} pending. cstbatch {version}.", css="summary")]
    left_out = summary.get("skipped_inputs") or []
    if left_out:
        b.append(P(f"{len(left_out)} input(s) left out by discovery: "
                   + "; ".join(f"{x['path']} ({x['reason']})" for x in left_out[:10])
                   + (f"; and {len(left_out) - 10} more (batch_summary.json)" if len(left_out) > 10 else "") + ".",
                   css="summary"))
    n_qc = sum(bool(_qc_flags(e)) for e in good)
    if n_qc:
        b.append(P(f"{n_qc} of {len(good)} successful sessions carry QC flags (see QC flags below): their numbers "
                   "may describe no tract or a partial one.", css="warn"))

    # cohort table
    table, flagged = [], []
    for e in entries:
        rel = session_dir(e["subject"], e["session"])
        reg = _record_info(output_dir, rel, e["key"], "register")
        track = _record_info(output_dir, rel, e["key"], "track")
        reg_q = to_float(reg.get("quality"))
        qc = _qc_flags(e)
        flags = [f["code"] for f in qc] + _flags(e, reg_q) + [
            f"outlier: {o['metric']} (z = {fmt(o['z'], 1, signed=True)})" for o in out_by_key.get(e["key"], [])]
        if flags:
            flagged.append((e["key"], [f"{f['code']}: {f['message']}" if f["message"] else f["code"] for f in qc]
                            + flags[len(qc):]))
        href = report_href(e["subject"], e["session"], e["key"])
        has_report = e["status"] == "success" or (output_dir / href).exists()
        css = e["status"] if e["status"] != "success" else ("flagged" if flags else "")
        table.append([Link(e["key"], href) if has_report else e["key"], e["subject"], e["session"] or "",
                      e["status"] + (" + QC flags" if qc and e["status"] == "success" else ""),
                      fmt(track.get("streamlines"), 0),
                      fmt(e.get("left_streamline_count"), 0), fmt(e.get("right_streamline_count"), 0),
                      fmt(e.get("left_fa_mean")), fmt(e.get("right_fa_mean")),
                      fmt(e.get("laterality_fa_mean"), 3, signed=True),
                      fmt(e.get("laterality_volume_mm3"), 3, signed=True),
                      face_ends_cell(e), fmt(reg_q, 2),
                      "; ".join(flags), RowClass(css)])
    b.append(H2("Distributions"))
    if good:
        pairs = {(o["key"], o["metric"]): o["z"] for o in outliers}
        b.append(Fig(fa_distribution_figure(good, pairs),
                     "Mean FA of the left (red) and right (blue) CST per session; boxes: median and quartiles; "
                     "ringed: sessions with an outlying metric."))
        b.append(Fig(laterality_figure(good, pairs),
                     "Left: mean FA left vs right per session (dashed: perfect symmetry). Right: FA laterality vs "
                     "volume laterality; a lesion typically lowers both on the affected side."))
    else:
        b.append(P("No successful sessions yet.", css="warn"))
    b += longitudinal_blocks(output_dir, repeated)

    b.append(H2("Cohort"))
    b.append(Table(["Session (report)", "Participant", "Session", "Status", "Streamlines tracked",
                    "Left CST streamlines", "Right CST streamlines", "Left FA", "Right FA", "FA LI", "Volume LI",
                    "Face-area ends L / R (%)", "Registration r", "Flags"], table, css="sortable"))
    b.append(P("Click a column header to sort by it (again to reverse). "
               "LI: laterality index (L − R)/(L + R), negative when the left value is lower. "
               "Face-area ends: share of each CST's streamlines ending in the lateral part of the precentral "
               "gyrus (MNI |x| ≥ 45 mm); near 0 the tract's numbers describe its leg and hand fibres only; "
               f"* the image holds less than {GYRUS_HELD_NOTE:.0%} of that side's face area (the field of view "
               "cuts it: metrics.json gyrus_coverage). "
               "Registration r: correlation of the subject's FA with the warped template.", css="meta"))

    b.append(H2("QC flags and outliers", anchor="qc"))
    b.append(H3("QC flags"))
    b.append(UL([f"{k}: {'; '.join(f)}" for k, f in flagged], css="warn") if flagged
             else P("No session flagged.", css="ok"))
    b.append(H3("Outliers", anchor="outliers"))
    outlier_block = Table(["Session", "Metric", "Value", "Cohort median", "Robust z"],
                          [[o["key"], o["metric"], fmt(o["value"], 4), fmt(o["median"], 4),
                            fmt(o["z"], 1, signed=True)] for o in outliers])
    n_good = len(good)
    if n_good < MIN_SESSIONS_FOR_OUTLIERS:
        b.append(P(f"Outlier screening needs at least {MIN_SESSIONS_FOR_OUTLIERS} successful sessions "
                   f"({n_good} so far).", css="meta"))
    elif outliers:
        b.append(outlier_block)
    else:
        b.append(P("No metric with |robust z| > 3.", css="ok"))
    b.append(P("Robust z = (value − median) / (1.4826 × median absolute deviation) over the successful sessions, "
               "per metric; sessions beyond ±3 are listed.", css="meta"))

    b.append(H2("Failed sessions", anchor="failed"))
    failed = [e for e in entries if e["status"] == "failed"]
    if failed:
        rows_f = []
        for e in failed:
            s = e["_summary"]
            log = s.get("log")
            rows_f.append([e["key"], s.get("failed_step") or e.get("failed_step") or "",
                           s.get("error_category") or e.get("error_category") or "", s.get("error") or "",
                           Link(log, Path(log).as_posix()) if log else "", RowClass("failed")])
        b.append(Table(["Session", "Step", "Category", "Message", "Log"], rows_f))
    else:
        b.append(P("No failed sessions.", css="ok"))
    other = [e for e in entries if e["status"] not in ("success", "failed")]
    if other:
        b.append(H3("Not finished"))
        b.append(UL([f"{e['key']}: {e['status']}"
                     + (f" (last step {e['_summary'].get('last_step')})" if e["_summary"].get("last_step") else "")
                     for e in other]))
    return Document(title=f"cstbatch group report — {study}", blocks=b,
                    footer=f"cstbatch {version}. Automated research output; not a diagnosis.", script=SORT_SCRIPT)


def write_group_report(output_dir: Path, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                       repeated: Mapping[str, Any] | None = None) -> Path:
    """Write ``output_dir/group_report.html`` (self-contained, deterministic) and return its path."""
    from cstbatch.atomic import write_text

    output_dir = Path(output_dir)
    with style():
        doc = build_group_document(output_dir, summary, list(rows or []), repeated)
        text = render_html(doc)
    return write_text(output_dir / "group_report.html", text)
