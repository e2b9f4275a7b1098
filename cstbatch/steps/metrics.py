"""Per-side CST metrics: counts, volume, length, diffusion scalars, profiles, laterality.

Inputs are in subject space: streamlines as (n, 3) RAS+ mm arrays, scalar maps on the DWI
grid with its voxel → RAS+ mm ``affine``.

Definitions
-----------
streamline_count
    Number of streamlines of the side.
volume_mm3
    Voxels visited by at least one streamline (streamlines densified to ≤ half a voxel per
    step first, so no voxel is jumped over) × voxel volume.
mean_length_mm
    Mean arc length.
fa / md / rd / ad (``*_mean``, ``*_std``)
    Each streamline is resampled to ``profile_nodes`` equally spaced points (arc length,
    ``dipy.tracking.streamline.set_number_of_points``), the map is sampled there by
    trilinear interpolation, the streamline's value is the mean over its points except the
    first and last ``TRIM_FRACTION`` (5 %) of nodes; the side's value is the mean (and std)
    over streamlines, so long and short streamlines weigh alike. The ends are left out as
    AFQ clips profiles to the stretch between its waypoint ROIs: tracking runs on into the
    medulla and into cortical grey matter, where partial volume drags FA down (by ~0.03–0.05
    on the phantom) without saying anything about the tract.
profiles
    Per node (0 = brainstem end, N-1 = cortical end) mean and std over streamlines. Every
    streamline is first oriented brainstem → cortex: the end with the lower MNI z comes first
    when the subject → MNI transform is given; else the end nearer the subject-space
    brainstem mask; else the end with the lower subject z. When the extraction says how low a
    CST streamline reaches (``profile_from_z``: the corridor extractor's ``inferior_top_z_mni``,
    MNI z -18, the pons, or a truncated image's lowest level plus 10 mm), only the streamlines
    whose brainstem end lies at or below it are averaged, when two or more do
    (:func:`_profile_rows`): corridor version 8 also keeps streamlines that start in the crus
    cerebri, higher. ``profile_streamline_count`` says how many were averaged. Each of them is
    profiled from where it last rises through that level (:func:`clip_below_level`), so node 0
    is that level in every streamline and on both sides, as AFQ clips its profiles to the
    waypoint ROIs; the brainstem below it is measured by the ``pontine`` region. Without that
    level (another extractor, no MNI transform) node k is the same fraction of every
    streamline's whole length.
profile_z_mni
    Per node, the median MNI z of the profiled streamlines there (``None`` without an MNI
    transform): where along the tract each node lies, also a column of profiles.csv.
profile_start_z_mni
    The level every profiled streamline starts at, when they were clipped to one (else ``None``).
regions
    Means over all (end-trimmed) profile points of a side falling in an MNI z band: ``pontine``
    −40 ≤ z ≤ −15 (basis pontis), ``internal_capsule`` 0 ≤ z ≤ 18 (posterior limb, above the
    cerebral peduncle), ``precentral`` z ≥ 40 (precentral white matter and cortex end).
    Without an MNI transform, node thirds are used instead (first / middle / last third). A
    region whose CST level the image does not cover (``fov_truncated``) has no values, and
    ``regions_not_covered`` names it.
found
    Whether the side has at least ``min_cst_streamlines`` (10) streamlines. A side that has fewer
    is no tract: its count is kept, every other value is ``None`` (a handful of streamlines
    gave "right CST FA 0.39" and a volume laterality of −1 on a scan with a scrambled gradient
    table, numbers a group analysis would have taken for a tract), and the QC flag
    ``cst_not_found`` says why.
course_asymmetry
    How far the two tracts are from mirror images of each other between the cerebral peduncle
    and the centrum semiovale (MNI z −6 to 40, :data:`COURSE_Z`): at every 2 mm level the
    centroid of each side's points within 1 mm of it, the distance between the left centroid
    and the right one mirrored (x → −x); ``median_mm`` and ``max_mm`` over the levels both
    sides reach, ``levels``, and the ``z_range_mni`` compared. ``None`` without an MNI
    transform, when a side is not found, or when fewer than 3 levels are shared. The QC flag
    ``cst_course_asymmetric`` reads it.
cortical_ends
    How many of the side's streamlines end in each part of the precentral gyrus, by the MNI
    |x| of their cortical end: ``medial`` (< 25 mm: the leg area, up to the vertex),
    ``middle`` (25–45 mm: the hand knob) and ``lateral`` (≥ 45 mm: the face area); ``None``
    without an MNI transform or streamlines. Why: the CST fans out over the whole gyrus, and
    tractography on clinical scans mostly reaches its medial part (the shared real scans:
    0–9 % of the ends at |x| ≥ 40 mm), so a tract's FA and volume may describe the leg fibres
    only. The report says so when it happens; a group study can compare like with like.
gyrus_coverage
    Per side (``left``, ``right``), the share of each of those parts of the gyrus inside the image
    (``medial``, ``middle``, ``lateral``: 0-1): a tract cannot reach a part the field of view leaves
    out, and the report and the ``fov_truncated`` flag say so instead of reading the missing ends
    as anatomy.
laterality
    (L − R) / (L + R) for each scalar (count, volume, length, fa/md/rd/ad means); ``None``
    when either side is not found, missing/NaN, or both are zero.

Everything returned is JSON-serialisable (floats, lists, None for NaN).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from nibabel.affines import voxel_sizes

from cstbatch.steps.coverage import GYRUS_PARTS_MNI_X, gyrus_part_index
from cstbatch.study.options import option_value, require_in_bounds

SCALARS = ("fa", "md", "rd", "ad")
SIDES = ("left", "right")
#: fraction of nodes left out at each end of a streamline for its scalar means and regions
TRIM_FRACTION = 0.05
#: name -> (z_min, z_max) in MNI mm, inclusive.
REGIONS_MNI_Z = {
    "pontine": (-40.0, -15.0),
    "internal_capsule": (0.0, 18.0),
    "precentral": (40.0, math.inf),
}
REGION_THIRDS = {"pontine": 0, "internal_capsule": 1, "precentral": 2}
#: region -> the CST level of ``cstbatch.steps.coverage`` that holds it. A region whose level the
#: image does not cover is not measured: a slab from the upper pons holds only the pons's top few
#: millimetres, at the image's edge, and its "pontine FA" (0.38 against 0.54 on the other side, on
#: the Trio scan cut there) read as a lesion in the report.
REGION_LEVELS = {"pontine": "pons", "internal_capsule": "internal_capsule", "precentral": "precentral"}
#: MNI z range (mm) over which :func:`course_asymmetry` compares the two sides
COURSE_Z = (-6.0, 40.0)
LATERALITY_KEYS = ("streamline_count", "volume_mm3", "mean_length_mm") + tuple(f"{s}_mean" for s in SCALARS)


def _f(x) -> float | None:
    """float, or None for NaN / inf / None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _as_list(streamlines) -> list[np.ndarray]:
    return [np.asarray(s, np.float64).reshape(-1, 3) for s in (streamlines if streamlines is not None else [])]


def _mni_matrix(mni) -> np.ndarray | None:
    if mni is None:
        return None
    m = getattr(mni, "subject_to_mni", mni)
    m = np.asarray(m, float)
    return m if m.shape == (4, 4) else None


def _mni_z(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """MNI z (mm) of subject-space ``points`` (..., 3) under the subject → MNI matrix ``m``."""
    return points @ m[2, :3] + m[2, 3]


def densify(streamline: np.ndarray, max_step: float) -> np.ndarray:
    """Insert points linearly so that no step is longer than ``max_step`` mm."""
    s = np.asarray(streamline, np.float64)
    if len(s) < 2:
        return s
    seg = np.diff(s, axis=0)
    n = np.maximum(np.ceil(np.linalg.norm(seg, axis=1) / max_step).astype(int), 1)
    if np.all(n == 1):
        return s
    starts = np.repeat(s[:-1], n, axis=0)
    # j / k for j in 0..k-1 of every segment, without a Python loop over segments
    first = np.repeat(np.cumsum(n) - n, n)
    frac = (np.arange(int(n.sum())) - first) / np.repeat(n, n)
    pts = starts + np.repeat(seg, n, axis=0) * frac[:, None]
    return np.vstack([pts, s[-1:]])


def visited_voxels(streamlines, shape, affine) -> np.ndarray:
    """(n, 3) int voxel indices (grid ``shape``/``affine``, repeats kept) the streamlines pass
    through: each densified to half the smallest voxel side, so no voxel is jumped over."""
    sl = _as_list(streamlines)
    if not sl:
        return np.zeros((0, 3), np.int64)
    step = 0.5 * float(voxel_sizes(np.asarray(affine, float)).min())
    pts = np.concatenate([densify(s, step) for s in sl], axis=0)
    inv = np.linalg.inv(np.asarray(affine, float))
    ijk = np.rint(pts @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
    return ijk[np.all((ijk >= 0) & (ijk < np.array(shape[:3])), axis=1)]


def visited_voxel_mask(streamlines, shape, affine) -> np.ndarray:
    """Bool mask of voxels (grid ``shape``/``affine``) visited by any streamline."""
    shape = tuple(int(v) for v in shape[:3])
    mask = np.zeros(shape, bool)
    ijk = visited_voxels(streamlines, shape, affine)
    mask[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = True
    return mask


def visited_cells(streamlines, reg=None, step_mm: float = 1.0, cell_mm: float = 2.0) -> set:
    """The ``cell_mm`` cells the streamlines visit (sampled every ``step_mm``): in MNI mm through
    the session's registration ``reg``, or, without one, in the scanner's own world mm.

    Why cells of a fixed world grid rather than voxels: two sessions of one head are compared on
    a grid neither was acquired on. Why both spaces: for two series of a head that did not move
    between them (the Trio repeats), the scanner's coordinates compare the tracts directly, as
    issue 14's test-retest bar does; MNI cells add each session's registration to the comparison.
    """
    sl = _as_list(streamlines)
    if not sl:
        return set()
    pts = np.concatenate([densify(s, step_mm) for s in sl])
    if reg is not None:
        from cstbatch.steps.register import points_to_mni

        pts = points_to_mni(pts, reg)
    return set(map(tuple, np.floor(pts / float(cell_mm)).astype(np.int64)))


def cells_dice(a: set, b: set) -> float:
    """Dice of two sets of visited cells (NaN when both are empty)."""
    return 2.0 * len(a & b) / (len(a) + len(b)) if (a or b) else float("nan")


#: The template-space grid of :func:`template_mask`: 2 mm cells (those of :func:`visited_cells`,
#: centres at odd mm) over MNI x −98…98, y −134…98, z −80…116 mm, the whole template brain.
TEMPLATE_CELLS_LO = np.array([-49, -67, -40])
TEMPLATE_CELLS_SHAPE = (98, 116, 98)


def template_mask(streamlines, reg) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 mask, affine): the template cells (:data:`TEMPLATE_CELLS_SHAPE`) the streamlines
    visit through the session's registration ``reg``.

    Why: sessions acquired on different days lie differently in the scanner, so their tracts
    are compared in the template (how the aggregation measures a subject's tract agreement
    between sessions), and a group's masks overlay on one grid. The cells are exactly
    :func:`visited_cells`'s, so a Dice of two masks is the benchmarks' MNI-cell Dice.
    """
    mask = np.zeros(TEMPLATE_CELLS_SHAPE, np.uint8)
    cells = visited_cells(streamlines, reg)
    if cells:
        ijk = np.array(sorted(cells), np.int64) - TEMPLATE_CELLS_LO
        ijk = ijk[np.all((ijk >= 0) & (ijk < TEMPLATE_CELLS_SHAPE), axis=1)]
        mask[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = 2.0 * TEMPLATE_CELLS_LO + 1.0
    return mask, affine


def sample_map(data: np.ndarray, points: np.ndarray, affine) -> np.ndarray:
    """Trilinear interpolation of a 3-D map at RAS+ mm points (NaN outside the grid)."""
    from scipy import ndimage

    pts = np.asarray(points, np.float64).reshape(-1, 3)
    inv = np.linalg.inv(np.asarray(affine, float))
    vox = pts @ inv[:3, :3].T + inv[:3, 3]
    vals = ndimage.map_coordinates(np.asarray(data, np.float64), vox.T, order=1, mode="nearest")
    shape = np.array(data.shape[:3])
    outside = np.any((vox < -0.5) | (vox > shape - 0.5), axis=1)
    vals[outside] = np.nan
    return vals


def orient_streamlines(streamlines, mni=None, brainstem_mask=None, affine=None) -> list[np.ndarray]:
    """Flip streamlines so that each runs brainstem → cortex (see module doc for the rule)."""
    sl = _as_list(streamlines)
    if not sl:
        return sl
    m = _mni_matrix(mni)
    first = np.array([s[0] for s in sl])
    last = np.array([s[-1] for s in sl])
    if m is not None:
        flip = _mni_z(last, m) < _mni_z(first, m)
    elif brainstem_mask is not None and affine is not None and np.asarray(brainstem_mask).any():
        ijk = np.argwhere(np.asarray(brainstem_mask, bool))
        a = np.asarray(affine, float)
        c = (ijk @ a[:3, :3].T + a[:3, 3]).mean(axis=0)
        flip = np.linalg.norm(last - c, axis=1) < np.linalg.norm(first - c, axis=1)
    else:
        flip = last[:, 2] < first[:, 2]
    return [s[::-1].copy() if f else s for s, f in zip(sl, flip)]


def _resample(sl: list[np.ndarray], nodes: int) -> np.ndarray:
    from dipy.tracking.streamline import set_number_of_points

    if not sl:
        return np.zeros((0, nodes, 3))
    good = [s if len(s) >= 2 else np.vstack([s, s]) for s in sl]
    return np.asarray(set_number_of_points(good, nb_points=nodes), np.float64)


def _profile_rows(z_mni: np.ndarray | None, from_z: float | None) -> np.ndarray | slice:
    """The streamlines a side's profiles average over.

    Why: a profile's node k is the same fraction of every streamline's length, so streamlines
    that start in the cerebral peduncle (``extract_inferior=peduncle``) and those that start in
    the pons put other levels at the same node. Their profile would blur the lesion's dip along
    the tract. Means and MNI-z regions do not depend on nodes and use every streamline. Why the
    extraction's level and not a fixed one: on an image that stops in the pons the level is
    that image's lowest plus 10 mm, and a fixed MNI z -18 left out streamlines that start as low
    as the image lets them."""
    if from_z is None or z_mni is None or not len(z_mni):
        return slice(None)
    low = z_mni[:, 0] <= from_z
    return np.flatnonzero(low) if low.sum() >= 2 else slice(None)


def clip_below_level(oriented: Sequence[np.ndarray], subject_to_mni: np.ndarray, z0: float) -> list[np.ndarray]:
    """Each streamline (oriented brainstem → cortex) from where it last rises through MNI z
    ``z0`` on, its first point placed on that level.

    Why: a profile's node k is the same fraction of every streamline's length. Streamlines that
    start at different depths of the brainstem (where the tracker stopped, where the
    extraction's brainstem cut fell, where the image ends) put different levels at one node:
    on the shared scans the middle node spread over 10-23 mm of MNI z, the lower nodes over up
    to 40 mm, and a capsular lesion's dip was smeared along the profile. Clipped at the level
    the extraction requires every CST streamline to reach (AFQ clips its profiles to the
    waypoint ROIs for the same reason), node 0 is one level for every streamline and both sides,
    and the lower nodes lie within 3-5 mm of z of each other (``benchmarks/RESULTS.md``,
    "Landing 32"). A streamline with no point below ``z0`` is returned unchanged."""
    m = np.asarray(subject_to_mni, float)
    out = []
    for s in oriented:
        s = np.asarray(s, np.float64)
        z = _mni_z(s, m)
        below = np.flatnonzero(z < z0)
        k = int(below[-1]) if below.size else -1
        if k < 0 or k + 1 >= len(s):
            out.append(s)
            continue
        t = (z0 - z[k]) / (z[k + 1] - z[k])  # z[k] < z0 <= z[k + 1]
        out.append(np.vstack([s[k] + t * (s[k + 1] - s[k]), s[k + 1:]]))
    return out


def _side_metrics(streamlines, maps, affine, nodes, mni, brainstem_mask, profile_from_z=None) -> dict:
    sl = [s for s in _as_list(streamlines) if len(s) > 0]
    vox_vol = float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3])))
    shape = next(iter(maps.values())).shape[:3] if maps else None
    out: dict[str, Any] = {"streamline_count": len(sl)}
    lengths = np.array([np.linalg.norm(np.diff(s, axis=0), axis=1).sum() for s in sl]) if sl else np.zeros(0)
    out["mean_length_mm"] = _f(lengths.mean()) if len(sl) else None
    out["volume_mm3"] = float(visited_voxel_mask(sl, shape, affine).sum() * vox_vol) if shape and sl else 0.0
    oriented = orient_streamlines(sl, mni, brainstem_mask, affine)
    res = _resample(oriented, nodes)  # (S, N, 3)
    m = _mni_matrix(mni)
    z_mni = _mni_z(res, m) if (m is not None and len(res)) else None
    out["cortical_ends"] = cortical_ends(oriented, m) if (m is not None and oriented) else None
    rows = _profile_rows(z_mni, profile_from_z)
    out["profile_streamline_count"] = len(res) if isinstance(rows, slice) else len(rows)
    profiled = res[rows]
    out["profile_start_z_mni"] = None
    if not isinstance(rows, slice):  # every profiled streamline reaches the level: start there
        profiled = _resample(clip_below_level([oriented[i] for i in rows], m, float(profile_from_z)), nodes)
        out["profile_start_z_mni"] = float(profile_from_z)
    out["profile_z_mni"] = ([_f(v) for v in np.median(_mni_z(profiled, m), axis=0)]
                            if m is not None and len(profiled) else None)
    out["profiles"], out["profiles_std"], out["regions"] = {}, {}, {r: {} for r in REGIONS_MNI_Z}
    for name in SCALARS:
        data = maps.get(name) if maps else None
        if data is None or not len(res):
            out[f"{name}_mean"] = out[f"{name}_std"] = None
            out["profiles"][name] = out["profiles_std"][name] = None
            for r in REGIONS_MNI_Z:
                out["regions"][r][name] = None
            continue
        vals = sample_map(np.asarray(data), res.reshape(-1, 3), affine).reshape(res.shape[:2])
        pvals = vals[rows] if isinstance(rows, slice) else \
            sample_map(np.asarray(data), profiled.reshape(-1, 3), affine).reshape(profiled.shape[:2])
        trim = int(np.floor(TRIM_FRACTION * nodes)) if nodes >= 10 else 0
        inner = np.zeros(nodes, bool)
        inner[trim:nodes - trim] = True
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                per_sl = np.nanmean(vals[:, inner], axis=1)
                out[f"{name}_mean"] = _f(np.nanmean(per_sl))
                out[f"{name}_std"] = _f(np.nanstd(per_sl))
                out["profiles"][name] = [_f(v) for v in np.nanmean(pvals, axis=0)]
                out["profiles_std"][name] = [_f(v) for v in np.nanstd(pvals, axis=0)]
                for r, (zlo, zhi) in REGIONS_MNI_Z.items():
                    if z_mni is not None:
                        sel = (z_mni >= zlo) & (z_mni <= zhi) & inner[None, :]
                    else:
                        third = REGION_THIRDS[r]
                        node = np.arange(nodes)
                        sel = np.broadcast_to(((node * 3 // nodes) == third) & inner, vals.shape)
                    v = vals[sel]
                    out["regions"][r][name] = _f(np.nanmean(v)) if v.size else None
    return out


def cortical_ends(oriented: Sequence[np.ndarray], subject_to_mni: np.ndarray) -> dict[str, int]:
    """Streamlines (oriented brainstem → cortex) ending in each part of the precentral gyrus."""
    m = np.asarray(subject_to_mni, float)
    counts = np.bincount(gyrus_part_index(np.array([s[-1] for s in oriented]) @ m[0, :3] + m[0, 3]),
                         minlength=len(GYRUS_PARTS_MNI_X))
    return {name: int(c) for (name, _, _), c in zip(GYRUS_PARTS_MNI_X, counts)}


def laterality_index(left, right) -> float | None:
    """(L − R) / (L + R); None when a side is missing / NaN or both are zero."""
    left, right = _f(left), _f(right)
    if left is None or right is None:
        return None
    s = left + right
    if s == 0:
        return None
    return _f((left - right) / s)


def compute_metrics(cst_left: Sequence[np.ndarray], cst_right: Sequence[np.ndarray],
                    maps: Mapping[str, np.ndarray], affine, options: Mapping[str, Any] | None = None,
                    *, mni=None, brainstem_mask: np.ndarray | None = None,
                    uncovered_levels: Sequence[str] = (), gyrus_coverage: Mapping[str, Any] | None = None,
                    profile_from_z: float | None = None) -> dict:
    """Metrics per side plus laterality (see module doc).

    ``maps``: ``fa``/``md``/``rd``/``ad`` arrays on the grid of ``affine`` (others ignored).
    ``mni``: a :class:`~cstbatch.steps.register.Registration` or a 4x4 subject → MNI matrix
    (orientation and MNI z regions); ``brainstem_mask``: the brainstem ROI on the subject
    grid (orientation fallback). ``uncovered_levels``: the CST levels the image misses (the
    register step's coverage); the regions in them get no values (:data:`REGION_LEVELS`).
    ``gyrus_coverage``: the share of each part of the precentral gyrus inside the image
    (:func:`cstbatch.steps.coverage.gyrus_fractions`), kept as ``gyrus_coverage`` beside the
    ``cortical_ends`` it qualifies. ``profile_from_z``: the MNI z every CST streamline of the
    extraction reaches (the corridor's ``inferior_top_z_mni``); the profiles average only the
    streamlines whose brainstem end lies at or below it (:func:`_profile_rows`).
    """
    options = dict(options or {})
    nodes = int(require_in_bounds("profile_nodes", option_value(options, "profile_nodes", null_is_default=True)))
    maps = {k: np.asarray(v) for k, v in (maps or {}).items() if k in SCALARS}
    minimum = int(option_value(options, "min_cst_streamlines"))
    result: dict[str, Any] = {}
    for side, sl in (("left", cst_left), ("right", cst_right)):
        sl = [s for s in _as_list(sl) if len(s) > 0]
        found = len(sl) >= minimum
        # no tract: nothing of it to measure (the count stays, QC flags cst_not_found)
        result[side] = _side_metrics(sl if found else [], maps, affine, nodes, mni, brainstem_mask, profile_from_z)
        if not found:
            result[side].update(streamline_count=len(sl), volume_mm3=None)
        result[side]["found"] = found
    missing = set(uncovered_levels or ())
    uncovered = [r for r, level in REGION_LEVELS.items() if level in missing]
    for side in SIDES:
        for r in uncovered:
            result[side]["regions"][r] = {name: None for name in SCALARS}
    result["regions_not_covered"] = uncovered
    result["gyrus_coverage"] = dict(gyrus_coverage) if gyrus_coverage else None
    both = result["left"]["found"] and result["right"]["found"]
    result["laterality"] = {k: laterality_index(result["left"][k], result["right"][k]) if both else None
                            for k in LATERALITY_KEYS}
    result["course_asymmetry"] = course_asymmetry(cst_left, cst_right, mni) if both else None
    result["profile_nodes"] = nodes
    result["regions_definition"] = (
        {r: [lo, None if math.isinf(hi) else hi] for r, (lo, hi) in REGIONS_MNI_Z.items()}
        if _mni_matrix(mni) is not None else {r: f"node third {i + 1}" for r, i in REGION_THIRDS.items()}
    )
    result["orientation"] = ("mni_z" if _mni_matrix(mni) is not None
                             else "brainstem_mask" if brainstem_mask is not None else "subject_z")
    return result


def course_asymmetry(cst_left, cst_right, mni) -> dict | None:
    """Distance between the left tract's course and the mirrored right one's (module doc).

    Why: when the true path is blocked (a lesion below the tracker's stopping FA, a bend it
    cannot take) a neighbouring path that passes every anatomical test can be reported instead,
    with hundreds of streamlines. Healthy CSTs are near mirror images in MNI space (the shared
    real scans: median 2.0–2.7 mm), so a course far from the other side's is worth a look:
    such a detour, or a tract displaced by a mass.
    """
    if _mni_matrix(mni) is None:
        return None
    levels = np.arange(COURSE_Z[0], COURSE_Z[1] + 1e-6, 2.0)
    centroids = []
    for sl in (cst_left, cst_right):
        sl = [s for s in _as_list(sl) if len(s) > 1]
        if not sl:
            return None
        pts = np.concatenate([densify(s, 1.0) for s in sl])
        if hasattr(mni, "subject_to_mni"):
            from cstbatch.steps.register import points_to_mni

            pts = points_to_mni(pts, mni)
        else:
            m = _mni_matrix(mni)
            pts = pts @ m[:3, :3].T + m[:3, 3]
        c = np.full((len(levels), 2), np.nan)
        for i, z in enumerate(levels):
            near = np.abs(pts[:, 2] - z) <= 1.0
            if near.any():
                c[i] = pts[near, :2].mean(axis=0)
        centroids.append(c)
    left, right = centroids
    d = np.hypot(left[:, 0] + right[:, 0], left[:, 1] - right[:, 1])
    d = d[np.isfinite(d)]
    if len(d) < 3:
        return None
    return {"median_mm": round(float(np.median(d)), 2), "max_mm": round(float(d.max()), 2), "levels": int(len(d)),
            "z_range_mni": list(COURSE_Z)}


# ---------------------------------------------------------------------------------------
def metrics_to_rows(metrics: Mapping[str, Any]) -> list[dict]:
    """Rows for metrics.csv: one per side plus one ``laterality_index`` row (same columns)."""
    rows = []
    for side in SIDES:
        m = metrics[side]
        row = {"side": side}
        for k in ("streamline_count", "volume_mm3", "mean_length_mm"):
            row[k] = m.get(k)
        for s in SCALARS:
            row[f"{s}_mean"] = m.get(f"{s}_mean")
            row[f"{s}_std"] = m.get(f"{s}_std")
        for r, vals in m.get("regions", {}).items():
            for s in SCALARS:
                row[f"{s}_{r}"] = vals.get(s)
        ends = m.get("cortical_ends") or {}
        for name, _, _ in GYRUS_PARTS_MNI_X:
            row[f"ends_{name}"] = ends.get(name)
        rows.append(row)
    li = {"side": "laterality_index"}
    for k in rows[0]:
        if k != "side":
            li[k] = metrics.get("laterality", {}).get(k)
    rows.append(li)
    return rows


def profiles_to_rows(metrics: Mapping[str, Any]) -> list[dict]:
    """Tidy profile rows: side, node, the node's median MNI z (``z_mni``, empty without a
    registration), metric, value, std."""
    rows = []
    for side in SIDES:
        m = metrics[side]
        z = m.get("profile_z_mni")
        for s in SCALARS:
            prof = (m.get("profiles") or {}).get(s)
            std = (m.get("profiles_std") or {}).get(s)
            if prof is None:
                continue
            for node, v in enumerate(prof):
                rows.append({"side": side, "node": node, "z_mni": None if z is None else z[node], "metric": s,
                             "value": v, "std": None if std is None else std[node]})
    return rows
