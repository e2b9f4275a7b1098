"""The group report's longitudinal section: repeated subjects over time, change against noise.

Blocks, for a study where at least one subject has two successful sessions: FA trajectories
per subject and side; each later session's FA change from baseline against the ±RC band (the
repeatability coefficient that ``change_beyond_rc`` uses); the reliability table; and, for one
subject, the FA profile of its second session minus its first along the tract (brainstem →
cortex), which shows *where* a change in mean FA comes from. The subject shown is the one with
the largest |ΔFA| among sessions flagged beyond RC, else the first repeated subject.

Input is what :func:`cstbatch.outputs.aggregate.write_longitudinal` returns (tables already
written to ``longitudinal.tsv``/``reliability.tsv``); profiles are read from the sessions'
metrics.json.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cstbatch.outputs.figures import (
    H2,
    H3,
    SIDE_COLORS,
    Fig,
    P,
    RowClass,
    Table,
    fmt,
    new_figure,
    to_float,
)
from cstbatch.outputs.layout import SessionLayout
from cstbatch.outputs.longitudinal import FLAG_METRIC, MIN_SUBJECTS_FOR_STUDY_RC, fa_rc

SIDES = ("left", "right")
_CYCLE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
          "#ccb974", "#64b5cd")


def _fa_rows(long_rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in long_rows if r["metric"] == FLAG_METRIC and r["side"] in SIDES]


def _by_subject(long_rows) -> dict[str, list[Mapping[str, Any]]]:
    """participant → its FA rows in session order (both sides)."""
    out: dict[str, list] = {}
    for r in _fa_rows(long_rows):
        out.setdefault(r["participant_id"], []).append(r)
    return out


def trajectories_figure(long_rows):
    """Mean FA per session, one line per subject, left and right panels."""
    fig = new_figure(8.6, 3.4)
    axes = fig.subplots(1, 2, sharey=True)
    subjects = _by_subject(long_rows)
    for ax, side in zip(axes, SIDES):
        for i, (subject, rows) in enumerate(subjects.items()):
            pts = [(r["session_index"], to_float(r["value"])) for r in rows if r["side"] == side]
            x, y = np.array(pts, float).T if pts else (np.zeros(0), np.zeros(0))
            ax.plot(x, y, marker="o", ms=3.5, lw=1.1, color=_CYCLE[i % len(_CYCLE)], label=subject)
        ax.set_title(f"{side} CST")
        ax.set_xlabel("session (0 = baseline, in acquisition order)")
        ax.grid(alpha=0.3, lw=0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("mean FA")
    if len(subjects) <= 12:
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=6)
    fig.subplots_adjust(left=0.08, right=0.86, top=0.9, bottom=0.15, wspace=0.08)
    return fig


def change_figure(long_rows, rcs: Mapping[str, tuple[float | None, str]]):
    """Each later session's ΔFA from baseline per side, against the ±RC band."""
    later = [r for r in _fa_rows(long_rows) if r["session_index"] > 0]
    keys = list(dict.fromkeys(r["key"] for r in later))
    fig = new_figure(8.6, 3.2 + 0.05 * max(0, len(keys) - 10))
    ax = fig.add_subplot(1, 1, 1)
    x = {k: i for i, k in enumerate(keys)}
    offset = {"left": -0.12, "right": 0.12}
    for side in SIDES:
        rc, source = rcs.get(side, (None, ""))
        if rc is not None:
            ax.axhspan(-rc, rc, color=SIDE_COLORS[side], alpha=0.08, lw=0)
            for y in (-rc, rc):
                ax.axhline(y, color=SIDE_COLORS[side], lw=0.8, ls="--")
        rows = [r for r in later if r["side"] == side and r["change"] is not None]
        xs = np.array([x[r["key"]] + offset[side] for r in rows], float)
        ys = np.array([to_float(r["change"]) for r in rows], float)
        beyond = np.array([r["change_beyond_rc"] == "true" for r in rows], bool)
        label = f"{side}" + (f" (±RC {fmt(rc, 3)}, {source})" if rc is not None else " (no RC)")
        ax.scatter(xs, ys, s=18, color=SIDE_COLORS[side], label=label, zorder=3, edgecolors="none")
        if beyond.any():
            ax.scatter(xs[beyond], ys[beyond], s=70, facecolors="none", edgecolors="black", lw=1.0, zorder=4)
    ax.axhline(0, color="#666", lw=0.8)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=30, ha="right", fontsize=6)
    ax.set_xlim(-0.6, max(len(keys), 1) - 0.4)
    ax.set_ylabel("ΔFA from baseline")
    ax.set_title("Change in mean CST FA against the repeatability coefficient (ringed: beyond RC)")
    ax.grid(axis="y", alpha=0.3, lw=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.subplots_adjust(left=0.1, right=0.76, top=0.9, bottom=0.3)
    return fig


def _profiles(output_dir: Path, subject: str, row: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict]:
    """(side → FA profile (brainstem → cortex), side → the MNI z it starts at or None) of a
    session, from its metrics.json."""
    session = row.get("session_id")
    rel = Path(subject, session) if session and session != "n/a" else Path(subject)
    path = SessionLayout(Path(output_dir), str(row["key"]), rel).metrics_json
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}, {}
    data = data.get("metrics", data)
    out, start = {}, {}
    for side in SIDES:
        prof = ((data.get(side) or {}).get("profiles") or {}).get("fa")
        if prof:
            out[side] = np.array([to_float(v) for v in prof], float)
            start[side] = (data.get(side) or {}).get("profile_start_z_mni")
    return out, start


def same_start(p1: dict, s1: dict, p2: dict, s2: dict) -> tuple[dict, dict, list[str]]:
    """The two sessions' profiles of the sides whose profiles start at the same level, and a
    sentence per side left out. Why: since metrics version 11 a profile starts at the lowest
    level the extraction requires, which is higher on an image that stops in the pons; node k of
    two such profiles lies at other levels, and their difference would be read as a change."""
    keep1, keep2, notes = {}, {}, []
    for side in set(p1) & set(p2):
        a, b = s1.get(side), s2.get(side)
        if a is not None and b is not None and abs(float(a) - float(b)) > 0.5:
            notes.append(f"The {side} profiles start at other levels (MNI z {float(a):.0f} and {float(b):.0f}: "
                         "the fields of view differ), so their difference is not drawn.")
            continue
        keep1[side], keep2[side] = p1[side], p2[side]
    return keep1, keep2, sorted(notes)


def chosen_subject(long_rows) -> str | None:
    """The subject whose profile difference is shown (see module doc)."""
    flagged = [r for r in _fa_rows(long_rows) if r["change_beyond_rc"] == "true"]
    if flagged:
        return max(flagged, key=lambda r: (abs(to_float(r["change"])), r["participant_id"]))["participant_id"]
    subjects = _by_subject(long_rows)
    return next(iter(subjects), None)


def profile_difference_figure(first: Mapping[str, np.ndarray], second: Mapping[str, np.ndarray], labels):
    """Top: both sessions' FA profiles; bottom: second − first, per side."""
    fig = new_figure(8.6, 4.6)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for side in SIDES:
        a, b = first.get(side), second.get(side)
        if a is None or b is None or a.shape != b.shape:
            continue
        nodes = np.arange(a.size)
        ax1.plot(nodes, a, color=SIDE_COLORS[side], lw=1.2, label=f"{side}, {labels[0]}")
        ax1.plot(nodes, b, color=SIDE_COLORS[side], lw=1.2, ls="--", label=f"{side}, {labels[1]}")
        ax2.plot(nodes, b - a, color=SIDE_COLORS[side], lw=1.2, label=side)
    ax2.axhline(0, color="#666", lw=0.8)
    ax1.set_ylabel("FA")
    ax1.set_title(f"FA profile along the CST: {labels[1]} − {labels[0]}")
    ax1.legend(loc="best", frameon=False, ncol=2)
    ax2.set_ylabel(f"ΔFA ({labels[1]} − {labels[0]})")
    ax2.set_xlabel("node (0 = brainstem end, last = cortical end)")
    ax2.legend(loc="best", frameon=False)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, lw=0.5)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.93, bottom=0.1, hspace=0.12)
    return fig


def sig(value, digits: int = 4) -> str:
    """``digits`` significant digits: MD (~0.0008 mm²/s) and volume (~5000 mm³) share columns."""
    v = to_float(value)
    return "n/a" if not np.isfinite(v) else f"{v:.{digits}g}".replace("-", "−")


def reliability_table(rel_rows: Sequence[Mapping[str, Any]]):
    rows = [[r["metric"], r["side"], r["n_subjects"], r["n_sessions"], sig(r["mean"]), fmt(r["wcv"], 4),
             fmt(r["icc"], 3), sig(r["sem"]), sig(r["rc"])] for r in rel_rows if r["n_subjects"]]
    return Table(["Metric", "Side", "Subjects", "Sessions", "Mean", "wCV", "ICC(1,1)", "SEM", "RC"], rows)


def change_table(long_rows):
    later: dict[str, dict] = {}
    for r in _fa_rows(long_rows):
        if r["session_index"] > 0:
            later.setdefault(r["key"], {"row": r})[r["side"]] = r
    rows = []
    for key, e in later.items():
        base = e["row"]
        flags = [e[s]["change_beyond_rc"] for s in SIDES if s in e]
        beyond = "yes" if "true" in flags else ("no" if "false" in flags else "n/a")
        rows.append([key, base["participant_id"], base["baseline_session"], base["order_source"],
                     *(fmt(e[s]["change"], 4, signed=True) if s in e else "n/a" for s in SIDES),
                     *(fmt(e[s]["rc"], 4) if s in e else "n/a" for s in SIDES), beyond,
                     RowClass("flagged" if beyond == "yes" else "")])
    return Table(["Session", "Participant", "Baseline", "Order by", "ΔFA left", "ΔFA right", "RC left",
                  "RC right", "Beyond RC"], rows)


def longitudinal_blocks(output_dir: Path, repeated: Mapping[str, Any] | None) -> list:
    """The section's blocks (a heading and a note when no subject has repeated sessions)."""
    blocks = [H2("Longitudinal and test-retest", anchor="longitudinal")]
    long_rows = list((repeated or {}).get("longitudinal") or [])
    rel_rows = list((repeated or {}).get("reliability") or [])
    if not long_rows:
        blocks.append(P("No subject has two or more successful sessions.", css="meta"))
        return blocks
    subjects = _by_subject(long_rows)
    n_sessions = len({r["key"] for r in long_rows})
    by_time = sorted({s for s, rows in subjects.items() if rows[0]["order_source"] == "acq_time"})
    n = len(subjects)
    rule = " (a subject is ordered by acquisition time only when every one of its sessions has one)"
    if len(by_time) == n:
        order = "by acquisition time"
    elif not by_time:
        order = "by session label" + rule
    else:
        order = f"by acquisition time for {len(by_time)} of them, by session label for the others" + rule
    blocks.append(P(f"{n} {'subject' if n == 1 else 'subjects'} with repeated sessions ({n_sessions} sessions). "
                    f"Sessions are ordered {order}; the first is the baseline. Tables: longitudinal.tsv, "
                    "reliability.tsv.", css="meta"))
    blocks.append(Fig(trajectories_figure(long_rows), "Mean FA of the left and right CST per session, "
                                                       "one line per subject."))
    rcs = fa_rc(rel_rows, (repeated or {}).get("reference_rc_fa"))
    if any(r["session_index"] > 0 for r in long_rows):
        blocks.append(Fig(change_figure(long_rows, rcs),
                          "FA change from baseline of each later session (left red, right blue). Band: ±RC, the "
                          "repeatability coefficient, within which 95 % of test-retest differences fall when "
                          f"nothing changed; from this study when ≥ {MIN_SUBJECTS_FOR_STUDY_RC} subjects have "
                          "repeated sessions, else the reference_rc_fa option."))
        blocks.append(H3("Change from baseline"))
        blocks.append(change_table(long_rows))
    if all(rc is None for rc, _ in rcs.values()):
        blocks.append(P(f"No RC for FA: fewer than {MIN_SUBJECTS_FOR_STUDY_RC} subjects with repeated sessions and "
                        "no reference_rc_fa option, so no session is flagged.", css="warn"))
    blocks.append(H3("Test-retest reliability", anchor="reliability"))
    blocks.append(reliability_table(rel_rows))
    blocks.append(P("Over subjects with ≥ 2 successful sessions: wCV = √mean(sᵢ/mᵢ)², ICC(1,1) from a one-way "
                    "random-effects ANOVA (unequal sessions per subject), SEM = Sw = √mean(sᵢ²), RC = 2.77·Sw. "
                    "The wCV of a laterality index (mean near 0) is not meaningful; use its SEM and RC. "
                    "tract_dice: the Dice of the 2 mm template cells a later session's CST visits with the "
                    "baseline's, averaged per subject, then over subjects (1 = the same tract).", css="meta"))
    subject = chosen_subject(long_rows)
    rows = subjects.get(subject) or []
    sessions = list(dict.fromkeys((r["session_index"], r["key"]) for r in rows))
    order = {idx: next(r for r in rows if r["session_index"] == idx) for idx, _ in sessions}
    if len(order) >= 2:
        first, second = order[0], order[min(k for k in order if k > 0)]
        (p1, s1), (p2, s2) = _profiles(output_dir, subject, first), _profiles(output_dir, subject, second)
        blocks.append(H3(f"FA profile difference: {subject}"))
        found = bool(set(p1) & set(p2))
        p1, p2, notes = same_start(p1, s1, p2, s2)
        blocks += [P(n, css="warn") for n in notes]
        if set(p1) & set(p2):
            labels = (str(first["session_id"]), str(second["session_id"]))
            blocks.append(Fig(profile_difference_figure(p1, p2, labels),
                              f"{subject}: FA profile of each side along the CST in {labels[0]} (solid) and "
                              f"{labels[1]} (dashed), and their difference; where along the tract mean FA changed."))
        elif not found:
            blocks.append(P(f"No FA profiles found in {subject}'s metrics.json.", css="warn"))
    return blocks
