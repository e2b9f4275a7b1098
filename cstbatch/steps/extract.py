"""CST selection from a whole-brain tractogram mapped to MNI mm (the ``extract`` plugin kind).

Both built-in methods have the plugin signature
``func(streamlines_mni, atlas, options) -> {"left": idx, "right": idx}`` (int64 index arrays
into ``streamlines_mni``, ascending).

``extract_passthrough`` (default)
    A streamline is CST if it passes through the brainstem ROI and through exactly one motor
    ROI. The side is the side of that motor ROI; the ROIs are split at MNI x = 0, so left is
    x < 0 in MNI mm, never a voxel axis.
``extract_endpoint``
    One end of the streamline lies in the brainstem ROI and the other in a motor ROI, each
    within ``ENDPOINT_TOLERANCE_MM`` (tracking stops a little short of grey matter).

Both reject: streamlines touching both motor ROIs; streamlines that cross the midline above
the brainstem (above the top of the brainstem ROI they have points with x > +tol and points
with x < -tol, tol = ``MIDLINE_TOLERANCE_MM``: the CST decussates in the medulla, below the
pons, so any crossing higher up is a commissural or false streamline); and streamlines
shorter than ``extract_min_length`` or longer than ``extract_max_length`` (mm).

Then, per side, the bundle core is kept (``extract_core_filter``, default on): every
streamline is oriented brainstem → cortex and resampled to ``CORE_NODES`` points; at each node
the density of the side's streamlines around it is counted (points binned in 2 mm cells,
summed over the 3×3×3 neighbourhood, i.e. within ≈ 3 mm) and divided by the highest density
at that node; a streamline's core score is its lowest value along the nodes, and streamlines
scoring below ``extract_core_threshold`` (default 0.35) are dropped. This removes the sparse
strays that ROI logic alone keeps (paths that wander through neighbouring white matter into
the motor strip, partial-volume tracks) while keeping the dense, coherent tract; with fewer
than ``CORE_MIN_STREAMLINES`` streamlines a side is left as it is.

A second pass grows the core back (``extract_core_regrow``, default 0.15; 0 turns it off):
every candidate is scored again, the same way, against the density of the first pass's core
alone, and those scoring at least that much form the bundle (core members included: one that
stays with the others only where the strays are dense drops out here). Why: in the first pass
the density is that of all candidates, and where many strays share the bundle's path (the
brainstem and internal capsule, which every corticofugal streamline passes) they set the
density peak, so core streamlines running a little off that peak there are dropped although
they follow the bundle from end to end. Scored against the core itself, those come back, while
strays that leave the core anywhere along their length still score ~0 there. On the sample
study this raised the worst CST Dice from 0.70 to 0.75 (right side; left unchanged), on two
independent tracking runs (``benchmarks/sample_accuracy.py``).

Point-in-ROI tests are vectorised over the concatenated points of all streamlines: points go
to template voxel indices (nearest voxel), look up a bit-coded ROI volume, and are OR-reduced
per streamline with ``np.bitwise_or.reduceat``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from nibabel.affines import voxel_sizes

from cstbatch.study.options import OPTIONS, option_value

BRAINSTEM, MOTOR_LEFT, MOTOR_RIGHT = 1, 2, 4
# the options' defaults, named for the docstrings and read from the one options table
MIDLINE_TOLERANCE_MM = OPTIONS["extract_midline_tolerance"].default
ENDPOINT_TOLERANCE_MM = OPTIONS["extract_endpoint_tolerance"].default
CORE_NODES = 20
CORE_CELL_MM = 2.0
CORE_MIN_STREAMLINES = 20
#: streamlines are classified in chunks of about this many points (bounds the temporaries)
CHUNK_POINTS = 1_000_000


# ---------------------------------------------------------------------------------------
def concat_streamlines(streamlines) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points (P, 3) float64, offsets (S,), lengths (S,) in points) of a streamline list."""
    data = getattr(streamlines, "get_data", None)
    if data is not None and hasattr(streamlines, "_offsets"):
        pts = np.asarray(streamlines.get_data(), np.float64)
        lengths = np.asarray(streamlines._lengths, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else np.zeros(0, np.int64)
        return pts, offsets, lengths
    arrs = [np.asarray(s, np.float64).reshape(-1, 3) for s in streamlines]
    lengths = np.array([len(a) for a in arrs], np.int64)
    if not arrs:
        return np.zeros((0, 3)), np.zeros(0, np.int64), lengths
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.concatenate(arrs, axis=0), offsets, lengths


def arc_lengths(points: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Length in mm of every streamline, from concatenated points."""
    n = len(lengths)
    if n == 0:
        return np.zeros(0)
    seg = np.zeros(len(points))
    if len(points) > 1:
        seg[1:] = np.linalg.norm(np.diff(points, axis=0), axis=1)
    seg[offsets[lengths > 0]] = 0.0  # no segment joins two streamlines
    out = np.zeros(n)
    nz = lengths > 0
    out[nz] = np.add.reduceat(seg, offsets[nz])
    return out


def _roi_cache(atlas, key, build):
    cache = atlas.extra.setdefault("_extract_cache", {}) if isinstance(getattr(atlas, "extra", None), dict) else {}
    if key not in cache:
        cache[key] = build()
    return cache[key]


def roi_code_volume(atlas, dilate_mm: float = 0.0) -> np.ndarray:
    """uint8 volume on the template grid: bit 1 brainstem, 2 motor left, 4 motor right."""

    def build():
        from scipy import ndimage

        vox = voxel_sizes(np.asarray(atlas.affine, float))
        code = np.zeros(atlas.shape, np.uint8)
        for bit, name in ((BRAINSTEM, "brainstem"), (MOTOR_LEFT, "motor_left"), (MOTOR_RIGHT, "motor_right")):
            m = atlas.roi(name)
            if dilate_mm > 0 and m.any():
                # distance transform on the ROI's bounding box plus the margin only
                ijk = np.argwhere(m)
                pad = np.ceil(dilate_mm / vox).astype(int) + 1
                lo = np.maximum(ijk.min(0) - pad, 0)
                hi = np.minimum(ijk.max(0) + pad + 1, m.shape)
                sl = tuple(slice(a, b) for a, b in zip(lo, hi))
                grown = np.zeros_like(m)
                grown[sl] = ndimage.distance_transform_edt(~m[sl], sampling=vox) <= dilate_mm
                m = grown
            code[m] |= bit
        return code

    return _roi_cache(atlas, ("code", float(dilate_mm)), build)


def brainstem_top_z(atlas) -> float:
    """Highest MNI z of the brainstem ROI (the level above which midline crossing is banned)."""

    def build():
        ijk = np.argwhere(atlas.roi("brainstem"))
        return float((ijk @ atlas.affine[:3, :3].T + atlas.affine[:3, 3])[:, 2].max())

    return _roi_cache(atlas, ("bs_top",), build)


def point_codes(points: np.ndarray, code: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """ROI code of each MNI mm point (nearest voxel; 0 outside the grid)."""
    if len(points) == 0:
        return np.zeros(0, np.uint8)
    inv = np.linalg.inv(affine)
    v = np.asarray(points, np.float64) @ inv[:3, :3].T
    v += inv[:3, 3]
    np.rint(v, out=v)
    ijk = v.astype(np.int64)
    nx, ny, nz = code.shape
    ok = ((ijk[:, 0] >= 0) & (ijk[:, 0] < nx) & (ijk[:, 1] >= 0) & (ijk[:, 1] < ny)
          & (ijk[:, 2] >= 0) & (ijk[:, 2] < nz))
    flat = (ijk[:, 0] * ny + ijk[:, 1]) * nz + ijk[:, 2]
    flat[~ok] = 0
    out = np.take(np.ascontiguousarray(code).reshape(-1), flat)
    out[~ok] = 0
    return out


def _reduce_or(values: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths), values.dtype)
    nz = lengths > 0
    if nz.any():
        out[nz] = np.bitwise_or.reduceat(values, offsets[nz])
    return out


def _midline_crossing(points, offsets, lengths, z_top, tol) -> np.ndarray:
    """True for streamlines with points at x > tol and x < -tol above ``z_top``."""
    above = points[:, 2] > z_top
    pos = (above & (points[:, 0] > tol)).astype(np.uint8)
    neg = (above & (points[:, 0] < -tol)).astype(np.uint8)
    return (_reduce_or(pos, offsets, lengths) > 0) & (_reduce_or(neg, offsets, lengths) > 0)


def _length_limits(options: Mapping[str, Any]) -> tuple[float, float]:
    lo = float(option_value(options, "extract_min_length", null_is_default=True))
    hi = option_value(options, "extract_max_length")  # null: no upper limit
    return lo, np.inf if hi is None else float(hi)


def _chunks(n_points: np.ndarray, budget: int = CHUNK_POINTS):
    """Consecutive (start, stop) streamline ranges of about ``budget`` points each."""
    start, acc = 0, 0
    for i, k in enumerate(n_points):
        acc += int(k)
        if acc >= budget:
            yield start, i + 1
            start, acc = i + 1, 0
    if start < len(n_points):
        yield start, len(n_points)


def classify_streamlines(streamlines_mni, atlas, options: Mapping[str, Any] | None = None,
                         method: str = "passthrough") -> dict[str, np.ndarray]:
    """Per-streamline flags behind both extraction methods (for diagnostics and tests).

    Returns arrays over streamlines: ``touch`` (bit-OR of ROI codes of all points),
    ``start``/``end`` (codes of the first / last point with the endpoint tolerance),
    ``length_mm``, ``crosses_midline``, ``side`` (+1 left, -1 right, 0 not CST) before the
    core filter.
    """
    if method not in ("passthrough", "endpoint"):
        raise ValueError(f"unknown extraction method {method!r}")
    options = dict(options or {})
    n_points = np.array([len(s) for s in streamlines_mni], np.int64)
    parts = [_classify_chunk([streamlines_mni[i] for i in range(a, b)], atlas, options, method)
             for a, b in _chunks(n_points)]
    keys = ("touch", "start", "end", "length_mm", "crosses_midline", "side")
    if not parts:
        empty = {"touch": np.uint8, "start": np.uint8, "end": np.uint8, "length_mm": float,
                 "crosses_midline": bool, "side": np.int8}
        return {k: np.zeros(0, t) for k, t in empty.items()}
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def _classify_chunk(streamlines_mni, atlas, options, method) -> dict[str, np.ndarray]:
    tol = float(option_value(options, "extract_midline_tolerance"))
    end_tol = float(option_value(options, "extract_endpoint_tolerance"))
    points, offsets, lengths = concat_streamlines(streamlines_mni)
    n = len(lengths)
    aff = atlas.affine
    code = roi_code_volume(atlas)
    touch = _reduce_or(point_codes(points, code, aff), offsets, lengths)
    length_mm = arc_lengths(points, offsets, lengths)
    crosses = _midline_crossing(points, offsets, lengths, brainstem_top_z(atlas), tol)
    lo, hi = _length_limits(options)
    ok = (lengths >= 2) & (length_mm >= lo) & (length_mm <= hi) & ~crosses
    both_motor = (touch & MOTOR_LEFT > 0) & (touch & MOTOR_RIGHT > 0)
    ok &= ~both_motor
    start = np.zeros(n, np.uint8)
    end = np.zeros(n, np.uint8)
    if method == "endpoint":
        dcode = roi_code_volume(atlas, end_tol)
        nz = lengths > 0
        first = offsets[nz]
        last = offsets[nz] + lengths[nz] - 1
        start[nz] = point_codes(points[first], dcode, aff)
        end[nz] = point_codes(points[last], dcode, aff)

        def bs_motor(a, b, m):
            return (a & BRAINSTEM > 0) & (b & m > 0)

        left = bs_motor(start, end, MOTOR_LEFT) | bs_motor(end, start, MOTOR_LEFT)
        right = bs_motor(start, end, MOTOR_RIGHT) | bs_motor(end, start, MOTOR_RIGHT)
        # an end in both (dilated) motor ROIs cannot be sided
        left, right = left & ~right, right & ~left
    else:
        in_bs = touch & BRAINSTEM > 0
        left = in_bs & (touch & MOTOR_LEFT > 0)
        right = in_bs & (touch & MOTOR_RIGHT > 0)
    side = np.zeros(n, np.int8)
    side[ok & left] = 1
    side[ok & right] = -1
    return {"touch": touch, "start": start, "end": end, "length_mm": length_mm,
            "crosses_midline": crosses, "side": side}


def _node_density_scores(res: np.ndarray, cell_mm: float, reference: np.ndarray | None) -> np.ndarray:
    """Per streamline, the lowest over nodes of its neighbourhood density relative to the peak.

    ``reference``: bool over the streamlines; when given, densities count only the reference
    streamlines' points and the peak is the highest among them (the regrowing pass).
    """
    from scipy import ndimage

    score = np.ones(len(res))
    for k in range(res.shape[1]):
        p = res[:, k]
        cell = np.floor((p - p.min(axis=0)) / cell_mm).astype(np.int64) + 1
        grid = np.zeros(tuple(cell.max(axis=0) + 2), np.float64)
        np.add.at(grid, tuple((cell if reference is None else cell[reference]).T), 1.0)
        near = ndimage.uniform_filter(grid, size=3, mode="constant") * 27.0
        dens = near[tuple(cell.T)]
        peak = dens.max() if reference is None else dens[reference].max()
        score = np.minimum(score, dens / peak)
    return score


def core_filter(streamlines_mni: Sequence[np.ndarray], idx: np.ndarray,
                options: Mapping[str, Any] | None = None) -> np.ndarray:
    """The subset of ``idx`` (one side's streamlines) forming the bundle core."""
    from cstbatch.steps.metrics import _resample, orient_streamlines

    options = dict(options or {})
    if not option_value(options, "extract_core_filter") or len(idx) < CORE_MIN_STREAMLINES:
        return idx
    thr = float(option_value(options, "extract_core_threshold"))
    regrow = option_value(options, "extract_core_regrow")
    regrow = 0.0 if regrow is None else float(regrow)
    sl = [np.asarray(streamlines_mni[i], np.float64) for i in idx]
    res = _resample(orient_streamlines(sl, np.eye(4)), CORE_NODES)  # (S, N, 3), both passes
    core = _node_density_scores(res, CORE_CELL_MM, None) >= thr
    if regrow > 0 and core.any():
        core = _node_density_scores(res, CORE_CELL_MM, core) >= regrow
    return idx[core]


def _result(side: np.ndarray) -> dict[str, np.ndarray]:
    return {"left": np.flatnonzero(side == 1).astype(np.int64),
            "right": np.flatnonzero(side == -1).astype(np.int64)}


def _extract(streamlines_mni, atlas, options, method):
    sel = _result(classify_streamlines(streamlines_mni, atlas, options, method)["side"])
    return {side: core_filter(streamlines_mni, idx, options) for side, idx in sel.items()}


def extract_passthrough(streamlines_mni: Sequence[np.ndarray], atlas, options: Mapping[str, Any] | None = None):
    """CST streamlines passing through the brainstem and one motor ROI (see module doc)."""
    return _extract(streamlines_mni, atlas, options, "passthrough")


def extract_endpoint(streamlines_mni: Sequence[np.ndarray], atlas, options: Mapping[str, Any] | None = None):
    """CST streamlines with one end in the brainstem and the other in a motor ROI."""
    return _extract(streamlines_mni, atlas, options, "endpoint")


#: name -> extractor, for the built-in registration.
EXTRACTORS = {"passthrough": extract_passthrough, "endpoint": extract_endpoint}


def selected_streamlines(streamlines: Sequence[np.ndarray], selected: Mapping[str, Any], side: str) -> list[np.ndarray]:
    """The side's CST streamlines from an extractor's result: ``streamlines[i]`` for each index,
    cut to its point range when the extractor gave ``ranges`` (any extractor may; see
    :mod:`cstbatch.hookspecs`). ``streamlines`` may be in any space: ranges count points."""
    idx = np.asarray(selected[side], dtype=np.int64)
    ranges = (selected.get("ranges") or {}).get(side)
    if ranges is None:
        return [streamlines[i] for i in idx]
    return [streamlines[i][int(a):int(b)] for i, (a, b) in zip(idx, np.asarray(ranges, np.int64))]
