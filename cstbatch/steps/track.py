"""Tractography: ``func(data, gtab, mask, maps, affine, options) -> list[ndarray]``.

Streamlines are returned as float32 (n_points, 3) arrays in RAS+ mm. The tracker works in
``mask`` and seeds in ``maps["seed_mask"]`` when given: by default the track step hands it the
CST corridor and seed regions of :mod:`cstbatch.steps.track_region` (``track_region=cst``), or
the whole brain (``track_region=brain``).

Why CSD by default: the CST runs through the corona radiata, where callosal and association
fibres cross it. A tensor has a single orientation per voxel, so in a crossing it points along
whichever bundle dominates (or nowhere in particular) and deterministic DTI tracking either
turns away or stops; the CST then looks truncated or lesioned where it is not. Constrained
spherical deconvolution resolves several fibre orientations per voxel, and the deterministic
maximum-direction getter follows the one closest to the incoming direction, so the tract
continues straight through the crossing. ``track_tensor_eudx`` is kept for comparison.

Space handling: dipy's trackers step through the voxel grid along directions expressed on
the voxel axes (the gradient table is built that way at ingest) and scale each step by the
voxel size taken from the affine, so the affine is handed to the tracker and the seeds are
given in world mm. That is correct for RAS, LAS and oblique images and for anisotropic
voxels; affines with shear are rejected by dipy and handled by resampling-free fallback (track
in voxel space with the mean voxel size, then apply the affine).

Options (defaults in :mod:`cstbatch.study.options`): ``track_seed_density`` (seeds per voxel), ``track_seed_fa``, ``track_stop_fa``, ``track_step_size`` (mm),
``track_max_angle`` (degrees per step), ``track_min_length`` (mm), ``track_random_seed``.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
from nibabel.affines import voxel_sizes

from cstbatch.atomic import atomic_path
from cstbatch.study.bvalues import B0_THRESHOLD

#: the longest streamline followed (mm); the CST is ~150-200 mm in adults.
MAX_LENGTH_MM = 300.0
#: fODF amplitudes below this share of the voxel's largest are not followed (dipy's
#: ``pmf_threshold``, relative to the maximum).
PMF_THRESHOLD = 0.1
#: The same for the probabilistic tracker, which draws each step from what is left. At 10 % it
#: also draws from the flanks of the lobe it follows (a step's direction scattered by 18° on
#: average in a straight test bundle, 13° at 50 %), so streamlines drift over a thin tract's
#: rim and into neighbours; at 50 % they keep to the lobe's core, and two scans of one head
#: agree better (``benchmarks/RESULTS.md``, "Probabilistic tracking on the lobes' cores").
PROBABILISTIC_PMF_THRESHOLD = 0.5
#: A Gaussian's full width at half maximum over its σ (kernels are given as FWHM, like every
#: smoothing kernel in the field).
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

def _opt(options: Mapping[str, Any], name: str):
    """The option's value (its default when unset or null), checked against the table's
    choices or bounds: the tracker is often called directly, without the manifest's checks."""
    from cstbatch.study.options import OPTIONS, option_value, require_choice, require_in_bounds

    val = option_value(options, name, null_is_default=True)
    return require_choice(name, val) if OPTIONS[name].choices else require_in_bounds(name, val)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _has_shear(affine: np.ndarray) -> bool:
    lin = np.asarray(affine, float)[:3, :3]
    dot = lin.T @ lin
    return not np.allclose(np.triu(dot, 1), 0.0, atol=1e-5)


def _tracking_frame(affine: np.ndarray) -> tuple[np.ndarray, float]:
    """(affine handed to the tracker, factor turning mm into the tracker's step unit)."""
    affine = np.asarray(affine, dtype=float)
    if not _has_shear(affine):
        return affine, 1.0
    # dipy cannot step in a sheared grid: track in voxel units of the mean voxel size
    vox = voxel_sizes(affine)
    return np.eye(4), 1.0 / float(np.mean(vox))


def make_seeds(seed_mask: np.ndarray, density: int, random_seed: int) -> np.ndarray:
    """Seed points in voxel coordinates: ``density`` uniformly random points in every voxel.

    Parameters
    ----------
    seed_mask : bool (X, Y, Z)
    density : int, seeds per voxel
    random_seed : int, seed of the random positions

    Returns float64 (n, 3) voxel coordinates (voxel centres are integers), voxel by voxel in
    ``np.argwhere`` order.

    Why random positions: seeds at voxel centres produce streamlines on a lattice (visible
    stripes in tract density maps). Why a count per voxel rather than a grid per axis: the
    count can follow the voxel volume (2 seeds in a 2.5 mm voxel ≈ 1 in a 2 mm voxel, the same
    seeds per mm³), where a per-axis grid only offers 1, 8, 27… A fixed ``random_seed`` gives
    identical seeds, hence identical streamlines, on every run.
    """
    density = max(1, int(density))
    centres = np.repeat(np.argwhere(np.asarray(seed_mask, bool)).astype(float), density, axis=0)
    rng = np.random.default_rng(int(random_seed))
    return centres + rng.uniform(-0.5, 0.5, size=centres.shape)


def _apply(affine: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ affine[:3, :3].T + affine[:3, 3]


def _finish(streamlines, track_affine: np.ndarray, affine: np.ndarray, min_length_mm: float):
    """Map tracker output to RAS+ mm float32 and drop streamlines shorter than the minimum."""
    affine = np.asarray(affine, float)
    to_world = affine @ np.linalg.inv(track_affine)
    same = np.allclose(to_world, np.eye(4))
    out = []
    for sl in streamlines:
        sl = np.asarray(sl, dtype=float)
        if len(sl) < 2:
            continue
        if not same:
            sl = _apply(to_world, sl)
        seg = np.diff(sl, axis=0)
        if np.sqrt((seg ** 2).sum(-1)).sum() < min_length_mm:
            continue
        out.append(sl.astype(np.float32))
    return out


def _stopping(maps: Mapping[str, np.ndarray], mask: np.ndarray, stop_fa: float):
    from dipy.tracking.stopping_criterion import ThresholdStoppingCriterion

    fa = np.asarray(maps["fa"], dtype=float)
    if mask is not None:
        fa = np.where(np.asarray(mask, bool), fa, 0.0)
    return ThresholdStoppingCriterion(np.ascontiguousarray(fa), float(stop_fa)), fa


def select_shell(gtab):
    """Indices (b0s + one shell) for single-shell CSD, and the shell's b-value.

    Single-shell CSD assumes one b-value; on multi-shell data the shell with most directions
    is used (ties: the higher b, whose angular contrast is better), rounded to 100 s/mm².
    """
    bvals = np.asarray(gtab.bvals, float)
    b0 = bvals <= B0_THRESHOLD
    shells = np.round(bvals / 100.0) * 100.0
    uniq, counts = np.unique(shells[~b0], return_counts=True)
    if uniq.size == 0:
        raise ValueError("no diffusion-weighted volumes")
    best = uniq[np.lexsort((uniq, counts))[-1]]
    keep = b0 | (shells == best)
    return np.flatnonzero(keep), float(best)


def sh_order_for(n_directions: int) -> int:
    """SH order for CSD: the highest of 8/6/4/2 with at least as many directions as SH
    coefficients (45/28/15/6).

    CSD's non-negativity constraint allows some super-resolution, but a lower order on
    ~30-direction clinical data keeps the fit stable; 6 still separates 60-90° crossings.
    Below 15 directions crossings cannot be resolved at all (order 2 is tensor-like).
    """
    for order, n_coef in ((8, 45), (6, 28), (4, 15)):
        if n_directions >= n_coef:
            return order
    return 2


class ResponseError(ValueError):
    """No voxels to estimate the fibre response from (the session step names the image)."""


def _response(gtab, data, fa, mask):
    """Single-fibre response from the most anisotropic voxels of our own FA map.

    Why not ``auto_response_ssst``: it refits a tensor in a cube around the volume centre,
    which misses the white matter on small or off-centre fields of view. Voxels with FA > 0.7
    are the classic choice; if fewer than 50 exist, the 300 highest-FA voxels in the mask are
    used instead.
    """
    from dipy.reconst.csdeconv import response_from_mask_ssst

    cand = fa > 0.7
    if mask is not None:
        cand &= np.asarray(mask, bool)
    if cand.sum() < 50:
        vals = np.where(mask if mask is not None else True, fa, 0.0).ravel()
        n = min(300, int((vals > 0).sum()))
        if n < 5:
            raise ResponseError(f"{n} voxels with FA > 0 in the mask, at least 5 needed")
        thr = np.partition(vals, -n)[-n]
        cand = (fa >= thr) & (fa > 0)
        if mask is not None:
            cand &= np.asarray(mask, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        response, _ = response_from_mask_ssst(gtab, data, cand.astype(np.uint8))
    return response


def fit_csd_sh(data, gtab, mask, fa, stop_fa):
    """Fit single-shell CSD where tracking can go; returns (sh coefficients, sh order).

    Returns float64 (X, Y, Z, n_coef) spherical-harmonic coefficients (dipy "descoteaux07"
    basis, directions on voxel axes), zero outside the fitted voxels. Only voxels inside the
    mask with FA above ``stop_fa`` (dilated by one voxel, for the tracker's trilinear
    interpolation) are fitted: elsewhere tracking stops anyway, and CSD is the slowest part.
    """
    from dipy.core.gradients import gradient_table
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel
    from scipy import ndimage

    keep, _ = select_shell(gtab)
    if keep.size != len(gtab.bvals):
        sub = gradient_table(gtab.bvals[keep], bvecs=gtab.bvecs[keep], b0_threshold=B0_THRESHOLD)
        data = data[..., keep]
    else:
        sub = gtab
    n_dirs = int((~sub.b0s_mask).sum())
    order = sh_order_for(n_dirs)
    fit_mask = fa > stop_fa
    if mask is not None:
        fit_mask &= np.asarray(mask, bool)
    fit_mask = ndimage.binary_dilation(fit_mask)
    if mask is not None:
        fit_mask &= np.asarray(mask, bool)
    response = _response(sub, data, fa, mask)
    with warnings.catch_warnings():
        # dipy's legacy-basis notices; the basis is fixed by CSD and matched by the tracker
        warnings.simplefilter("ignore")
        model = ConstrainedSphericalDeconvModel(sub, response, sh_order_max=order)
        shm = _fit_csd_voxels(model, data, fit_mask)
    return shm, order


def _fit_csd_voxels(model, data, fit_mask, chunk: int | None = None) -> np.ndarray:
    """``model.fit(data, mask=fit_mask).shm_coeff``, solved for many voxels at once.

    Why: dipy fits CSD one voxel at a time (a Python call, decorators and a Cholesky solve
    per voxel and per iteration); on the Elition CST corridor (59 000 voxels) that took 8–10 s.
    This runs dipy's own algorithm (Tournier's super-resolved constrained deconvolution, as in
    ``dipy.reconst.csdeconv.csdeconv``) with the model's own matrices on ``chunk`` voxels at a
    time: the unconstrained solution, then, for every voxel whose fODF still has amplitudes
    below ``tau`` × its mean, the system augmented by those directions of the regularisation
    sphere, until each voxel's set of such directions stops changing (at most
    ``model.convergence`` passes, as dipy). The augmented normal matrices are built with one
    matrix product (``small @ outer(B, B)``) and solved as a batch; the default chunk keeps
    that batch near 2 million numbers (16 MB) whatever the SH order. Coefficients agree with
    ``model.fit`` to ~1e-15 relative (LU instead of Cholesky; ``tests/test_steps.py``
    checks). Falls back to ``model.fit`` if a future dipy changes those internals.
    """
    parts = [getattr(model, name, None) for name in ("_X", "B_reg", "_P", "_where_dwi", "tau", "convergence")]
    if any(p is None for p in parts):
        return np.asarray(model.fit(data, mask=fit_mask).shm_coeff, dtype=float)
    X, B, P, where_dwi, tau, passes = parts
    if np.linalg.matrix_rank(P) < P.shape[0]:
        P = P + 1e-5 * np.eye(P.shape[0])  # dipy's remedy when the Cholesky solve fails
    n_coef = X.shape[1]
    chunk = chunk or max(256, 2_000_000 // (n_coef * n_coef))
    low = min(15, n_coef)  # the first pass tests a smooth fODF of SH order <= 4, as dipy
    outer = (B[:, :, None] * B[:, None, :]).reshape(len(B), n_coef * n_coef)
    shape = data.shape[:3]
    where = np.flatnonzero(np.asarray(fit_mask, bool).ravel())
    flat = data.reshape(-1, data.shape[-1])
    out = np.zeros((int(np.prod(shape)), n_coef))
    for start in range(0, where.size, chunk):  # bounded float64 temporaries
        sel = where[start:start + chunk]
        z = np.asarray(flat[sel][:, where_dwi], dtype=np.float64) @ X
        sh = np.linalg.solve(P, z.T).T
        threshold = (B[0, 0] * float(tau) * sh[:, 0])[:, None]
        small = sh[:, :low] @ B[:, :low].T < threshold
        smooth_ok = ~small.any(axis=1)
        small[smooth_ok] = sh[smooth_ok] @ B.T < threshold[smooth_ok]
        active = np.flatnonzero(small.any(axis=1))
        for _ in range(int(passes)):
            if not active.size:
                break
            was = small[active]
            q = P + (was.astype(np.float64) @ outer).reshape(-1, n_coef, n_coef)
            fitted = np.linalg.solve(q, z[active][..., None])[..., 0]
            sh[active] = fitted
            now = fitted @ B.T < threshold[active]
            small[active] = now
            active = active[(now != was).any(axis=1)]
        out[sel] = sh
    return out.reshape(shape + (n_coef,))


# --------------------------------------------------------------------------------------------
# trackers
# --------------------------------------------------------------------------------------------

def track_deterministic(data, gtab, mask, maps, affine, options) -> list[np.ndarray]:
    """CSD + deterministic maximum-direction tracking (the default method).

    Parameters
    ----------
    data : float32 (X, Y, Z, N), image voxel grid (denoised)
    gtab : dipy GradientTable, b-vectors on the voxel axes
    mask : bool (X, Y, Z) brain mask
    maps : dict with ``fa`` float32 (X, Y, Z) (from :func:`cstbatch.steps.model.fit_tensor_maps`)
    affine : (4, 4) voxel → RAS+ mm
    options : mapping, see module doc

    Returns
    -------
    list of float32 (n_points, 3) arrays in RAS+ mm, each at least ``track_min_length`` mm.

    Seeds: voxels in the mask with FA > ``track_seed_fa`` (white matter),
    ``track_seed_density`` per voxel at reproducible random positions (:func:`make_seeds`). Tracking
    stops where FA < ``track_stop_fa`` or outside the mask, or when no direction within
    ``track_max_angle`` degrees of the current one exists. Every peak at a seed is tracked in
    both directions (dipy ``LocalTracking`` defaults), so a seed in a crossing yields a
    streamline per bundle. Single process, no threads.
    """
    from dipy.direction import DeterministicMaximumDirectionGetter

    return _csd_tracking(DeterministicMaximumDirectionGetter, data, gtab, mask, maps, affine, options)


def track_probabilistic(data, gtab, mask, maps, affine, options) -> list[np.ndarray]:
    """CSD + probabilistic tracking: each step draws a direction from the fibre ODF (within
    ``track_max_angle`` of the current one).

    Same arguments, seeds and stopping rule as :func:`track_deterministic`. Why offer it: where
    the CST fans out under the corpus callosum and the superior longitudinal fasciculus, the
    deterministic getter always takes the strongest peak, so a seed yields one path; drawing
    from the ODF lets streamlines from the same seed region follow the whole fan. Deterministic
    all the same: dipy seeds its generator per streamline from ``track_random_seed``.
    """
    from dipy.direction import ProbabilisticDirectionGetter

    return _csd_tracking(ProbabilisticDirectionGetter, data, gtab, mask, maps, affine, options,
                         pmf_threshold=PROBABILISTIC_PMF_THRESHOLD)


#: Parallel transport tractography (:func:`track_ptt`): the step (mm; PTT moves along arcs of
#: the drawn curvature, in shorter steps than the other trackers) ...
PTT_STEP_MM = 0.5
#: ... the largest turn per step (degrees; ``track_max_angle`` is per 1 mm step of the other
#: trackers, and 30° per 0.5 mm let PTT's streamlines loop) ...
PTT_MAX_ANGLE = 10.0
#: ... and the probe's length (mm): the stretch ahead along which the fODF scores a curve.
PTT_PROBE_LENGTH_MM = 2.0


def _follow_ptt(field, options) -> list[np.ndarray]:
    from dipy.direction import PTTDirectionGetter

    affine = field[5]
    vox = voxel_sizes(affine)  # the probe in the tracker's units: voxels (mean voxels, sheared grid)
    probe = PTT_PROBE_LENGTH_MM / float(np.mean(vox) if _has_shear(affine) else np.min(vox))
    return _follow(PTTDirectionGetter, field, options, PMF_THRESHOLD, max_angle=PTT_MAX_ANGLE,
                   step_mm=PTT_STEP_MM, probe_length=probe)


def track_ptt(data, gtab, mask, maps, affine, options) -> list[np.ndarray]:
    """CSD + parallel transport tractography (dipy ``PTTDirectionGetter``).

    Same arguments, seeds and stopping rule as :func:`track_deterministic`; its own step,
    turning bound and probe (:data:`PTT_STEP_MM`, :data:`PTT_MAX_ANGLE`,
    :data:`PTT_PROBE_LENGTH_MM`). Why offer it: PTT draws each step as a short smooth curve
    scored by the fODF along its length, not a direction scored at one point, so it keeps a
    course through a crossing and spreads over a wide fan. On the atlas phantom it finds more
    of the tract than any other tracker; on the thin tube CSTs its streamlines drift out of the
    tube into the white matter beside it (``benchmarks/RESULTS.md``, "The tube CST's width, and
    parallel transport tractography"). Deterministic by seed, like the probabilistic tracker.
    """
    return _follow_ptt(_fodf_field(data, gtab, mask, maps, affine, options), options)


def track_deterministic_ptt(data, gtab, mask, maps, affine, options) -> list[np.ndarray]:
    """The deterministic tracker's streamlines and PTT's from the same seeds and fODFs, together.

    Why: each tracker misses what the other finds. The deterministic one keeps to a thin tract's
    core, and PTT fills a wide fan. The extraction's density cleaning then keeps the cells that
    many streamlines of either visit, so PTT's drift beside a thin tract, which few streamlines
    share, goes again. The fODFs are fitted once.
    """
    from dipy.direction import DeterministicMaximumDirectionGetter

    field = _fodf_field(data, gtab, mask, maps, affine, options)
    return _follow(DeterministicMaximumDirectionGetter, field, options) + _follow_ptt(field, options)


def crop_to_region(data, mask, maps, affine, margin: int = 2):
    """(data, mask, maps, affine) cut to the bounding box of ``mask`` plus ``margin`` voxels.

    Why: with ``track_region=cst`` the region is a fraction of the image, and the CSD
    coefficients (float64, up to 45 per voxel) and the tracker's copies scale with the grid,
    not the region. The affine is shifted by the box's corner, so the streamlines come out in the
    same world mm, and seeds (``np.argwhere`` order is kept inside a box) land at the same points.
    """
    if mask is None or not np.asarray(mask).any():
        return data, mask, maps, affine
    ijk = np.argwhere(np.asarray(mask, bool))
    lo = np.maximum(ijk.min(axis=0) - margin, 0)
    hi = np.minimum(ijk.max(axis=0) + margin + 1, np.asarray(mask).shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    shift = np.eye(4)
    shift[:3, 3] = lo
    cropped = {k: (v[box] if isinstance(v, np.ndarray) and v.ndim >= 3 else v) for k, v in maps.items()}
    return np.asarray(data)[box], np.asarray(mask)[box], cropped, np.asarray(affine, float) @ shift


def smooth_fodf(shm: np.ndarray, affine, fwhm_mm: float) -> np.ndarray:
    """The fODF field averaged over neighbouring voxels (Gaussian of ``fwhm_mm``), where CSD was fitted.

    Why: with 12-30 noisy directions each voxel's fODF peaks scatter by several degrees, and a
    deterministic tracker follows every scattered peak, so two scans of one head drift apart
    (on the shared Trio repeats the tracts' disagreement lies in the upper fan, where the
    streamlines have travelled longest). Averaging the SH coefficients of neighbours keeps the
    orientations that neighbours share and cancels those they do not. A normalised
    convolution: voxels with no fit (zero coefficients) neither contribute nor receive.
    Width in mm, like every smoothing kernel in the field, so a 3 mm scan is smoothed over fewer
    voxels than a 2 mm one. ``track_fodf_kernel=isotropic``; the default kernel is
    :func:`smooth_fodf_along`, because a ball hands thin tracts their neighbours' orientation
    (the sample study's right CSTs fail their Dice bar with it; benchmarks/RESULTS.md,
    "Smoothed fODFs" and "fODFs smoothed along the fibres").
    """
    from cstbatch.study.options import require_in_bounds

    if require_in_bounds("track_fodf_fwhm", fwhm_mm) == 0:
        return shm
    from scipy import ndimage

    sigma = fwhm_mm / FWHM_PER_SIGMA / voxel_sizes(np.asarray(affine, float))
    fitted = (shm != 0).any(axis=-1)
    weight = ndimage.gaussian_filter(fitted.astype(np.float64), sigma, mode="constant")
    out = np.zeros_like(shm)
    for k in range(shm.shape[-1]):
        out[..., k] = ndimage.gaussian_filter(shm[..., k], sigma, mode="constant")
    out[fitted] /= weight[fitted][:, None]
    out[~fitted] = 0.0
    return out


def smooth_fodf_along(shm: np.ndarray, affine, fwhm_mm: float) -> np.ndarray:
    """The fODF field with each direction's amplitude averaged along that direction's own line.

    Why: :func:`smooth_fodf` averages whole fODFs over a ball, so a tract one or two voxels
    wide takes its neighbours' orientations (a tube two voxels across in a background of
    another direction: at 5 mm nearly all its peaks turn to the background's; the sample
    study's right CSTs fail their Dice bar at 3.5 mm). A fibre continues along its own
    direction, so the amplitude an fODF gives direction ``d`` is averaged only with the
    amplitudes of ``d`` at points up to ±2σ along ``d`` (Gaussian weights of ``fwhm_mm``, a
    point every half voxel): a lobe along a thin tract is averaged inside the tract, a crossing
    lobe along its own path. This is the spatial part of contextual enhancement (Duits and
    Franken; Portegies et al. 2015 with CSD) without its angular diffusion; dipy's
    implementation of the full kernel convolves a 7×7×7 neighbourhood for every pair of
    orientations (3.4 million kernel values per voxel on 100 orientations). Normalised like
    :func:`smooth_fodf`: voxels without a fit neither lend nor receive. Directions: the 100 of
    dipy's ``repulsion200`` hemisphere (at least the 45 coefficients of order 8; the 181 of the
    tracker's sphere give the same fODFs within 0.7 % at 3.5 times the cost).
    """
    from cstbatch.study.options import require_in_bounds

    if require_in_bounds("track_fodf_fwhm", fwhm_mm) == 0:
        return shm
    from dipy.core.sphere import HemiSphere
    from dipy.data import get_sphere
    from dipy.reconst.shm import order_from_ncoef, sh_to_sf_matrix
    from scipy import ndimage

    order = int(order_from_ncoef(shm.shape[-1]))
    hemi = HemiSphere.from_sphere(get_sphere(name="repulsion200"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dipy's legacy-basis notice; the basis CSD wrote
        to_sf, to_sh = sh_to_sf_matrix(hemi, sh_order_max=order, basis_type=None)
    vox = voxel_sizes(np.asarray(affine, float))
    sigma = fwhm_mm / FWHM_PER_SIGMA
    step = 0.5 * float(vox.min())
    offsets = step * np.arange(1, int(np.ceil(2.0 * sigma / step)) + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    fitted = (shm != 0).any(axis=-1)
    points = np.argwhere(fitted).T.astype(np.float64)
    # only points near the fit's edge can reach an unfitted voxel: elsewhere every weight counts
    depth = ndimage.distance_transform_edt(np.pad(fitted, 1), sampling=vox)[1:-1, 1:-1, 1:-1][fitted]
    edge = depth <= offsets[-1] + float(vox.max())
    sf = shm[fitted] @ to_sf
    out = np.empty_like(sf)
    amplitude = np.zeros(fitted.shape, np.float64)
    inside = fitted.astype(np.float64)
    norm = np.full(len(sf), 1.0 + 2.0 * weights.sum())  # away from the edge: every weight
    for j, direction in enumerate(hemi.vertices):  # directions on voxel axes, as CSD's
        amplitude[fitted] = sf[:, j]
        per_mm = direction / vox
        total = sf[:, j].copy()
        norm[edge] = 1.0
        for dist, w in zip(offsets, weights):
            for sign in (1.0, -1.0):
                shift = (sign * dist) * per_mm[:, None]
                total += w * ndimage.map_coordinates(amplitude, points + shift, order=1, mode="constant")
                norm[edge] += w * ndimage.map_coordinates(inside, points[:, edge] + shift, order=1,
                                                          mode="constant")
        out[:, j] = total / norm
    res = np.zeros_like(shm)
    res[fitted] = out @ to_sh
    return res


def _fodf_field(data, gtab, mask, maps, affine, options) -> tuple:
    """(SH fODFs, stopping criterion, stopping FA, mask, maps, affine), all cut to the tracking
    region: what every CSD tracker follows, computed once per session."""
    method = str(_opt(options, "track_denoise"))
    # before the crop: the patch lattice stays on the image grid, so the crop changes nothing
    data = denoise_for_tracking(np.asarray(data), mask, method)
    data, mask, maps, affine = crop_to_region(data, mask, maps, affine)
    if method != "none":  # stop and seed by the FA of what is tracked, where the model step fitted one
        from cstbatch.steps.model import fit_tensor_maps

        fa0 = np.asarray(maps["fa"])
        maps = {**maps, "fa": np.where(fa0 > 0, fit_tensor_maps(data, gtab, mask)["fa"], 0).astype(np.float32)}
    sc, fa = _stopping(maps, mask, _opt(options, "track_stop_fa"))
    shm, _ = fit_csd_sh(data, gtab, mask, fa, float(_opt(options, "track_stop_fa")))
    smooth = {"along": smooth_fodf_along, "isotropic": smooth_fodf}[_opt(options, "track_fodf_kernel")]
    shm = smooth(shm, affine, float(_opt(options, "track_fodf_fwhm")))
    return shm, sc, fa, mask, maps, affine


def _follow(getter, field, options, pmf_threshold: float = PMF_THRESHOLD, max_angle: float | None = None,
            step_mm: float | None = None, **getter_kw) -> list[np.ndarray]:
    """Streamlines of one direction getter through ``field`` (:func:`_fodf_field`)."""
    from dipy.data import default_sphere
    from dipy.tracking.local_tracking import LocalTracking

    shm, sc, fa, mask, maps, affine = field
    angle = float(_opt(options, "track_max_angle")) if max_angle is None else float(max_angle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # legacy SH basis notice
        dg = getter.from_shcoeff(shm, max_angle=angle, sphere=default_sphere, pmf_threshold=pmf_threshold,
                                 **getter_kw)
        return _run_local_tracking(LocalTracking, dg, sc, fa, mask, affine, options, maps.get("seed_mask"),
                                   step_mm=step_mm)


def _csd_tracking(getter, data, gtab, mask, maps, affine, options,
                  pmf_threshold: float = PMF_THRESHOLD) -> list[np.ndarray]:
    return _follow(getter, _fodf_field(data, gtab, mask, maps, affine, options), options, pmf_threshold)


def denoise_for_tracking(data: np.ndarray, region, method: str) -> np.ndarray:
    """The DWI that tracking sees: ``method`` "mppca" (Marchenko-Pastur PCA on patches centred on
    every other voxel of the tracking region, :mod:`cstbatch.steps.mppca`) or "none".

    Why: fibre orientations and FA from 12-30 noisy directions scatter from voxel to voxel; a
    deterministic tracker follows every scattered peak and stops in any voxel whose FA dips
    under ``track_stop_fa`` (the pons, crossings), so two scans of one head give different
    bundles. The CSD fit, the stopping FA and the seeding FA are taken from the denoised region;
    the tensor maps that the metrics read stay as the ``denoise`` step left them. Every other
    voxel (8x fewer patches than the denoise step's full MP-PCA, each voxel still in several
    overlapping patches) keeps the cost to a few seconds.
    """
    if method == "none" or region is None:
        return data
    from cstbatch.study.options import require_choice

    require_choice("track_denoise", method)
    from cstbatch.steps.denoise import mppca_patch_radius
    from cstbatch.steps.mppca import mppca_batched

    radius = mppca_patch_radius(1, data.shape[-1])
    return mppca_batched(data, np.asarray(region, bool), radius, stride=2)


def _seed_mask(fa, mask, seed_fa):
    sm = fa > float(seed_fa)
    if mask is not None:
        sm &= np.asarray(mask, bool)
    return sm


def spread_seeds(seed_mask: np.ndarray, n_seeds: int, random_seed: int) -> np.ndarray:
    """``n_seeds`` seed points (voxel coordinates) spread evenly over the voxels of ``seed_mask``.

    Every voxel gets ``n_seeds // n_voxels`` seeds and the remainder goes to voxels drawn
    without replacement; positions are jittered uniformly within the voxel. Seeds come out
    voxel by voxel in ``np.argwhere`` order (neighbouring seeds stay together, which keeps the
    tracker's memory access local). Same mask and seed, same points.
    """
    vox = np.argwhere(np.asarray(seed_mask, bool))
    if not len(vox) or n_seeds <= 0:
        return np.zeros((0, 3))
    rng = np.random.default_rng(int(random_seed))
    counts = np.full(len(vox), n_seeds // len(vox), np.int64)
    extra = n_seeds - int(counts.sum())
    if extra:
        counts[np.sort(rng.choice(len(vox), size=extra, replace=False))] += 1
    centres = np.repeat(vox.astype(float), counts, axis=0)
    return centres + rng.uniform(-0.5, 0.5, size=centres.shape)


def _seeding(fa, mask, affine, options, seed_region=None):
    """(tracking affine, mm per tracking unit, seeds in voxel indices, step in mm): the
    seeding shared by every tracker, so methods differ only in their direction model.

    ``seed_region`` (``maps["seed_mask"]``, set for ``track_region=cst``): ``track_cst_seeds``
    seeds spread over its voxels above ``track_seed_fa``; otherwise ``track_seed_density`` seeds
    in every voxel of the mask above it (whole brain)."""
    track_affine, unit = _tracking_frame(affine)
    candidates = _seed_mask(fa, mask, _opt(options, "track_seed_fa"))
    if seed_region is not None:
        seeds_vox = spread_seeds(candidates & np.asarray(seed_region, bool), int(_opt(options, "track_cst_seeds")),
                                 int(_opt(options, "track_random_seed")))
    else:
        seeds_vox = make_seeds(candidates, int(_opt(options, "track_seed_density")),
                               int(_opt(options, "track_random_seed")))
    return track_affine, unit, seeds_vox, float(_opt(options, "track_step_size"))


def _run_local_tracking(LocalTracking, dg, sc, fa, mask, affine, options, seed_region=None, step_mm=None):
    track_affine, unit, seeds_vox, step = _seeding(fa, mask, affine, options, seed_region)
    if step_mm is not None:  # a tracker with its own step (PTT)
        step = float(step_mm)
    if not len(seeds_vox):
        return []
    tracker = LocalTracking(
        dg, sc, _apply(track_affine, seeds_vox), track_affine,
        step_size=step * unit,
        maxlen=int(np.ceil(MAX_LENGTH_MM / step)),
        minlen=2,
        return_all=True,
        random_seed=int(_opt(options, "track_random_seed")),
    )
    return _finish(tracker, track_affine, affine, float(_opt(options, "track_min_length")))


def track_tensor_eudx(data, gtab, mask, maps, affine, options) -> list[np.ndarray]:
    """Deterministic DTI tracking (EuDX-style: follow the tensor's principal eigenvector).

    Same arguments, seeds, stopping rule and output as :func:`track_deterministic`; the only
    difference is the orientation model: one direction per voxel, ``maps["evecs"][..., :, 0]``
    (voxel axes), so crossings are not resolved. Kept to show, and test, what CSD buys.
    If ``maps`` has no ``evecs`` (e.g. maps re-read from the saved FA/MD/RD/AD files), the
    tensor is refitted here from ``data``/``gtab`` inside ``mask`` (a few seconds).
    """
    from dipy.data import default_sphere
    from dipy.direction.peaks import PeaksAndMetrics
    from dipy.tracking.tracker import eudx_tracking

    if "evecs" not in maps:
        from cstbatch.steps.model import fit_tensor_maps

        maps = {**maps, "evecs": fit_tensor_maps(data, gtab, mask)["evecs"]}
    sc, fa = _stopping(maps, mask, _opt(options, "track_stop_fa"))
    e1 = np.asarray(maps["evecs"], dtype=float)[..., :, 0]
    sphere = default_sphere
    # nearest sphere vertex to ±e1 (EuDX works on vertex indices); hemisphere-symmetric sphere
    shape = e1.shape[:3]
    idx = np.zeros(shape, dtype=np.int32)
    flat = e1.reshape(-1, 3)
    flat_idx = idx.reshape(-1)
    verts = sphere.vertices
    for start in range(0, flat.shape[0], 200_000):
        blk = flat[start:start + 200_000]
        flat_idx[start:start + 200_000] = np.argmax(blk @ verts.T, axis=1)
    valid = (fa > 0) & (np.linalg.norm(e1, axis=-1) > 0)
    pam = PeaksAndMetrics()
    pam.sphere = sphere
    pam.peak_indices = np.where(valid, idx, -1)[..., None].astype(np.int32)
    pam.peak_values = np.where(valid, 1.0, 0.0)[..., None]
    pam.peak_dirs = np.where(valid[..., None], verts[idx], 0.0)[..., None, :]
    pam.gfa = fa
    pam.qa = pam.peak_values
    pam.odf = None
    pam.shm_coeff = None
    pam.B = None
    pam.odf_vertices = verts

    track_affine, unit, seeds_vox, step = _seeding(fa, mask, affine, options, maps.get("seed_mask"))
    if not len(seeds_vox):
        return []
    streamlines = eudx_tracking(
        _apply(track_affine, seeds_vox), sc, track_affine,
        pam=pam,
        min_len=2,
        max_len=int(MAX_LENGTH_MM),
        step_size=step * unit,
        max_angle=float(_opt(options, "track_max_angle")),
        sphere=sphere,
        nbr_threads=1,
        random_seed=int(_opt(options, "track_random_seed")) + 1,
        return_all=True,
    )
    return _finish(streamlines, track_affine, affine, float(_opt(options, "track_min_length")))


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------

def save_trk(streamlines, ref_img, path) -> None:
    """Write streamlines (RAS+ mm) as TrackVis ``.trk`` referenced to ``ref_img``.

    The reference image fixes the voxel grid/affine stored in the header, so viewers and
    ``load_tractogram(path, ref_img)`` place the streamlines where they were computed. Written to
    a hidden temporary ``.trk`` in the same folder, then renamed (``cstbatch.atomic``).
    """
    from dipy.io.stateful_tractogram import Space, StatefulTractogram
    from dipy.io.streamline import save_tractogram

    sft = StatefulTractogram(list(streamlines), ref_img, Space.RASMM)
    with atomic_path(path) as tmp:  # the temporary name keeps .trk: dipy picks the format by it
        save_tractogram(sft, str(tmp), bbox_valid_check=False)
