"""CST selection by anatomical corridor (``extraction_method = "corridor"``).

Why another method: ``passthrough`` asks for the brainstem and a *hand-to-leg* motor band and
then keeps the bundle's dense core. On anatomy it was not tuned to (an independent phantom
whose CST fans over the whole precentral gyrus) that lost the tract's upper third: the core
filter scores every streamline against the densest path at each of 20 nodes, and where the
tract fans out every branch is sparse next to the densest one, so only one branch survived;
the motor band left out the face area, so that branch could not count at all.

Here a streamline is CST of side s (MNI mm, left is x < 0) when
    * its inferior end reaches the brainstem ROI at or below ``INFERIOR_TOP_Z`` (pons or lower:
      corticothalamic and capsular fragments stop higher) -- or, when the image does not reach
      that low (``coverage_z`` option, set by the extract step from the FA map), within
      ``COVERAGE_MARGIN_MM`` of the lowest level the image covers (:func:`inferior_levels`);
      since version 8 (``extract_inferior=peduncle``) also the cerebral peduncles at MNI
      z <= -10 (:func:`in_peduncle`), where tracking stops in a funnelling tract; those
      streamlines count into the density cleaning's image but not into its floor
      (:func:`clean_density`), and the profiles leave them out (``metrics``);
    * it passes the posterior limb of the internal capsule of side s (a box in MNI mm,
      :data:`PLIC_BOX`: the frontopontine fibres run in the anterior limb, in front of it);
    * its superior end lies within ``TARGET_TOLERANCE_MM`` of the precentral gyrus of side s,
      the whole gyrus from the vertex (leg) to the operculum (face), :func:`precentral_rois` --
      or, when the image stops below the gyrus's top (``coverage_top_z`` option, set by the
      extract step), within ``SUPERIOR_MARGIN_MM`` of the highest level the image covers
      in the gyrus band or the white matter under it (:func:`superior_end_z`; the session is
      flagged ``fov_truncated`` and its report names the missing levels);
    * it never comes closer than ``MIDLINE_GAP_MM`` to the midline between the internal
      capsule and the vertex (no corpus callosum), does not cross the midline above the
      brainstem, and is 40–250 mm long (the ``extract_min/max_length`` options).
Then strays are removed per side (``extract_core_filter``, default on), by tract density
(``extract_clean=tdi``, :func:`clean_density`): the side's streamlines are counted in 2 mm MNI
cells; a cell is dense when at least ``extract_tdi_fraction`` (0.3) of the 95th-percentile
cell's count visit it; a streamline stays when ≥ ``extract_tdi_inside`` (0.9) of its cells are
dense, and the best-supported ``extract_tdi_keep`` (20 %, version 10) of the side's candidates stay in
any case. With ``extract_tdi_parts`` (the default since version 9) a streamline also stays when
≥ ``extract_tdi_inside`` of its cells are dense once a cell above MNI z 20 is also judged among the
side's streamlines ending in the same part of the gyrus (:func:`_dense_shares`): this only adds,
the side's own judgement and floor stand. Then the core of each fan branch the cleaning dropped
but that grows out of the kept trunk is added back (:func:`recover_branches`,
``extract_recover_branches``, version 6).
With ``extract_fa_keep`` > 0 (off by default) that share of the side's candidates with the
highest mean FA along them stays too (:func:`keep_high_fa`: the sparse parts of a wide fan that
run in coherent white matter; the extract step hands every extractor ``streamline_fa``,
:func:`extraction_inputs`).
``extract_clean=fan`` keeps the method's first cleaning (:func:`clean_fan`: per-level
density below ``FAN_Z``, QuickBundles branches above it, each branch scored against its own
peak), for comparison. Last, in the pons and below (z < ``TRIM_BELOW_Z``) each kept
streamline is cut where it first leaves the brainstem (into a cerebellar peduncle or across the
pons), and at the brainstem ROI's lower end (z −60): :func:`brainstem_ranges`; and, with
``extract_clip_cortex`` (the default), where it enters the precentral cortex for good
(:func:`cortex_entry_ranges`). Since version 9 a streamline whose kept part ends more than
``extract_front_mm`` (5 mm) in front of the precentral crown is dropped (:func:`ends_behind_crown`).

Why version 9: the parts judgement lifted the atlas phantom in every set but, as version 8's
option, reshuffled the side's floor toward the fan's strays (the sample study's right sides, a
tube subject's frontopontine streamlines). Adding only, and dropping the ends in front of the
crown (where the false positives above MNI z 40 lie on both phantom families, and where the
frontopontine tract ends), the atlas phantom's worst subject rose on every set and the tubes'
held within 0.01 (README, "Where it stands"; ``benchmarks/RESULTS.md``, "Corridor version 9").

Why tract density: with the tracker seeded on the tract (``track_region=cst``) a side has
hundreds to thousands of candidates, and the first cleaning, which keeps a streamline by its
lowest score over levels, kept 17-50 of 500-900 on the real Trio repeats (different ones each
time: test-retest Dice of visited 2 mm cells 0.18 / 0.33). The density of cells makes no
assumption about one path per level, so every branch of the fan counts with its own
streamlines, and what it drops is exactly what a visited-voxel measure holds against a bundle:
cells that only a few strays reach. Thresholds chosen on development phantoms (seeds 200-207) and
the shared real scans together. On fresh phantoms (``benchmarks/anatomy_sweep.py --seed0 7000
--n 20``, corridor tracking, with the brainstem cut): worst-side Dice min 0.491, median 0.635,
recall 0.83, precision 0.54 (the 0.1 default on the first 10 of them: 0.443 / 0.581); Trio
repeats' test-retest Dice 0.61 / 0.60 with 132-211 streamlines per side. With the tracker's
denoising (``track_denoise``), on a second fresh set (seeds 9000-9019): 0.545 / 0.647, and the
Trio repeats 0.72 / 0.65 with 239-399 streamlines (README, "How the CST is found"). With the
floor under the cleaning, fresh sets 12000-12019 (3 mm) 0.519 / 0.630 and 11000-11019 (2 mm)
0.571 / 0.673, at least 99 streamlines on every side.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from nibabel.affines import voxel_sizes

from cstbatch.steps.atlas import precentral_band
from cstbatch.steps.extract import (
    BRAINSTEM,
    _chunks,
    _length_limits,
    _midline_crossing,
    _reduce_or,
    arc_lengths,
    brainstem_top_z,
    concat_streamlines,
    point_codes,
    roi_code_volume,
)
from cstbatch.study.options import option_value

INFERIOR_TOP_Z = -18.0
COVERAGE_MARGIN_MM = 10.0
#: brainstem levels (MNI z ranges, mm) named in the extraction info
LEVELS = (("medulla", -70.0, -40.0), ("pons", -40.0, -18.0), ("midbrain", -18.0, -6.0),
          ("internal_capsule", -6.0, 14.0))
#: posterior limb of the internal capsule: (z range, |x| range, y range), MNI mm
PLIC_BOX = ((-4.0, 14.0), (10.0, 32.0), (-34.0, -2.0))
TARGET_TOLERANCE_MM = 5.0
#: Below this MNI z (the pons under the cerebral peduncles, where the two converge into the basis
#: pontis) a CST streamline is cut where it leaves the brainstem (:func:`brainstem_ranges`).
TRIM_BELOW_Z = -20.0
#: The image counts as covering the precentral gyrus to its top when it reaches this MNI z
#: inside the gyrus band (the band's top is z 80; every shared real scan reaches it).
SUPERIOR_FULL_Z = 70.0
#: When it does not, a superior end within this many mm of the highest covered level of the
#: band (and inside the band on its side) counts as reaching the gyrus.
SUPERIOR_MARGIN_MM = 6.0
MIDLINE_GAP_MM = 5.0
MIDLINE_Z = (-2.0, 50.0)
FAN_Z = 20.0
#: QuickBundles distance (mm) between the fan parts of two branches
QB_MM = 12.0
FAN_THRESHOLD = 0.5
FAN_SUPPORT = 4
MIN_STREAMLINES = 20
TARGET_LEFT, TARGET_RIGHT = 1, 2


@functools.lru_cache(maxsize=4)
def precentral_rois(dilate_mm: float = TARGET_TOLERANCE_MM, grey_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 code volume: bit 1 left, 2 right precentral gyrus, affine) on every second voxel of
    the ICBM 1 mm grid (2 mm).

    The gyrus band of :func:`cstbatch.steps.atlas.icbm_rois` (crown ``y = -8 - 0.45 (z - 40)``,
    13 mm behind to 11 mm in front, cortex or juxtacortical white matter) taken from z = 18 to
    80 instead of 38 to 78: the CST also starts in the face area, low and lateral on the gyrus;
    below z = 38 only lateral cortex (|x| ≥ 40) counts, so the insula and the deep grey matter,
    which the band also crosses there, stay out. Dilated by ``dilate_mm`` (tracking stops a
    little short of the cortex). ``grey_only``: the gyrus's cortex alone, without the white
    matter within 3 mm of it; :func:`cortex_entry_ranges` cuts the tract where it enters that.
    Always the ICBM maps (installed with nilearn): the test is in MNI mm, whatever atlas the ROIs
    came from.
    """
    import nibabel as nib
    from scipy import ndimage

    from cstbatch.steps.atlas import _mm_grid, icbm_files

    paths = icbm_files()
    gm_img = nib.load(paths["gm"])
    full_aff = np.asarray(gm_img.affine, float)
    # only the slab z >= 5 mm matters, and a 2 mm grid is fine for a 5 mm tolerance: the
    # distance maps dominate the cost (30 s on the full 1 mm grid, ~1 s here)
    kz = int(np.ceil((5.0 - full_aff[2, 3]) / full_aff[2, 2])) if full_aff[2, 2] > 0 else 0
    sub = (slice(None, None, 2), slice(None, None, 2), slice(kz, None, 2))
    gm = np.asarray(gm_img.dataobj, np.float32)[sub] / 255.0
    wm = np.asarray(nib.load(paths["wm"]).dataobj, np.float32)[sub] / 255.0
    aff = full_aff.copy()
    aff[:3, 3] += aff[:3, 2] * kz
    aff[:3, :3] *= 2.0
    x, y, z = (np.broadcast_to(v, gm.shape) for v in _mm_grid(gm.shape, aff))
    gm_mask = gm >= 0.3
    vox = voxel_sizes(aff)
    ribbon = gm_mask if grey_only else \
        gm_mask | ((wm >= 0.3) & (ndimage.distance_transform_edt(~gm_mask, sampling=vox) <= 3.0))
    band = precentral_band(x, y, z) & ribbon
    if dilate_mm > 0:
        band = ndimage.distance_transform_edt(~band, sampling=vox) <= dilate_mm
    code = np.zeros(gm.shape, np.uint8)
    code[band & (x < 0)] |= TARGET_LEFT
    code[band & (x > 0)] |= TARGET_RIGHT
    return code, aff


def coverage_z(fa: np.ndarray, affine: np.ndarray, subject_to_mni: np.ndarray) -> float | None:
    """Lowest MNI z the image covers in the brainstem column (|x| ≤ 20, −50 ≤ y ≤ −5).

    From the voxels with FA > 0 (the masked, fitted brain), mapped to MNI by the registration;
    None if none falls in the column.
    """
    return _lowest_in_brainstem_column(_brain_mni(fa, affine, subject_to_mni))


def coverage_top_z(fa: np.ndarray, affine: np.ndarray, subject_to_mni: np.ndarray) -> float | None:
    """Highest MNI z the image covers in the precentral gyrus band and the white matter under
    it (:func:`precentral_band`, ``deep``); None if none of it is covered. Below
    :data:`SUPERIOR_FULL_Z` the top of the gyrus is cut off (an axial slab that stops under the
    vertex)."""
    return _highest_under_gyrus(_brain_mni(fa, affine, subject_to_mni))


def extraction_inputs(fa: np.ndarray, affine: np.ndarray, subject_to_mni: np.ndarray,
                      streamlines: Sequence[np.ndarray], options: Mapping[str, Any]) -> dict[str, Any]:
    """What the extract step hands every extractor besides the options and the MNI streamlines:
    the field of view (:func:`coverage_options`) and, when the ``options`` ask for it
    (``extract_fa_keep`` > 0), ``streamline_fa``, each streamline's mean FA (subject space,
    trilinear; NaN where none of it lies in the image). Only then: sampling FA along a whole
    tractogram costs 2 s on a 2 mm session."""
    out: dict[str, Any] = coverage_options(fa, affine, subject_to_mni)
    if not float(option_value(options, "extract_fa_keep", null_is_default=True)) > 0:
        return out
    from cstbatch.steps.metrics import sample_map

    points, _, lengths = concat_streamlines(streamlines)
    which = np.repeat(np.arange(len(lengths)), lengths)
    vals = sample_map(fa, points, affine) if len(points) else np.zeros(0)
    ok = np.isfinite(vals)
    total = np.bincount(which[ok], weights=vals[ok], minlength=len(lengths))
    count = np.bincount(which[ok], minlength=len(lengths))
    mean_fa = np.full(len(lengths), np.nan)
    np.divide(total, count, out=mean_fa, where=count > 0)
    out["streamline_fa"] = mean_fa
    return out


def coverage_options(fa: np.ndarray, affine: np.ndarray, subject_to_mni: np.ndarray) -> dict[str, float | None]:
    """The options the extract step hands every extractor about the field of view:
    ``coverage_z`` (:func:`coverage_z`) and ``coverage_top_z`` (:func:`coverage_top_z`), from
    one mapping of the brain's voxels to MNI."""
    p = _brain_mni(fa, affine, subject_to_mni)
    return {"coverage_z": _lowest_in_brainstem_column(p), "coverage_top_z": _highest_under_gyrus(p)}


def _lowest_in_brainstem_column(p: np.ndarray) -> float | None:
    col = (np.abs(p[:, 0]) <= 20) & (p[:, 1] >= -50) & (p[:, 1] <= -5)
    return float(p[col, 2].min()) if col.any() else None


def _highest_under_gyrus(p: np.ndarray) -> float | None:
    band = precentral_band(p[:, 0], p[:, 1], p[:, 2], deep=True)
    return float(p[band, 2].max()) if band.any() else None


def _brain_mni(fa, affine, subject_to_mni) -> np.ndarray:
    """(n, 3) MNI mm of the voxels with FA > 0 (the masked, fitted brain)."""
    ijk = np.argwhere(np.asarray(fa) > 0)
    m = np.asarray(subject_to_mni, float) @ np.asarray(affine, float)
    return ijk @ m[:3, :3].T + m[:3, 3]


def superior_end_z(cover_top_z: float | None) -> float | None:
    """The z above which a superior end inside the gyrus band counts as reaching the gyrus when
    the image stops below the gyrus's top; None when the image covers it (or says nothing)."""
    if cover_top_z is None or cover_top_z >= SUPERIOR_FULL_Z:
        return None
    return cover_top_z - SUPERIOR_MARGIN_MM


def inferior_levels(cover_z: float | None) -> tuple[float, list[str], bool]:
    """(the z a CST streamline's inferior end must reach, the levels it may start in,
    whether the field of view was truncated)."""
    if cover_z is None or cover_z + COVERAGE_MARGIN_MM <= INFERIOR_TOP_Z:
        lo = LEVELS[0][1] if cover_z is None else max(cover_z, LEVELS[0][1])
        top, truncated = INFERIOR_TOP_Z, cover_z is not None and cover_z > LEVELS[0][1] + 5.0
    else:
        lo, top, truncated = cover_z, cover_z + COVERAGE_MARGIN_MM, True
    used = [name for name, a, b in LEVELS if b > lo and a < top]
    return top, used, truncated


#: ``extract_inferior=peduncle`` (the default since version 8): a streamline also counts as
#: reaching the brainstem when it reaches this MNI z inside :data:`PEDUNCLE_BOX` (|x| range,
#: y range, MNI mm): the crus cerebri lateral of the brainstem ROI, whose elliptic section is
#: |x| <= 15 at the top of the midbrain. The Juelich atlas's CST lies there (centre |x| 16-18
#: at MNI z -12), and on the atlas phantom tracking stops there (|x| 19-21). The medial crus
#: carries the frontopontine fibres: with |x| from 0, a tube phantom's frontopontine
#: streamlines that stopped at |x| 14-15 made 8.5 % of one side's tract (bar: 5 %).
PEDUNCLE_TOP_Z = -10.0
PEDUNCLE_BOX = ((16.0, 30.0), (-40.0, -2.0))


def in_peduncle(pts: np.ndarray) -> np.ndarray:
    """Bool per MNI point: at or below :data:`PEDUNCLE_TOP_Z` in the cerebral peduncles' column."""
    (ax0, ax1), (y0, y1) = PEDUNCLE_BOX
    ax = np.abs(pts[:, 0])
    return ((pts[:, 2] <= PEDUNCLE_TOP_Z) & (ax >= ax0) & (ax <= ax1)
            & (pts[:, 1] >= y0) & (pts[:, 1] <= y1))


def peduncle_counts(options: Mapping[str, Any]) -> bool:
    """Whether a streamline that reaches only the crus cerebri counts (``extract_inferior``),
    which needs an image that covers it."""
    cover_z = options.get("coverage_z")
    return (option_value(options, "extract_inferior") == "peduncle"
            and (cover_z is None or cover_z < PEDUNCLE_TOP_Z))


def _classify(streamlines_mni, atlas, options) -> tuple[np.ndarray, dict]:
    """Side per streamline (+1 left, -1 right, 0 none; ±2 for a side's streamlines that reach
    only the crus cerebri, :func:`peduncle_counts`) and the extraction info."""
    top_z, used, truncated = inferior_levels(options.get("coverage_z"))
    sup_z = superior_end_z(options.get("coverage_top_z"))
    tcode, taff = precentral_rois()
    bcode = roi_code_volume(atlas)
    bs_top = brainstem_top_z(atlas)
    tol = float(option_value(options, "extract_midline_tolerance"))
    lo_len, hi_len = _length_limits(options)
    peduncle = peduncle_counts(options)
    if peduncle and "midbrain" not in used:
        used = [*used, "midbrain"]
    n_points = np.array([len(s) for s in streamlines_mni], np.int64)
    sides = []
    for a, b in _chunks(n_points):
        pts, off, lens = concat_streamlines([streamlines_mni[i] for i in range(a, b)])
        n = len(lens)
        first, last = off, off + np.maximum(lens, 1) - 1
        flip = pts[last, 2] < pts[first, 2]
        hi_end = np.where(flip, first, last)  # the superior (cortical) end
        # inferior: points in the brainstem ROI at or below top_z (or, truncated, any point
        # below top_z in the brainstem column / capsule when the ROI is not covered at all)
        bs = (point_codes(pts, bcode, atlas.affine) & BRAINSTEM) > 0
        low = pts[:, 2] <= top_z
        if top_z > bs_top:  # the image stops above the brainstem ROI: the capsule level
            low_ok = low & (np.abs(pts[:, 0]) <= PLIC_BOX[1][1]) & (pts[:, 1] <= PLIC_BOX[2][1]) & (pts[:, 1] >= -50)
        else:
            low_ok = low & bs
        inferior = _reduce_or(low_ok.astype(np.uint8), off, lens) > 0
        # extract_inferior=peduncle: reaching the crus cerebri only (marked ±2: they count into
        # the density image, not into its floor; clean_density's ``extra``)
        ped_only = ~inferior & (_reduce_or(in_peduncle(pts).astype(np.uint8), off, lens) > 0) if peduncle \
            else np.zeros(n, bool)
        (z0, z1), (ax0, ax1), (y0, y1) = PLIC_BOX
        box = (pts[:, 2] >= z0) & (pts[:, 2] <= z1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
        ax = np.abs(pts[:, 0])
        box &= (ax >= ax0) & (ax <= ax1)
        plic_l = _reduce_or((box & (pts[:, 0] < 0)).astype(np.uint8), off, lens) > 0
        plic_r = _reduce_or((box & (pts[:, 0] > 0)).astype(np.uint8), off, lens) > 0
        end_code = point_codes(pts[hi_end], tcode, taff)
        if sup_z is not None:  # the top of the gyrus is cut off: an end at the image's top,
            e = pts[hi_end]    # in the gyrus band or the white matter under it, counts too
            top = (e[:, 2] >= sup_z) & precentral_band(e[:, 0], e[:, 1], e[:, 2], TARGET_TOLERANCE_MM, deep=True)
            end_code = end_code | np.where(top, np.where(e[:, 0] < 0, TARGET_LEFT, TARGET_RIGHT), 0).astype(end_code.dtype)
        near_mid = (ax < MIDLINE_GAP_MM) & (pts[:, 2] >= MIDLINE_Z[0]) & (pts[:, 2] <= MIDLINE_Z[1])
        mid = _reduce_or(near_mid.astype(np.uint8), off, lens) > 0
        crosses = _midline_crossing(pts, off, lens, bs_top, tol)
        length = arc_lengths(pts, off, lens)
        ok = (inferior | ped_only) & ~mid & ~crosses & (length >= lo_len) & (length <= hi_len) & (lens >= 2)
        left = ok & plic_l & ~plic_r & ((end_code & TARGET_LEFT) > 0)
        right = ok & plic_r & ~plic_l & ((end_code & TARGET_RIGHT) > 0)
        side = np.zeros(n, np.int8)
        side[left & ~right] = 1
        side[right & ~left] = -1
        side[ped_only] *= 2
        sides.append(side)
    side = np.concatenate(sides) if sides else np.zeros(0, np.int8)
    info = {"inferior_levels": used, "inferior_top_z_mni": top_z,
            "fov_truncated": bool(truncated) or sup_z is not None,
            "coverage_z_mni": options.get("coverage_z"), "coverage_top_z_mni": options.get("coverage_top_z"),
            "superior_end_at_image_top": sup_z is not None,
            "superior_end": "precentral gyrus" if sup_z is None else
            f"precentral gyrus, or the image's top under it (MNI z >= {sup_z:.0f})"}
    return side, info


def _masked_density_scores(res: np.ndarray, use: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per streamline, the lowest over its ``use`` nodes of the neighbourhood density of its
    group's streamlines there, relative to that group's highest density at the node."""
    score = np.ones(len(res))
    for g in np.unique(groups):
        mem = groups == g
        for k in range(res.shape[1]):
            sel = mem & use[:, k]
            if not sel.any():
                continue
            score[sel] = np.minimum(score[sel], _relative_density(res[sel, k]))
    return score


def _relative_density(points: np.ndarray) -> np.ndarray:
    """Per point (n, 2 or 3, mm), the number of points in the 3×3(×3) block of 2 mm cells around
    its cell, relative to the densest point's: the one density measure both cleaning passes use."""
    from scipy import ndimage

    cell = np.floor((points - points.min(axis=0)) / 2.0).astype(np.int64) + 1
    grid = np.zeros(tuple(cell.max(axis=0) + 2))
    np.add.at(grid, tuple(cell.T), 1.0)
    dens = (ndimage.uniform_filter(grid, size=3, mode="constant") * 3.0 ** points.shape[1])[tuple(cell.T)]
    return dens / dens.max()


def _trunk_scores(sl: list[np.ndarray]) -> np.ndarray:
    """Per streamline (oriented upwards), the lowest over the z levels it spans below
    ``FAN_Z`` of the density of the side's streamlines around it at that level, relative to
    the level's highest density.

    Levels, not nodes at a fraction of the length: the branches of a fan have different
    lengths, so the k-th of 20 nodes lies at a different height on each and would be compared
    with another part of the tract.
    """
    levels = np.arange(-70.0, FAN_Z + 1e-6, 2.0)
    xy = np.full((len(sl), len(levels), 2), np.nan)
    for i, s in enumerate(sl):
        z = np.maximum.accumulate(s[:, 2])  # first point at or above each level
        k = np.searchsorted(z, levels)
        ok = (k < len(s)) & (levels >= s[0, 2])
        xy[i, ok] = s[k[ok], :2]
    score = np.ones(len(sl))
    for j in range(len(levels)):
        have = np.isfinite(xy[:, j, 0])
        if have.sum() < 2:
            continue
        score[have] = np.minimum(score[have], _relative_density(xy[have, j]))
    return score


TDI_CELL_MM = 2.0
TDI_MIN_STREAMLINES = 100


def clean_density(streamlines_mni: Sequence[np.ndarray], idx: np.ndarray, options,
                  extra: np.ndarray | None = None) -> np.ndarray:
    """The side's streamlines ``idx`` that stay where the bundle is dense: the tract-density
    image is counted over the side's streamlines in 2 mm MNI cells; a cell is dense when at
    least ``extract_tdi_fraction`` of the 95th-percentile cell's count of streamlines visit it;
    a streamline stays when at least ``extract_tdi_inside`` of its cells are dense, and in any
    case the ``extract_tdi_keep`` share of the side's streamlines with the most dense cells
    stays. Sides with fewer than ``TDI_MIN_STREAMLINES`` streamlines are left as the anatomical
    test kept them: a density of a few dozen streamlines is mostly sampling noise.

    Why the floor: the share threshold is a cliff. On some sides the whole distribution of
    shares sits just under it (95th percentile 0.89 against 0.9: the side's densest cells are
    denser, so fewer cells pass the relative threshold), and 95 % of 1 200 candidates went,
    leaving 50 streamlines and a recall of 0.5. With the floor (10 %) those sides keep the
    best-supported tenth; sides above the cliff, which keep more, do not change. On the fresh
    2 mm phantoms 11000-11019 three sides changed (50 / 76 / 104 streamlines → 119 / 136 / 130,
    Dice 0.616 / 0.589 / 0.653 → 0.677 / 0.630 / 0.654), the shared real scans not at all.

    Why a floor of 30 % (version 7; 10 % before): on a phantom whose CST is the Juelich
    histological atlas's (``benchmarks/atlas_phantom.py``: 17-23 cm³ per side, a continuous fan)
    almost no streamline runs in dense cells only, because the density spreads over the wide
    fan. The cleaning kept only the floor, a narrow core: recall 0.40, where the candidates had
    0.74. That phantom reproduces the independent phantom's numbers for the pipeline the issue
    measured; our tube phantoms (8 cm³) do not. Over both families, at 2 and 3 mm, the worst
    side was best at 40 %, but at 40 % the sample study's sessions miss their bar; 30 % keeps it.
    The shared real scans keep 27-41 % above the floor anyway and change little (README).

    Why 20 % (version 10): the floor had to catch the wide fan that the side's density judged
    sparse. Since version 9 the fan's parts are judged among their own streamlines, so the fan
    stays without the floor. And atlas phantom version 3, whose CST fibres reach the
    brainstem, showed the atlas family losing by precision like the tubes. At 20 % both gain on
    sets made after the choice, scored once each way: tubes 47000-47009 0.488 / 0.640 ->
    0.509 / 0.655 (worst side min / median, no subject loses), atlas v3 2200-2209 0.606 /
    0.656 -> 0.621 / 0.662. The atlas version 2 sets at 3 mm change by -0.001 to +0.006, its
    2 mm set loses 0.025 / 0.019, and the sample study's right sides move by -0.008 to +0.025
    (sub-04 right 0.708 -> 0.700, its bar 0.70).

    Why cells and not nodes or levels: nothing assumes one path per level or a fixed number of
    nodes, and what is dropped is what a visited-voxel measure holds against a bundle: cells that
    only a few strays reach. The reference is the whole side's density, not each axial layer's:
    measured per layer (3×3×3-smoothed, which keeps every branch of a fan) the development
    phantoms' worst-side Dice fell from 0.63 to 0.47-0.55, because background white matter
    streamlines that reach the precentral gyrus are as dense as the true branches at those
    layers. The price: a branch carrying well under a third of the side's streamlines can go.

    ``extra`` (``extract_inferior=peduncle``: the side's streamlines that reach only the
    cerebral peduncle) count into the density image and are judged by the same threshold, but
    the floor is a share of ``idx`` alone. Counted into the floor too, they raised it, and the
    sample study's right sides kept strays through it (Dice 0.693 on one).
    """
    both = np.sort(np.concatenate([idx, np.zeros(0, np.int64) if extra is None else extra])).astype(np.int64)
    if len(both) < TDI_MIN_STREAMLINES:
        return both
    keys = _cell_keys(streamlines_mni, both)
    frac = float(option_value(options, "extract_tdi_fraction"))
    inside = float(option_value(options, "extract_tdi_inside"))
    share, by_parts = _dense_shares(keys, frac, gyrus_parts(streamlines_mni, both)
                                    if option_value(options, "extract_tdi_parts") else None)
    threshold = inside
    floor_of = np.isin(both, idx)
    if floor_of.any():
        threshold = _share_threshold(share[floor_of], threshold, float(option_value(options, "extract_tdi_keep")))
    kept = share >= threshold
    if by_parts is not None:  # only adds: the side's own judgement and floor stand (corridor version 9)
        kept |= by_parts >= inside
    return both[kept]


def _cell_keys(streamlines_mni: Sequence[np.ndarray], idx: np.ndarray) -> list[np.ndarray]:
    """Per streamline ``idx``, the sorted keys of the 2 mm MNI cells it visits (sampled every mm)."""
    from cstbatch.steps.metrics import densify

    return [_keys(densify(np.asarray(streamlines_mni[i], np.float64), 1.0)) for i in idx]


def _keys(points: np.ndarray) -> np.ndarray:
    c = np.floor(np.asarray(points, np.float64).reshape(-1, 3) / TDI_CELL_MM).astype(np.int64)
    return np.unique((c[:, 0] + 512) * 1_048_576 + (c[:, 1] + 512) * 1024 + (c[:, 2] + 512))


def _dense_share(keys: list[np.ndarray], frac: float) -> np.ndarray:
    """Per streamline, the share of its cells that are dense: visited by at least ``frac`` of the
    95th-percentile cell's count of these streamlines (and by two)."""
    return _dense_shares(keys, frac)[0]


def _dense_shares(keys: list[np.ndarray], frac: float,
                  parts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(:func:`_dense_share`'s shares; with ``parts``, each streamline's part of the gyrus
    (:func:`gyrus_parts`; ``extract_tdi_parts``), the shares once a cell above
    :data:`FAN_PARTS_Z` is dense also when it is dense among the streamlines of the same part
    (:data:`PART_TDI_FRACTION` of their 95th-percentile fan cell); else None), from one count of
    the cells.

    Why the parts: the tract converges in the capsule and fans out above it, so in the fan every
    branch is sparse next to the trunk, and judged by the whole side's density the branch of a
    part with fewer streamlines (the leg area's, under the vertex) went as a whole. On atlas
    phantom version 2 the leg area holds 25-28 % of a side's true voxels, and the kept tract found
    0.18-0.20 of them where the candidates found about twice as many (``benchmarks/RESULTS.md``,
    "Landing 31"). The trunk stays judged by the whole side: what runs beside it is a stray,
    whatever its end. Why "also", and a stricter share than the side's 0.3: judged by its own part
    alone at 0.3, a side whose streamlines all end in one part was judged more leniently in the fan
    than before, and the strays beside the tube phantoms' thin branches stayed (3 mm tubes
    41000-41009, worst side 0.432 / 0.575 -> 0.413 / 0.547).
    """
    allk = np.concatenate(keys)
    owner = np.repeat(np.arange(len(keys)), [len(k) for k in keys])
    cells = np.maximum(np.bincount(owner, minlength=len(keys)), 1)
    dense = np.isin(allk, _dense_cells(allk, frac))
    share = np.bincount(owner, weights=dense.astype(float), minlength=len(keys)) / cells
    if parts is None:
        return share, None
    fan = _key_z(allk) >= FAN_PARTS_Z
    part_of_cell = np.asarray(parts)[owner]
    for p in np.unique(parts):
        if int((parts == p).sum()) < PART_MIN_STREAMLINES:
            continue
        sel = fan & (part_of_cell == p)
        dense[sel] |= np.isin(allk[sel], _dense_cells(allk[sel], PART_TDI_FRACTION))
    return share, np.bincount(owner, weights=dense.astype(float), minlength=len(keys)) / cells


def _dense_cells(allk: np.ndarray, frac: float) -> np.ndarray:
    """The cells (keys) among ``allk`` (every streamline's cells, concatenated) visited by at
    least ``frac`` of the 95th-percentile cell's count (and by two)."""
    if not allk.size:
        return allk
    cells, counts = np.unique(allk, return_counts=True)
    return cells[counts >= np.maximum(2.0, frac * np.percentile(counts, 95))]


#: ``extract_tdi_parts`` (on since version 9): above this MNI z (the fan) a cell is also dense when at
#: least ``PART_TDI_FRACTION`` of the 95th-percentile fan cell's count of the streamlines ending in
#: the same part of the precentral gyrus visit it; a part with fewer than ``PART_MIN_STREAMLINES``
#: streamlines keeps the whole side's judgement only.
FAN_PARTS_Z = FAN_Z
PART_TDI_FRACTION = 0.5
PART_MIN_STREAMLINES = 20


def gyrus_parts(streamlines_mni: Sequence[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Per streamline ``idx``, the part of the precentral gyrus its superior end lies over (an
    index into :data:`cstbatch.steps.coverage.GYRUS_PARTS_MNI_X`: leg, hand, face).

    Why the superior end: the branches of the fan share the trunk and part only under the gyrus,
    so where a streamline ends says which branch it belongs to; the parts are the report's own
    (``cortical_ends``), so the cleaning and the QC flag speak of the same leg and hand areas."""
    from cstbatch.steps.coverage import gyrus_part_index

    return gyrus_part_index(np.array([upper_end(streamlines_mni[i])[0] for i in idx]).reshape(-1))


def upper_end(streamline: np.ndarray) -> np.ndarray:
    """The streamline's end with the higher z (its cortical end), whichever way it runs."""
    s = np.asarray(streamline)
    return s[-1] if s[-1, 2] >= s[0, 2] else s[0]


def _key_z(keys: np.ndarray) -> np.ndarray:
    """MNI z (mm) of the lower face of each cell (:func:`_keys`)."""
    return ((keys % 1024) - 512) * TDI_CELL_MM


def _share_threshold(share: np.ndarray, inside: float, keep: float) -> float:
    """``inside``, lowered so that at least the ``keep`` share of the streamlines (the best
    supported) reaches it."""
    if keep > 0:
        inside = min(inside, float(np.quantile(share, 1.0 - min(keep, 1.0))))
    return inside


#: Branch recovery (:func:`recover_branches`): groups of at least this share of a side's
#: candidates (and ``BRANCH_MIN_STREAMLINES``) are considered ...
BRANCH_MIN_SHARE = 0.05
BRANCH_MIN_STREAMLINES = 20
#: ... whose part between these MNI z (the pons' top to the corona radiata) runs, for the median
#: streamline, at least ``BRANCH_TRUNK_SHARE`` in cells the cleaned tract visits ...
BRANCH_TRUNK_Z = (-18.0, 20.0)
BRANCH_TRUNK_SHARE = 0.8
#: ... and of such a group, the streamlines that run only in its own dense cells join, or its
#: best-supported 3 % when fewer do.
BRANCH_CORE_KEEP = 0.03


def recover_branches(streamlines_mni: Sequence[np.ndarray], idx: np.ndarray, kept: np.ndarray,
                     tdi_fraction: float = 0.3) -> np.ndarray:
    """``kept`` (the density-cleaned side) with the core of each branch of the fan that the
    cleaning dropped but that grows out of the kept tract's trunk.

    Why: the density cleaning judges every streamline against the whole side's density, so a
    branch of the fan that carries a small part of the side's streamlines (the face area, low and
    lateral on the gyrus) goes as a whole; on the phantoms most missed tract voxels were such
    branches (recall 0.54 at MNI z 30-45 on the development set), and the candidates did cover
    them. The candidates are grouped by the shape of their part above ``FAN_Z`` (QuickBundles,
    ``QB_MM``, as :func:`clean_fan` does). A true branch shares the tract's trunk up to where it
    leaves it in the corona radiata; the strays that pass the anatomical tests leave it lower, in
    the capsule or the background white matter beside it, so only groups whose median
    streamline runs at least ``BRANCH_TRUNK_SHARE`` of its way from MNI z -18 to 20 in cells the
    cleaned tract visits are taken. Of those, only the core joins (the ``BRANCH_CORE_KEEP``
    best-supported streamlines of the group's own density, its cells dense from
    ``tdi_fraction`` as in :func:`clean_density`): adding whole groups added as many
    rim voxels as true ones at 3 mm (benchmarks/RESULTS.md, "tried and not adopted"). Sides with fewer than
    ``TDI_MIN_STREAMLINES`` candidates were not cleaned and are left as they are.
    """
    from dipy.segment.clustering import QuickBundles

    from cstbatch.steps.metrics import densify, orient_streamlines

    if len(idx) < TDI_MIN_STREAMLINES or not len(kept):
        return kept
    trunk_cells = np.unique(np.concatenate(_cell_keys(streamlines_mni, kept)))
    sl = [densify(s, 1.0) for s in orient_streamlines([np.asarray(streamlines_mni[i], np.float64) for i in idx],
                                                      np.eye(4))]
    groups = QuickBundles(threshold=QB_MM).cluster(list(_fan_parts(sl).astype(np.float32)))
    out = set(kept.tolist())
    z0, z1 = BRANCH_TRUNK_Z
    for g in groups:
        members = np.asarray(g.indices)
        if len(members) < max(BRANCH_MIN_SHARE * len(idx), BRANCH_MIN_STREAMLINES):
            continue
        lows = [_keys(s[(s[:, 2] >= z0) & (s[:, 2] <= z1)]) for s in (sl[j] for j in members)]
        lows = [k for k in lows if len(k)]
        if not lows:
            continue
        # each member's share of trunk cells, from one membership test over the whole group
        hit = np.isin(np.concatenate(lows), trunk_cells)
        owner = np.repeat(np.arange(len(lows)), [len(k) for k in lows])
        on_trunk = np.bincount(owner, weights=hit.astype(float)) / np.bincount(owner)
        if np.median(on_trunk) < BRANCH_TRUNK_SHARE:
            continue
        share = _dense_share([_keys(sl[j]) for j in members], tdi_fraction)
        out.update(idx[members[share >= _share_threshold(share, 1.0, BRANCH_CORE_KEEP)]].tolist())
    return np.array(sorted(out), np.int64)


def _fan_parts(sl: list[np.ndarray]) -> np.ndarray:
    """(n, 10, 3): each upward-oriented streamline's part above ``FAN_Z``, resampled to 10
    points (its last two points when it stops below): what groups the branches of the fan."""
    from dipy.tracking.streamline import set_number_of_points

    upper = []
    for s in sl:
        u = s[s[:, 2] > FAN_Z]
        upper.append((u if len(u) >= 2 else s[-2:]).astype(np.float32))
    return np.asarray(set_number_of_points(upper, nb_points=10), np.float64)


def clean_fan(streamlines_mni: Sequence[np.ndarray], idx: np.ndarray, options) -> np.ndarray:
    """The side's streamlines ``idx`` without strays (see module doc)."""
    from dipy.segment.clustering import QuickBundles

    from cstbatch.steps.metrics import densify, orient_streamlines

    if len(idx) < MIN_STREAMLINES:
        return idx
    thr = float(option_value(options, "extract_core_threshold"))
    sl = orient_streamlines([np.asarray(streamlines_mni[i], np.float64) for i in idx], np.eye(4))
    sl = [densify(s, 1.0) for s in sl]
    ok = _trunk_scores(sl) >= thr
    if not ok.any():
        return idx[:0]
    up = _fan_parts(sl)
    labels = np.full(len(idx), -1)
    clusters = QuickBundles(threshold=QB_MM).cluster(list(up[ok].astype(np.float32)))
    small = max(FAN_SUPPORT, int(np.ceil(0.03 * ok.sum())))
    where = np.flatnonzero(ok)
    for c_id, c in enumerate(clusters):
        if len(c.indices) >= small:
            labels[where[np.asarray(c.indices)]] = c_id
    keep = labels >= 0
    if not keep.any():
        return idx[:0]
    fan_score = _masked_density_scores(up[keep], np.ones(up[keep].shape[:2], bool), labels[keep])
    final = np.zeros(len(idx), bool)
    final[np.flatnonzero(keep)[fan_score >= FAN_THRESHOLD]] = True
    return idx[final]


def brainstem_ranges(streamlines_mni: Sequence[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """(n, 2) int ``[start, stop)`` point range kept of each streamline ``idx``: the stretch from
    its superior end down to where it first leaves the brainstem below :data:`TRIM_BELOW_Z`, or
    to the brainstem ROI's lower end (MNI z −60, :data:`cstbatch.steps.atlas.BRAINSTEM_Z`).

    Why the cut: in the pons the CST is crossed by the transverse pontine fibres and runs beside the
    cerebellar peduncles, and streamlines that came down the tract often turn into them: out of
    the side of the pons (middle cerebellar peduncle, or across the midline) or back into the
    tegmentum and the cerebellum (superior peduncle). Those continuations are other tracts; in the
    Trio repeats they were the part the two CSTs agreed on least (Dice of visited 2 mm cells
    0.26–0.55 below z −20, 0.65–0.75 in the capsule). The streamline itself is right down to that
    turn, so it is cut there rather than dropped. The brainstem is
    :func:`cstbatch.steps.atlas.brainstem_section` (the brainstem ROI's cross-section, every z).
    On the Trio repeats the test-retest Dice rose from 0.57 / 0.58 to 0.61 / 0.60; on the fresh
    phantoms (which have no cerebellar peduncles) worst-side Dice min / median stayed 0.49 / 0.63.

    Why the lower end: the tract is reported between the ROIs that define it, as pyAFQ clips
    its bundles to their waypoint ROIs. Whether a scan's field of view stops at z −65 or −100
    then no longer changes how much medulla (lower FA) enters the CST's means and profile, so
    sessions of a study stay comparable (Elition right CST FA 0.528 → 0.540 without its lower
    medulla). On the fresh phantoms, whose CST ends near z −55, worst-side Dice median rose
    0.627 → 0.635 (min unchanged).
    """
    from cstbatch.steps.atlas import BRAINSTEM_Z, brainstem_section

    out = np.zeros((len(idx), 2), np.int64)
    for j, i in enumerate(idx):
        m = np.asarray(streamlines_mni[i], np.float64)
        outside = (((m[:, 2] < TRIM_BELOW_Z) & ~brainstem_section(m[:, 0], m[:, 1], m[:, 2]))
                   | (m[:, 2] < BRAINSTEM_Z[0]))
        top = int(np.argmax(m[:, 2])) if len(m) else 0
        if not outside.any():
            out[j] = (0, len(m))
            continue
        # the run of points inside that holds the superior end (the top point is never
        # outside: it lies far above TRIM_BELOW_Z in any selected streamline)
        before = np.flatnonzero(outside[:top])
        after = np.flatnonzero(outside[top:])
        start = int(before[-1]) + 1 if before.size else 0
        stop = top + int(after[0]) if after.size else len(m)
        out[j] = (start, stop)
    return out


def cortex_entry_ranges(streamlines_mni: Sequence[np.ndarray], idx: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """``ranges`` with each streamline's superior end cut where it enters the cortex of the
    precentral gyrus for good: at the first point of its last stretch inside the gyrus's grey
    matter (:func:`precentral_rois`, ``grey_only``). A streamline that never reaches it (an
    image that stops under the gyrus) keeps its end. For ``extract_clip_cortex`` (on by default).

    Why cut: the superior ends are where two scans of one head disagree most (on the Trio
    repeats, Dice of visited 2 mm cells 0.52-0.67 above MNI z 45 against 0.8 in the capsule),
    because streamlines wander in the cortex wherever its crossing fibres let them. Cut there,
    the tract is reported as the white-matter tract it is, up to the cortex, as the brainstem
    cut ends it at its ROI below. Why the last entry: on the way up a streamline may graze grey
    matter (the depth of a sulcus, or a registration a few mm off), and a cut at the first touch
    dropped much of the upper fan (phantom recall 0.80 -> 0.68 at 3 mm). Why the cortex alone
    and not the white matter within 3 mm of it too (the target test's ribbon): the phantoms'
    2 mm tracts lost their last few mm under the cortex (worst-side Dice of 15000-15009 min
    0.661 -> 0.609), while the test-retest gain was nearly the same (benchmarks/RESULTS.md, "Cutting the tract
    at the cortex").
    """
    code, aff = precentral_rois(0.0, grey_only=True)
    out = np.array(ranges, np.int64, copy=True).reshape(-1, 2)
    for j, i in enumerate(idx):
        a, b = (int(v) for v in out[j])
        seg = np.asarray(streamlines_mni[i], np.float64)[a:b]
        if len(seg) < 2:
            continue
        up = seg[-1, 2] >= seg[0, 2]
        inside = point_codes(seg if up else seg[::-1], code, aff) > 0  # from the inferior end
        if not inside.any():
            continue
        last_in = int(np.flatnonzero(inside)[-1])
        outside_before = np.flatnonzero(~inside[:last_in])
        # at least two points stay (a streamline inside the cortex from its first point is not
        # one the corridor keeps, but a one-point tract would break its profile)
        entry = max(int(outside_before[-1]) + 1 if outside_before.size else 0, 1)
        if up:  # keep up to the entry point
            out[j, 1] = a + entry + 1
        else:
            out[j, 0] = b - entry - 1
    return out


def keep_high_fa(idx: np.ndarray, kept: np.ndarray, streamline_fa, share: float) -> np.ndarray:
    """``kept`` plus the ``share`` of the candidates ``idx`` with the highest mean FA along them.

    Why: the density cleaning keeps what runs in the tract's dense cells, which in a wide fan
    (a CST spread over the whole gyrus, as histological atlases draw it) is a narrow core: its
    sparse branches go, though they run in tract. Mean FA along a candidate says how much of
    its course lies in coherent white matter, without asking how many others share it; a stray
    through the background, grey matter or a crossing has a lower one. At 10 % every
    development phantom set gained (worst side min / median, atlas 3 mm 0.426 / 0.485 -> 0.462
    / 0.514, tubes 3 mm 0.441 / 0.595 -> 0.463 / 0.597), but on the Trio repeats the right CSTs
    agreed less (mean of three seedings 0.722 -> 0.709, one seeding at 0.704), and at 30 % they
    fell below 0.70: a selection by noisy FA differs between two scans where the density's does
    not. So it is off by default (``benchmarks/RESULTS.md``, "Mean FA along the candidates").
    Without ``streamline_fa`` (an extractor called outside the extract step) or with ``share``
    0, ``kept`` is returned unchanged.
    """
    from cstbatch.study.options import require_in_bounds

    share = float(require_in_bounds("extract_fa_keep", share))
    if streamline_fa is None or share <= 0 or not len(idx):
        return kept
    fa = np.asarray(streamline_fa, np.float64)[idx]
    ok = np.isfinite(fa)
    if not ok.any():
        return kept
    cut = np.quantile(fa[ok], 1.0 - share)
    return np.union1d(kept, idx[ok & (fa >= cut)]).astype(np.int64)


def crown_offset(streamline_mni: np.ndarray) -> float:
    """MNI y of the streamline's superior end minus the precentral crown's y at that level (mm;
    positive: in front of the crown), whichever way the streamline runs."""
    from cstbatch.steps.atlas import precentral_crown_y

    top = upper_end(streamline_mni)
    return float(top[1] - precentral_crown_y(top[2]))


def ends_behind_crown(streamlines_mni: Sequence[np.ndarray], idx: np.ndarray, ranges: np.ndarray,
                      max_front_mm: float) -> np.ndarray:
    """Bool per streamline ``idx`` (cut to ``ranges``): its superior end lies at most
    ``max_front_mm`` in front of the precentral crown (``extract_front_mm``)."""
    return np.array([crown_offset(np.asarray(streamlines_mni[i])[int(a):int(b)]) <= max_front_mm
                     for i, (a, b) in zip(idx, ranges)], bool)


def extract_corridor(streamlines_mni: Sequence[np.ndarray], atlas, options: Mapping[str, Any] | None = None):
    """CST streamlines through the pons, the posterior limb and to the precentral gyrus, cut
    where they leave the brainstem below the peduncles (``ranges``, :func:`brainstem_ranges`)."""
    options = dict(options or {})
    side, info = _classify(streamlines_mni, atlas, options)
    out: dict[str, Any] = {"ranges": {}}
    trimmed, candidates, recovered, high_fa, peduncle, front = {}, {}, {}, {}, {}, {}
    clip = bool(option_value(options, "extract_clip_cortex"))
    front_mm = option_value(options, "extract_front_mm")
    for name, v in (("left", 1), ("right", -1)):
        idx = np.flatnonzero(side == v).astype(np.int64)
        ped = np.flatnonzero(side == 2 * v).astype(np.int64)
        candidates[name] = int(len(idx))  # before cleaning: how much the anatomical test let through
        if option_value(options, "extract_core_filter"):
            tdi = option_value(options, "extract_clean") != "fan"
            if tdi:
                kept = clean_density(streamlines_mni, idx, options, extra=ped)
                ped = np.intersect1d(kept, ped)
            else:
                kept = clean_fan(streamlines_mni, idx, options)
                ped = ped[:0]
            n_clean = len(kept)
            if tdi and option_value(options, "extract_recover_branches"):
                kept = recover_branches(streamlines_mni, idx, kept,
                                        float(option_value(options, "extract_tdi_fraction")))
            recovered[name] = int(len(kept) - n_clean)
            share = float(option_value(options, "extract_fa_keep", null_is_default=True))
            if tdi and share > 0:
                n_before = len(kept)
                kept = keep_high_fa(idx, kept, options.get("streamline_fa"), share)
                high_fa[name] = int(len(kept) - n_before)
            idx = kept
        else:
            idx = np.union1d(idx, ped).astype(np.int64)
        if len(ped):
            peduncle[name] = int(len(ped))
        ranges = brainstem_ranges(streamlines_mni, idx)
        final = cortex_entry_ranges(streamlines_mni, idx, ranges) if clip else ranges
        if front_mm is not None:
            behind = ends_behind_crown(streamlines_mni, idx, final, float(front_mm))
            front[name] = int((~behind).sum())
            idx, ranges, final = idx[behind], ranges[behind], final[behind]
        trimmed[name] = int(sum(int(b - a) < len(streamlines_mni[i]) for i, (a, b) in zip(idx, ranges)))
        out[name] = idx
        out["ranges"][name] = final
    out["info"] = {**info, "candidates": candidates, "branch_streamlines_recovered": recovered,
                   "trimmed_in_brainstem": trimmed}
    if high_fa:
        out["info"]["high_fa_streamlines_kept"] = high_fa
    if peduncle_counts(options):
        out["info"]["peduncle_streamlines_kept"] = {k: peduncle.get(k, 0) for k in ("left", "right")}
    if clip:
        out["info"]["superior_end"] += ", cut where the streamline enters its cortex for good (extract_clip_cortex)"
    if front:
        out["info"]["front_streamlines_dropped"] = front
        out["info"]["superior_end"] += f"; ends at most {float(front_mm):g} mm in front of its crown (extract_front_mm)"
    return out

