"""Test-retest reliability of each CST metric: how large a change must be to exceed noise.

Over the subjects with at least two successful sessions that have a value of the metric
(subject i: n_i values, mean m_i, sample SD s_i with ddof 1; k subjects, N values in all):

wcv
    within-subject coefficient of variation, sqrt(mean_i (s_i / m_i)²) (root mean square of
    the per-subject CVs); empty when some m_i is 0. Meaningless for laterality indices, whose
    mean is near 0: use their SEM and RC.
icc
    ICC(1,1), one-way random-effects ANOVA with unequal group sizes:
    (MSB − MSW) / (MSB + (n0 − 1)·MSW), MSB = Σ n_i (m_i − m)² / (k − 1),
    MSW = Σ_i Σ_j (x_ij − m_i)² / (N − k), n0 = (N − Σ n_i² / N) / (k − 1), m the grand mean.
    Empty with fewer than 2 subjects or when there is no variance at all.
sem
    Sw = sqrt(mean_i s_i²), the within-subject SD (subjects weigh alike, whatever n_i).
rc
    repeatability coefficient 2.77·Sw (= 1.96·√2·Sw): 95 % of differences between two
    measurements of the same subject lie within ±RC when nothing changed.
mean
    grand mean of the values used.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

RC_FACTOR = 2.77
#: metrics of batch_metrics.csv (``<side>_<metric>``) whose reliability is reported
METRICS = ("fa_mean", "md_mean", "rd_mean", "ad_mean", "volume_mm3", "streamline_count", "mean_length_mm")
SIDES = ("left", "right", "laterality")
COLUMNS = ["metric", "side", "n_subjects", "n_sessions", "mean", "wcv", "icc", "sem", "rc"]


def _finite(values: Iterable[Any]) -> np.ndarray:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return np.asarray(out, float)


def reliability(groups: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """Statistics of the module doc over ``groups`` (one sequence of repeated values per
    subject; non-numeric values are dropped, then subjects with fewer than 2 values)."""
    data = [g for g in (_finite(g) for g in groups) if g.size >= 2]
    k = len(data)
    out: dict[str, Any] = {"n_subjects": k, "n_sessions": int(sum(g.size for g in data)),
                           "mean": None, "wcv": None, "icc": None, "sem": None, "rc": None}
    if k == 0:
        return out
    means = np.array([g.mean() for g in data])
    sds = np.array([g.std(ddof=1) for g in data])
    sizes = np.array([g.size for g in data], float)
    n_total = sizes.sum()
    grand = float(np.concatenate(data).mean())
    out["mean"] = grand
    if np.all(means != 0):
        out["wcv"] = float(np.sqrt(np.mean((sds / means) ** 2)))
    sw = float(np.sqrt(np.mean(sds ** 2)))
    out["sem"], out["rc"] = sw, RC_FACTOR * sw
    if k >= 2:
        msb = float(np.sum(sizes * (means - grand) ** 2) / (k - 1))
        msw = float(sum(((g - g.mean()) ** 2).sum() for g in data) / (n_total - k))
        n0 = float((n_total - np.sum(sizes ** 2) / n_total) / (k - 1))
        denom = msb + (n0 - 1) * msw
        if denom > 0:
            out["icc"] = float((msb - msw) / denom)
    return out


def subject_groups(rows: Sequence[Mapping[str, Any]], column: str) -> dict[str, list[float]]:
    """participant → the column's values over its successful sessions (rows: batch_metrics)."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        if str(row.get("status") or "success") != "success":
            continue
        values = _finite([row.get(column)])
        if values.size:
            groups.setdefault(str(row.get("participant_id")), []).append(float(values[0]))
    return groups


def reliability_rows(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS,
                     sides: Sequence[str] = SIDES) -> list[dict[str, Any]]:
    """One row per metric and side (``laterality``: the index (L − R)/(L + R)) of ``rows``."""
    out = []
    for metric in metrics:
        for side in sides:
            groups = subject_groups(rows, f"{side}_{metric}")
            out.append({"metric": metric, "side": side, **reliability(groups.values())})
    return out
