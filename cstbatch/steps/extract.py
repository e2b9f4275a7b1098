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

Point-in-ROI tests are vectorised over the concatenated points of all streamlines: points go
to template voxel indices (nearest voxel), look up a bit-coded ROI volume, and are OR-reduced
per streamline with ``np.bitwise_or.reduceat``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

BRAINSTEM, MOTOR_LEFT, MOTOR_RIGHT = 1, 2, 4
MIDLINE_TOLERANCE_MM = 3.0
ENDPOINT_TOLERANCE_MM = 3.0
DEFAULT_MIN_LENGTH = 40.0
DEFAULT_MAX_LENGTH = 250.0


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

        vox = np.sqrt((atlas.affine[:3, :3] ** 2).sum(axis=0))
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
    """ROI code of each MNI mm point (0 outside the grid)."""
    if len(points) == 0:
        return np.zeros(0, np.uint8)
    inv = np.linalg.inv(affine)
    ijk = np.rint(points @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
    shape = np.array(code.shape)
    ok = np.all((ijk >= 0) & (ijk < shape), axis=1)
    out = np.zeros(len(points), np.uint8)
    i = ijk[ok]
    out[ok] = code[i[:, 0], i[:, 1], i[:, 2]]
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
    lo = options.get("extract_min_length", DEFAULT_MIN_LENGTH)
    hi = options.get("extract_max_length", DEFAULT_MAX_LENGTH)
    lo = DEFAULT_MIN_LENGTH if lo is None else float(lo)
    hi = np.inf if hi is None else float(hi)
    return lo, hi


def classify_streamlines(streamlines_mni, atlas, options: Mapping[str, Any] | None = None,
                         method: str = "passthrough") -> dict[str, np.ndarray]:
    """Per-streamline flags behind both extraction methods (for diagnostics and tests).

    Returns arrays over streamlines: ``touch`` (bit-OR of ROI codes of all points),
    ``start``/``end`` (codes of the first / last point with the endpoint tolerance),
    ``length_mm``, ``crosses_midline``, ``side`` (+1 left, -1 right, 0 not CST).
    """
    options = dict(options or {})
    tol = float(options.get("extract_midline_tolerance", MIDLINE_TOLERANCE_MM))
    end_tol = float(options.get("extract_endpoint_tolerance", ENDPOINT_TOLERANCE_MM))
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
        bs_motor = lambda a, b, m: (a & BRAINSTEM > 0) & (b & m > 0)  # noqa: E731
        left = bs_motor(start, end, MOTOR_LEFT) | bs_motor(end, start, MOTOR_LEFT)
        right = bs_motor(start, end, MOTOR_RIGHT) | bs_motor(end, start, MOTOR_RIGHT)
        # an end in both (dilated) motor ROIs cannot be sided
        left &= ~right
        right &= ~left
    elif method == "passthrough":
        in_bs = touch & BRAINSTEM > 0
        left = in_bs & (touch & MOTOR_LEFT > 0)
        right = in_bs & (touch & MOTOR_RIGHT > 0)
    else:
        raise ValueError(f"unknown extraction method {method!r}")
    side = np.zeros(n, np.int8)
    side[ok & left] = 1
    side[ok & right] = -1
    return {"touch": touch, "start": start, "end": end, "length_mm": length_mm,
            "crosses_midline": crosses, "side": side}


def _result(side: np.ndarray) -> dict[str, np.ndarray]:
    return {"left": np.flatnonzero(side == 1).astype(np.int64),
            "right": np.flatnonzero(side == -1).astype(np.int64)}


def extract_passthrough(streamlines_mni: Sequence[np.ndarray], atlas, options: Mapping[str, Any] | None = None):
    """CST streamlines passing through the brainstem and one motor ROI (see module doc)."""
    return _result(classify_streamlines(streamlines_mni, atlas, options, "passthrough")["side"])


def extract_endpoint(streamlines_mni: Sequence[np.ndarray], atlas, options: Mapping[str, Any] | None = None):
    """CST streamlines with one end in the brainstem and the other in a motor ROI."""
    return _result(classify_streamlines(streamlines_mni, atlas, options, "endpoint")["side"])


#: name -> extractor, for the built-in registration.
EXTRACTORS = {"passthrough": extract_passthrough, "endpoint": extract_endpoint}
