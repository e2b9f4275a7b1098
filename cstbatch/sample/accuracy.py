"""How close a processed sample study comes to its ground truth.

The sample generator writes the truth beside the BIDS tree (bundle masks in subject space,
noise-free FA, the lesion and the true subject → MNI transform); this module reads a
finished derivative dataset of that study and measures, per session, the numbers the CST
extraction issue sets bars on. The same code serves the end-to-end test (which asserts the
bars on every session) and ``benchmarks/sample_accuracy.py`` (which prints them), so the
numbers in a closing note are the ones the tests check.

Definitions
-----------
dice_left / dice_right
    Dice of the voxels visited by the extracted side (as ``volume_mm3`` counts them) with the
    truth mask of the same side.
swap_left / swap_right
    Dice of the extracted side with the truth mask of the *other* side (a swap shows as ~0.8).
fa_error_left / fa_error_right
    |metrics ``fa_mean`` − mean noise-free FA in the truth mask|.
distractor_share
    Fraction of all extracted streamlines with more of their points in the distractor
    (frontopontine) truth mask than in either CST mask.
lesion_min_z_mni / lesion_min_in_segment
    For a lesioned session: the MNI z (true transform) of the lowest node of the lesioned
    side's FA profile, and whether it lies inside the lesion's z range. The first and last
    ``TRIM_FRACTION`` of nodes are left out, as for the FA means: those ends lie in the
    medulla and in cortical grey matter, where FA is low for reasons unrelated to the tract.
fa_laterality_sign_ok
    For a lesioned session: the FA laterality index has the sign of the healthier side.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

#: the bars of the CST extraction issue (on the sample study)
BARS = {
    "dice_min": 0.70,
    "swap_max": 0.05,
    "fa_error_max": 0.03,
    "distractor_share_max": 0.05,
}
SIDES = ("left", "right")


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = int(a.sum() + b.sum())
    return float(2 * (a & b).sum() / s) if s else float("nan")


def _session_dir(out_dir: Path, entry: dict) -> Path:
    d = Path(out_dir) / entry["subject"]
    return d / entry["session"] if entry.get("session") else d


def _load_streamlines(path: Path) -> list[np.ndarray]:
    import nibabel as nib

    return [np.asarray(s, np.float64) for s in nib.streamlines.load(str(path)).streamlines]


def _mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj) > 0, img.affine


def _points_in(streamline: np.ndarray, mask: np.ndarray, inv: np.ndarray) -> int:
    v = np.rint(streamline @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ok = np.all((v >= 0) & (v < np.array(mask.shape)), axis=1)
    v = v[ok]
    return int(mask[v[:, 0], v[:, 1], v[:, 2]].sum())


def check_session(out_dir: Path, sample_dir: Path, entry: dict) -> dict[str, Any]:
    """The accuracy numbers of one session (see module doc); ``entry`` is a session of
    ``sample_info.json``."""
    from cstbatch.steps.metrics import (
        TRIM_FRACTION,
        _resample,
        orient_streamlines,
        visited_voxel_mask,
    )

    key = entry["key"]
    tdir = Path(sample_dir) / "truth" / key
    truth = json.loads((tdir / "truth.json").read_text())
    sdir = _session_dir(out_dir, entry)
    metrics = json.loads((sdir / "metrics" / f"{key}_metrics.json").read_text())["metrics"]
    masks = {}
    for name in ("cst_left", "cst_right", "distractor"):
        masks[name], affine = _mask(tdir / f"{name}_mask.nii.gz")
    shape = masks["cst_left"].shape
    bundles = {s: _load_streamlines(sdir / "tractography" / f"{key}_desc-cst{s[0].upper()}_tractogram.trk")
               for s in SIDES}
    visited = {s: visited_voxel_mask(bundles[s], shape, affine) for s in SIDES}
    out: dict[str, Any] = {"key": key, "orientation": truth["orientation"]}
    for s, other in (("left", "right"), ("right", "left")):
        out[f"streamlines_{s}"] = len(bundles[s])
        out[f"dice_{s}"] = dice(visited[s], masks[f"cst_{s}"])
        out[f"swap_{s}"] = dice(visited[s], masks[f"cst_{other}"])
        fa = metrics[s]["fa_mean"]
        out[f"fa_{s}"] = fa
        out[f"fa_truth_{s}"] = truth["fa_noisefree_mean"][f"cst_{s}"]
        out[f"fa_error_{s}"] = math.inf if fa is None else abs(fa - out[f"fa_truth_{s}"])
    inv = np.linalg.inv(affine)
    cst = masks["cst_left"] | masks["cst_right"]
    every = bundles["left"] + bundles["right"]
    bad = sum(_points_in(sl, masks["distractor"], inv) > _points_in(sl, cst, inv) for sl in every)
    out["distractor_share"] = bad / len(every) if every else math.nan
    out["fa_laterality"] = metrics["laterality"]["fa_mean"]
    lesion = truth.get("lesion")
    if lesion:
        side = lesion["side"]
        nodes = int(metrics.get("profile_nodes") or 100)
        z = metrics[side].get("profile_z_mni")  # each node's level (metrics version 11)
        if z is None:  # written before: the level of node k in the mean streamline
            to_mni = np.asarray(truth["subject_to_mni"], float)
            res = _resample(orient_streamlines(bundles[side], to_mni), nodes)
            z = (res @ to_mni[2, :3] + to_mni[2, 3]).mean(axis=0)
        z = np.array([np.nan if v is None else v for v in z], float)
        profile = np.array([np.nan if v is None else v for v in metrics[side]["profiles"]["fa"]])
        trim = int(np.floor(TRIM_FRACTION * nodes))
        inner = np.arange(trim, nodes - trim)
        node = int(inner[np.nanargmin(profile[inner])])
        zlo, zhi = lesion["mni_z_range_mm"]
        out["lesion_side"] = side
        out["lesion_min_node"] = node
        out["lesion_min_z_mni"] = float(z[node])
        out["lesion_min_in_segment"] = bool(zlo <= z[node] <= zhi)
        la = out["fa_laterality"]
        out["fa_laterality_sign_ok"] = la is not None and (la < 0 if side == "left" else la > 0)
    return out


def failures(row: dict[str, Any]) -> list[str]:
    """Which bars a session's numbers miss (empty when it meets all of them)."""
    bad = []
    for s in SIDES:
        if not row[f"dice_{s}"] >= BARS["dice_min"]:
            bad.append(f"dice_{s} {row[f'dice_{s}']:.3f} < {BARS['dice_min']}")
        if not row[f"swap_{s}"] <= BARS["swap_max"]:
            bad.append(f"swap_{s} {row[f'swap_{s}']:.3f} > {BARS['swap_max']}")
        if not row[f"fa_error_{s}"] <= BARS["fa_error_max"]:
            bad.append(f"fa_error_{s} {row[f'fa_error_{s}']:.3f} > {BARS['fa_error_max']}")
    if not row["distractor_share"] < BARS["distractor_share_max"]:
        bad.append(f"distractor_share {row['distractor_share']:.3f} >= {BARS['distractor_share_max']}")
    if "lesion_side" in row:
        if not row["lesion_min_in_segment"]:
            bad.append(f"lesion profile minimum at MNI z {row['lesion_min_z_mni']:.1f}, outside the segment")
        if not row["fa_laterality_sign_ok"]:
            bad.append(f"FA laterality {row['fa_laterality']} has the wrong sign")
    return bad


def check_study(out_dir: Path, sample_dir: Path, keys=None) -> list[dict[str, Any]]:
    """:func:`check_session` for every session of the sample study (or those in ``keys``)."""
    info = json.loads((Path(sample_dir) / "sample_info.json").read_text())
    return [check_session(out_dir, sample_dir, e) for e in info["sessions"]
            if keys is None or e["key"] in keys]
