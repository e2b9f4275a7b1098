"""The tidy longitudinal table: each repeated subject's sessions in order, change from baseline,
and whether a change in CST FA exceeds measurement noise.

Only successful sessions count; subjects with fewer than two are left out. A subject's sessions
are ordered by acquisition time when every one of them has one (rules in
:mod:`cstbatch.study.sessions`), else by the label's natural order (``order_source`` says
which); the first is the baseline. Per session, metric and side (``left``, ``right``,
``laterality``: the index (L − R)/(L + R)):

* ``change`` = value − baseline value, ``pct_change`` = 100 · change / |baseline value|
  (empty when the baseline is 0 or missing);
* ``change_beyond_rc`` (``fa_mean`` only, later sessions): |change| > RC, RC being this study's
  repeatability coefficient of that side's FA (:mod:`cstbatch.outputs.reliability`) when at
  least :data:`MIN_SUBJECTS_FOR_STUDY_RC` subjects give it, else the ``reference_rc_fa``
  option; empty when neither exists. ``rc`` and ``rc_source`` say which was used.

Besides the metrics of batch_metrics.csv, each later session has a ``tract_dice`` row per side
(:func:`overlap_rows`): the Dice of the template cells its CST visits with the baseline's. FA
and volume can repeat while the tract moves; this says whether the same tract was measured.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cstbatch.outputs.reliability import METRICS, SIDES
from cstbatch.study.sessions import SessionTime, session_order_key

MIN_SUBJECTS_FOR_STUDY_RC = 5
FLAG_METRIC = "fa_mean"
OVERLAP_METRIC = "tract_dice"
COLUMNS = ["participant_id", "session_id", "key", "session_index", "acq_time", "order_source", "metric", "side",
           "value", "baseline_session", "change", "pct_change", "rc", "rc_source", "change_beyond_rc"]


def _float(value) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _label(row: Mapping[str, Any]) -> str:
    """What orders sessions by name: the key without the subject (session label + entities)."""
    key, sub = str(row.get("key") or ""), str(row.get("participant_id") or "")
    return key[len(sub) + 1:] if key.startswith(sub + "_") else str(row.get("session_id") or key)


def ordered_subjects(rows: Sequence[Mapping[str, Any]], times: Mapping[str, SessionTime]
                     ) -> dict[str, tuple[list[Mapping[str, Any]], str]]:
    """participant → (its successful sessions in order, ``"acq_time"`` or ``"label"``), for
    participants with at least two; participants sorted by label."""
    by_subject: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if str(row.get("status") or "success") == "success":
            by_subject.setdefault(str(row.get("participant_id")), []).append(row)
    out = {}
    for subject in sorted(by_subject, key=lambda s: session_order_key(s, None, False)):
        sessions = by_subject[subject]
        if len(sessions) < 2:
            continue
        when = {str(r.get("key")): (times.get(str(r.get("key"))) or SessionTime(None, None)).when for r in sessions}
        use_time = all(w is not None for w in when.values())
        sessions = sorted(sessions, key=lambda r: session_order_key(_label(r), when[str(r.get("key"))], use_time))
        out[subject] = (sessions, "acq_time" if use_time else "label")
    return out


def fa_rc(reliability: Sequence[Mapping[str, Any]], reference: float | None) -> dict[str, tuple[float | None, str]]:
    """side → (RC of FA, ``"study"``/``"reference"``/``""``), the rule of the module doc."""
    out = {}
    for side in ("left", "right"):
        row = next((r for r in reliability if r["metric"] == FLAG_METRIC and r["side"] == side), None)
        rc = _float(row.get("rc")) if row else None
        if rc is not None and int(row.get("n_subjects") or 0) >= MIN_SUBJECTS_FOR_STUDY_RC:
            out[side] = (rc, "study")
        elif _float(reference) is not None:
            out[side] = (float(reference), "reference")
        else:
            out[side] = (None, "")
    return out


def _session_columns(subject: str, index: int, row: Mapping[str, Any], baseline: Mapping[str, Any],
                     order_source: str, times: Mapping[str, SessionTime]) -> dict[str, Any]:
    """The columns of a ``longitudinal.tsv`` row that name its session and baseline."""
    key = str(row.get("key"))
    when = (times.get(key) or SessionTime(None, None)).when
    return {"participant_id": subject, "session_id": row.get("session_id") or "n/a", "key": key,
            "session_index": index, "acq_time": when.isoformat() if when else None,
            "order_source": order_source,
            "baseline_session": baseline.get("session_id") or str(baseline.get("key"))}


def longitudinal_rows(rows: Sequence[Mapping[str, Any]], times: Mapping[str, SessionTime],
                      reliability: Sequence[Mapping[str, Any]], reference_rc_fa: float | None = None,
                      metrics: Sequence[str] = METRICS, sides: Sequence[str] = SIDES) -> list[dict[str, Any]]:
    """The rows of ``longitudinal.tsv`` (see the module doc); ``rows``: batch_metrics rows."""
    rcs = fa_rc(reliability, reference_rc_fa)
    out = []
    for subject, (sessions, order_source) in ordered_subjects(rows, times).items():
        baseline = sessions[0]
        for index, row in enumerate(sessions):
            session = _session_columns(subject, index, row, baseline, order_source, times)
            for metric in metrics:
                for side in sides:
                    column = f"{side}_{metric}"
                    value, base = _float(row.get(column)), _float(baseline.get(column))
                    change = value - base if value is not None and base is not None else None
                    pct = 100.0 * change / abs(base) if change is not None and base else None
                    rc, source, beyond = None, "", None
                    if metric == FLAG_METRIC and side in rcs:
                        rc, source = rcs[side]
                        if rc is not None and index > 0 and change is not None:
                            beyond = abs(change) > rc
                    out.append({
                        **session, "metric": metric, "side": side, "value": value,
                        "change": change, "pct_change": pct, "rc": rc, "rc_source": source or None,
                        "change_beyond_rc": None if beyond is None else ("true" if beyond else "false"),
                    })
    return out


def overlap_rows(rows: Sequence[Mapping[str, Any]], times: Mapping[str, SessionTime],
                 dice: Callable[[str, str, str], float | None]) -> list[dict[str, Any]]:
    """``tract_dice`` rows of ``longitudinal.tsv``: per later session and side, ``dice(key,
    baseline key, side)``; None where a side was not found in either session (its FA is empty)."""
    out = []
    for subject, (sessions, order_source) in ordered_subjects(rows, times).items():
        baseline = sessions[0]
        for index, row in enumerate(sessions[1:], start=1):
            session = _session_columns(subject, index, row, baseline, order_source, times)
            for side in ("left", "right"):
                found = all(_float(r.get(f"{side}_fa_mean")) is not None for r in (row, baseline))
                out.append({
                    **session, "metric": OVERLAP_METRIC, "side": side,
                    "value": dice(session["key"], str(baseline.get("key")), side) if found else None,
                    "change": None, "pct_change": None, "rc": None, "rc_source": None, "change_beyond_rc": None,
                })
    return out


def overlap_reliability(dice_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``reliability.tsv`` rows for ``tract_dice``: per side, the mean over subjects of their
    sessions' Dice with the baseline (the other statistics do not apply to an overlap)."""
    out = []
    for side in ("left", "right"):
        per_subject: dict[str, list[float]] = {}
        for r in dice_rows:
            if r["side"] == side and r["value"] is not None:
                per_subject.setdefault(r["participant_id"], []).append(float(r["value"]))
        means = [sum(v) / len(v) for v in per_subject.values()]
        out.append({"metric": OVERLAP_METRIC, "side": side, "n_subjects": len(means),
                    "n_sessions": sum(len(v) + 1 for v in per_subject.values()),
                    "mean": sum(means) / len(means) if means else None,
                    "wcv": None, "icc": None, "sem": None, "rc": None})
    return out


def session_flags(long_rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """key → what batch_summary.json says of a repeated session: baseline, order, FA change per
    side and ``change_beyond_rc`` (true when either side's |ΔFA| > RC, None when unknown or
    for the baseline)."""
    out: dict[str, dict[str, Any]] = {}
    for r in long_rows:
        entry = out.setdefault(r["key"], {"baseline_session": r["baseline_session"],
                                          "session_index": r["session_index"], "order_source": r["order_source"],
                                          "fa_change": {}, "rc_fa": {}, "change_beyond_rc": None,
                                          "change_beyond_rc_sides": []})
        if r["metric"] != FLAG_METRIC or r["side"] not in ("left", "right"):
            continue
        entry["fa_change"][r["side"]] = r["change"]
        entry["rc_fa"][r["side"]] = r["rc"]
        if r["change_beyond_rc"] is not None:
            beyond = r["change_beyond_rc"] == "true"
            entry["change_beyond_rc"] = bool(entry["change_beyond_rc"]) or beyond
            if beyond:
                entry["change_beyond_rc_sides"].append(r["side"])
    return out
