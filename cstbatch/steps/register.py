"""Template → subject registration (dipy.align) and moving things between the two spaces.

The atlas template is registered to the subject's FA map: subject FA is the *static* image,
the template the *moving* one. The pipeline is dipy's usual one less its translation stage:
centre of mass → rigid → affine, each by Mattes mutual information, optionally followed by
symmetric diffeomorphic (SyN, cross-correlation) refinement (``registration_method="syn"``).
On an image whose brain ends above the lower pons (a slab), the 12-parameter affine has optima
that squeeze the template into the slab; there the affine stage is a similarity (:data:`SLAB_STAGE`),
run from the rigid result and from it moved up and down (:data:`AFFINE_STARTS_MM`), and the
affine may then refine it only within :data:`SLAB_REFINE_MAX_MM`.

Why no translation stage, and a rigid stage that stops short of the finest level: they only
start the affine stage, and the finest level costs most (dipy runs it on the full-size image,
~6× a half-size evaluation). Measured on the 5 sample sessions against the true transforms
(``benchmarks/register_speed.py``, setting ``default`` against ``v1``): the same error
(0.045–0.071 mm mean, ≤ 0.18 mm max over the brain; changes ≤ 0.001 mm mean, ≤ 0.007 mm max)
in 0.60 of the CPU time, also with the subjects tilted a further 45°. The rigid stage stays:
on real heads with large rotations the affine stage should not have to find the rotation
alone. dipy's level budget is a function-evaluation limit: 0 still evaluates a few times at
that level, it does not skip it.

Which template image: the ICBM atlas gives an FA-like image (0.55·WM + 0.15·GM probability,
see ``cstbatch.steps.atlas.fa_like_template``) rather than the T1. FA maps have no skull, scalp or
CSF signal and white matter is their brightest tissue; the FA-like template shares this, so
both the centre-of-mass start and mutual information lock onto the same structures. With the
T1 the skull dominates the centre of mass and the outline, and WM/GM contrast is reversed
only in part, which leaves MI with more wrong optima. Passing an :class:`Atlas` uses its
``registration_template``.

Conventions: dipy's optimised affine maps *static world → moving world*, i.e. subject RAS+
mm → MNI mm; that is stored as ``Registration.subject_to_mni``. ROIs are pulled from the
template grid to the subject grid by nearest neighbour; streamlines (RAS+ mm) are pushed from
subject to MNI mm through the same transform.

On disk (:func:`save_itk_affine`) that affine is an ITK text transform in LPS+ coordinates, the
file ANTs, SimpleITK and nitransforms read: in ITK's resampling convention it maps points of the
subject grid into the template, so it resamples template images onto the subject
(``from-<template>_to-dwi_mode-image_xfm.txt``). The affine is the whole transform for the default
``registration_method=affine``; with ``syn`` the nonlinear part (dipy's displacement fields) is
kept only in cstbatch's .npz (:func:`save_registration`), and the ITK file holds its affine
start, not the whole mapping.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from cstbatch.atomic import atomic_path
from cstbatch.errors import InputError

#: Iterations per pyramid level (coarse → fine) of the affine stage. On the 2 mm phantom
#: (100, 50, 10) lands within 0.06 mm of (250, 100, 30) (mean over the brain) in half the time,
#: and (100, 50, 5) within 0.003 mm of (100, 50, 10) in 0.6 of its time (the full-size level).
AFFINE_LEVEL_ITERS = (100, 50, 5)
#: The rigid stage that starts it: coarse levels in full, the finest with dipy's minimum.
RIGID_LEVEL_ITERS = (100, 50, 0)
AFFINE_SIGMAS = (3.0, 1.0, 0.0)
AFFINE_FACTORS = (4, 2, 1)
SYN_LEVEL_ITERS = (20, 10, 5)
#: The template is resampled to about the subject's voxel size (never finer than this).
MIN_TEMPLATE_VOXEL_MM = 1.0
#: The affine stages run on grids of at least this voxel size (subject FA and template both
#: smoothed and resampled). Why: mutual information is evaluated on every voxel of the static
#: grid, so the finest level of a 2 mm scan costs (3/2)³ ≈ 3.4× a 3 mm one, and an affine (12
#: parameters over the whole brain) does not need 2 mm detail. On the shared 2 mm real scans
#: (elition, trio rep1/rep2) the transform moves by 0.6-1.0 mm on average over the brain (max
#: 1.8) against registering on the native grid, in 0.38-0.46 of the CPU time, and the FA /
#: template correlation rises (0.50-0.53 → 0.57-0.58: the smoothing helps mutual information).
AFFINE_VOXEL_MM = 3.0
#: Vertical offsets (MNI mm) the affine stage also starts from: the rigid result moved down and
#: up. A field of view that stops in the pons or the midbrain leaves nothing below to anchor the
#: vertical placement and scale, and from the rigid result alone the affine stage can settle
#: where the template is squeezed into the slab. On the Trio and Elition scans made 3 mm / b 2500
#: and cut at MNI z -30, -25, -21 or -15 (three noise draws each), the single start ended more
#: than 6 mm (median over the slab) from the whole scan's registration in 5 of 24 slabs, the
#: starts -10 and +10 alone in 1, these five in none (max 3.3 mm). The start that ends with the
#: best mutual information wins (:data:`AFFINE_START_MARGIN`); each start costs one affine stage
#: (about 1-2 s), so they run only on slabs (:data:`SLAB_BELOW_MNI_Z`). Those numbers are of the
#: 12-parameter stage; the slab stage is now a similarity (:data:`SLAB_STAGE`), from which another
#: start won on 5 of 48 slabs. The starts stay: they are what ``registration_ambiguous`` compares.
AFFINE_STARTS_MM = (-5.0, -10.0, -20.0, 5.0, 10.0)
#: What the affine stage fits on a slab: a similarity (rotation, translation, one scale; dipy's
#: RigidIsoScalingTransform3D) instead of the full 12-parameter affine. A slab has nothing below to
#: pin the template's height, and the affine's vertical scale and shears are free to squeeze the
#: template into it: the optima the starts above choose between. Tied to the in-plane scale, which
#: the slab does show, the vertical scale has no such freedom. Measured as the pipeline reads the
#: slabs (float32; benchmarks/slab_registration.py, benchmarks/RESULTS.md): the 12-parameter affine
#: with six starts left 2 of 24 Trio/Elition b 2500 slabs more than 5 mm from their whole scan's
#: registration (6.5, 6.9 mm) and all 8 Toshiba slabs 5.6-8.4 mm off; the similarity leaves none
#: of the 48 slabs more than 3.6 mm off (Trio 2.8-3.1, Elition 1.0-2.3, Toshiba 2.2-3.6). Rigid
#: plus per-axis scaling (9 parameters) left the vertical scale free and failed again (up to
#: 10 mm on Trio, 15.6 on Toshiba). ``"affine"`` restores the 12-parameter stage with the starts
#: (to compare).
SLAB_STAGE = "similarity"
#: ... after which the 12-parameter affine runs from the similarity's result, and is kept only
#: when it moves the brain (median) by at most this much: a head's own proportions (the tube
#: phantoms' brains are scaled by 0.92-1.08 per axis) need a few mm, the squeeze of a slab is
#: larger (refined without this limit, the Trio and Toshiba slabs went back to 5.6-12.6 mm off).
#: On tube phantoms cut at MNI z -21 the limit brings back part of what the similarity alone
#: lost (mean Dice of 16 sides: 12-parameter 0.643, similarity 0.620, with the refinement 0.630).
SLAB_REFINE_MAX_MM = 3.0
#: The extra starts run only when the image's brain ends above this MNI z (by the first start's
#: result): the slabs above, whose failures all started at z -25 or higher. Scans that reach the
#: lower pons or the medulla (every shared real scan, the tube and atlas phantoms) register as
#: before, at no extra cost; the five starts would cost a 2 mm session 5-7 CPU s (1.2-1.3x).
SLAB_BELOW_MNI_Z = -40.0
#: ... and only when it holds this much brain in z (by the same first result, which may have
#: squeezed it: a slab from z -15 to 50 measured 55 mm there). An image of a few centimetres (a
#: 2 cm phantom cube) is no head section that mutual information could place better from one
#: start than another.
SLAB_MIN_HEIGHT_MM = 40.0
#: How much better (dipy's negative Mattes MI, at the finest level) another start must end than
#: the rigid result's own for it to be taken. Converged starts of one optimum differ by < 0.001,
#: so on scans that register well the result stays that of the single start; the failures
#: above differ by 0.009-0.036.
AFFINE_START_MARGIN = 0.002


@dataclass
class Registration:
    """Result of :func:`register_template`.

    ``subject_to_mni``: 4x4 world transform, subject RAS+ mm → template (MNI) mm (the affine
    part; with SyN the nonlinear ``mapping`` refines it). ``quality``: Pearson correlation of
    the subject FA and the warped FA-like template inside the brain (1 is perfect; below
    ~0.5 deserves a look at the QC figure).
    """

    subject_to_mni: np.ndarray
    method: str = "affine"
    quality: float = float("nan")
    quality_metric: str = "pearson_r_fa_vs_warped_template"
    subject_shape: tuple = ()
    subject_affine: np.ndarray | None = None
    template_shape: tuple = ()
    template_affine: np.ndarray | None = None
    mapping: Any = None  # dipy DiffeomorphicMap for SyN
    info: dict = field(default_factory=dict)

    @property
    def mni_to_subject(self) -> np.ndarray:
        return np.linalg.inv(self.subject_to_mni)

    def _affine_map(self, fa_shape, fa_affine, tpl_shape, tpl_affine):
        from dipy.align.imaffine import AffineMap

        return AffineMap(
            self.subject_to_mni,
            domain_grid_shape=tuple(fa_shape[:3]), domain_grid2world=np.asarray(fa_affine, float),
            codomain_grid_shape=tuple(tpl_shape[:3]), codomain_grid2world=np.asarray(tpl_affine, float),
        )

    def warp_to_subject(self, image: np.ndarray, image_affine: np.ndarray, fa_img,
                        interpolation: str = "linear") -> np.ndarray:
        """Resample an MNI-space array (on grid ``image_affine``) onto the subject FA grid."""
        image = np.asarray(image)
        fa_shape, fa_affine = fa_img.shape[:3], np.asarray(fa_img.affine, float)
        if self.mapping is not None:
            return np.asarray(self.mapping.transform(
                image.astype(np.float32), interpolation=interpolation,
                image_world2grid=np.linalg.inv(image_affine),
                out_shape=fa_shape, out_grid2world=fa_affine,
            ))
        amap = self._affine_map(fa_shape, fa_affine, image.shape, image_affine)
        return np.asarray(amap.transform(image.astype(np.float32), interpolation=interpolation))

    def warp_rois(self, atlas, fa_img) -> dict[str, np.ndarray]:
        """The atlas ROIs on the subject grid (bool arrays, nearest neighbour)."""
        out = {}
        for name, roi in atlas.rois().items():
            w = self.warp_to_subject(roi.astype(np.float32), atlas.affine, fa_img, "nearest")
            out[name] = w > 0.5
        return out

    def warp_template(self, template_img, fa_img) -> np.ndarray:
        """The template resampled onto the subject grid (trilinear)."""
        return self.warp_to_subject(np.asarray(template_img.dataobj, np.float32),
                                    np.asarray(template_img.affine, float), fa_img)


# ---------------------------------------------------------------------------------------
def _as_image(img, what: str):
    if isinstance(img, (str, Path)):
        try:
            return nib.load(str(img))
        except Exception as exc:
            raise InputError(img, f"cannot read {what}: {exc}") from exc
    return img


def _template_from(template) -> nib.Nifti1Image:
    if hasattr(template, "registration_template"):
        return template.registration_template
    return _as_image(template, "template")


def _downsample_template(data: np.ndarray, affine: np.ndarray, voxel_mm: float):
    """Smooth and resample ``data`` to isotropic ``voxel_mm`` (keeps the field of view)."""
    from scipy import ndimage

    vox = voxel_sizes(np.asarray(affine, float))
    factor = voxel_mm / vox
    if np.all(factor <= 1.05):
        return data.astype(np.float32), np.asarray(affine, float)
    sigma = np.sqrt(np.maximum(factor ** 2 - 1.0, 0.0)) / 2.355 * 2.0  # FWHM ≈ new voxel
    smooth = ndimage.gaussian_filter(data.astype(np.float32), sigma)
    new_shape = np.maximum(np.round(np.array(data.shape[:3]) / factor).astype(int), 1)
    scale = np.diag(list(factor) + [1.0])
    new_affine = np.asarray(affine, float) @ scale
    out = ndimage.affine_transform(smooth, factor, output_shape=tuple(new_shape), order=1,
                                   mode="constant", cval=0.0)
    return out.astype(np.float32), new_affine


def _clean_fa(fa_img) -> tuple[np.ndarray, np.ndarray]:
    fa = np.asarray(fa_img.dataobj, dtype=np.float32)
    if fa.ndim == 4 and fa.shape[3] == 1:
        fa = fa[..., 0]
    if fa.ndim != 3:
        raise InputError(None, f"FA map must be 3-D, has shape {fa.shape}")
    fa = np.clip(np.nan_to_num(fa, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)
    if not fa.any():
        raise InputError(None, "FA map is all zero: nothing to register")
    return fa, np.asarray(fa_img.affine, float)


def crop_to_content(data: np.ndarray, affine: np.ndarray, margin: int = 4,
                    content: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``data`` cut to the bounding box of its non-zero voxels (or of ``content``, a boolean
    mask of the same grid) plus ``margin`` voxels, with the affine of the cut grid.

    Why: mutual information is evaluated on every voxel of the static grid; the empty field
    of view around the brain only adds zeros to the joint histogram's background bin. On the
    2 mm sample the cut grid has ~60 % of the voxels and registration takes ~35 % less time.
    The result is a world-space transform, so the cut changes no coordinate.
    """
    nz = np.argwhere(data != 0 if content is None else content)
    if not nz.size:
        return data, affine
    lo = np.maximum(nz.min(axis=0) - margin, 0)
    hi = np.minimum(nz.max(axis=0) + margin + 1, data.shape[:3])
    shift = np.eye(4)
    shift[:3, 3] = lo
    return (np.ascontiguousarray(data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]),
            np.asarray(affine, float) @ shift)


def _content_world(content: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World mm (N x 3) of the non-zero voxels of ``content``, a grid with ``affine``."""
    affine = np.asarray(affine, float)
    return np.argwhere(content > 0) @ affine[:3, :3].T + affine[:3, 3]


def is_slab(content: np.ndarray, affine: np.ndarray, subject_to_mni: np.ndarray) -> bool:
    """Whether the non-zero voxels of ``content`` (a subject grid), through ``subject_to_mni``,
    are a head slab that stops above the lower pons: lowest MNI z above :data:`SLAB_BELOW_MNI_Z`,
    and at least :data:`SLAB_MIN_HEIGHT_MM` of it in z."""
    world = _content_world(content, affine)
    if not world.size:
        return False
    to_mni = np.asarray(subject_to_mni, float)
    z = world @ to_mni[2, :3] + to_mni[2, 3]
    return bool(z.min() > SLAB_BELOW_MNI_Z and z.max() - z.min() >= SLAB_MIN_HEIGHT_MM)


def affine_distance_mm(content: np.ndarray, affine: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Median distance (MNI mm) between where two subject→MNI transforms put the non-zero voxels
    of ``content`` (a subject grid with ``affine``): how far apart two registrations place the
    brain, in the units a reader of the tract's levels cares about."""
    world = _content_world(content, affine)
    if not world.size:
        return 0.0
    d = np.asarray(a, float) - np.asarray(b, float)
    return round(float(np.median(np.linalg.norm(world @ d[:3, :3].T + d[:3, 3], axis=1))), 2)


def registration_quality(fa: np.ndarray, warped: np.ndarray) -> float:
    """Pearson r of FA and the warped FA-like template inside either's brain region."""
    m = (fa > 0.02) | (warped > 0.02 * max(float(warped.max()), 1e-6))
    if m.sum() < 10:
        return float("nan")
    a, b = fa[m].astype(np.float64), warped[m].astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def register_template(fa_img, template_img, options: Mapping[str, Any] | None = None) -> Registration:
    """Register the template (moving) to the subject FA (static); return the transform.

    ``template_img``: a nibabel image in MNI space, or an :class:`~cstbatch.steps.atlas.Atlas`
    (its FA-like ``registration_template`` is used). ``options["registration_method"]``:
    ``"affine"`` (default) or ``"syn"``.
    """
    from dipy.align.imaffine import (
        AffineRegistration,
        MutualInformationMetric,
        transform_centers_of_mass,
    )
    from dipy.align.transforms import AffineTransform3D, RigidIsoScalingTransform3D, RigidTransform3D

    options = dict(options or {})
    from cstbatch.study.options import option_value, require_choice

    method = require_choice("registration_method",
                            str(option_value(options, "registration_method", null_is_default=True)).lower())
    fa_img = _as_image(fa_img, "FA map")
    template = _template_from(template_img)
    fa, fa_affine = _clean_fa(fa_img)
    tpl_full = np.nan_to_num(np.asarray(template.dataobj, dtype=np.float32))
    if tpl_full.ndim == 4 and tpl_full.shape[3] == 1:
        tpl_full = tpl_full[..., 0]
    voxel_mm = max(float(np.min(voxel_sizes(np.asarray(fa_affine, float)))), MIN_TEMPLATE_VOXEL_MM, AFFINE_VOXEL_MM)
    tpl, tpl_affine = _downsample_template(tpl_full, np.asarray(template.affine, float), voxel_mm)
    # the affine stages run on the FA smoothed to the same grid size (see AFFINE_VOXEL_MM)
    fa_reg, fa_reg_affine = _downsample_template(fa, fa_affine, voxel_mm)

    forced = options.get("_registration_level_iters")  # tests: one budget for every stage
    level_iters = {"rigid": list(forced or RIGID_LEVEL_ITERS), "affine": list(forced or AFFINE_LEVEL_ITERS)}
    static, static_affine = crop_to_content(fa_reg, fa_reg_affine)
    com = transform_centers_of_mass(static, static_affine, tpl, tpl_affine)
    current = com.affine
    stages = {"center_of_mass": current.copy()}

    def optimise(name, transform, start):
        affreg = AffineRegistration(metric=MutualInformationMetric(nbins=32, sampling_proportion=None),
                                    level_iters=level_iters[name], sigmas=list(AFFINE_SIGMAS),
                                    factors=list(AFFINE_FACTORS), verbosity=0)
        amap, _, value = affreg.optimize(static, tpl, transform, None, static_grid2world=static_affine,
                                         moving_grid2world=tpl_affine, starting_affine=start, ret_metric=True)
        return amap.affine, float(value)

    def from_rigid(transform, dz):
        """The affine-type stage ``transform`` from the rigid result moved ``dz`` mm in z."""
        shifted = np.eye(4)
        shifted[2, 3] = dz
        return optimise("affine", transform(), shifted @ stages["rigid"])

    current, _ = optimise("rigid", RigidTransform3D(), current)
    stages["rigid"] = current.copy()
    current, best = from_rigid(AffineTransform3D, 0.0)
    start_mm, ends, stage, refine_mm = 0.0, [(0.0, -best, current)], "affine", None
    if is_slab(static, static_affine, current):
        # a slab: a similarity from the rigid result and from it moved up and down (SLAB_STAGE)
        stage, stages["affine_12dof"] = SLAB_STAGE, current.copy()
        transform = AffineTransform3D if SLAB_STAGE == "affine" else RigidIsoScalingTransform3D
        if SLAB_STAGE != "affine":  # the 12-parameter stage from the rigid result has just run
            current, best = from_rigid(transform, 0.0)
            ends = [(0.0, -best, current)]
        for dz in AFFINE_STARTS_MM:
            candidate, value = from_rigid(transform, dz)
            ends.append((dz, -value, candidate))
            if value < best - AFFINE_START_MARGIN:
                current, best, start_mm = candidate, value, dz
        if SLAB_STAGE == "similarity" and SLAB_REFINE_MAX_MM > 0:
            stages["similarity"] = current.copy()
            refined, _ = optimise("affine", AffineTransform3D(), current)
            refine_mm = affine_distance_mm(static, static_affine, refined, current)
            if refine_mm <= SLAB_REFINE_MAX_MM:
                current = refined
    stages["affine"] = current.copy()
    taken = stages.get("similarity", current)  # the starts are compared before any refinement
    ends = [[dz, mi, affine_distance_mm(static, static_affine, end, taken)] for dz, mi, end in ends]

    reg = Registration(
        subject_to_mni=np.asarray(current, float),
        method="affine",
        subject_shape=tuple(int(s) for s in fa.shape),
        subject_affine=fa_affine,
        template_shape=tuple(int(s) for s in template.shape[:3]),
        template_affine=np.asarray(template.affine, float),
    )
    if method == "syn":
        from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
        from dipy.align.metrics import CCMetric

        sdr = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=list(SYN_LEVEL_ITERS))
        # normalise contrast so CC sees comparable images
        reg.mapping = sdr.optimize(fa, tpl, static_grid2world=fa_affine,
                                   moving_grid2world=tpl_affine, prealign=reg.subject_to_mni)
        reg.method = "syn"
    warped = reg.warp_to_subject(tpl, tpl_affine, fa_img)
    reg.quality = registration_quality(fa, warped)
    reg.info = {"template_voxel_mm": voxel_mm, "level_iters": level_iters, "affine_stage": stage,
                "slab_refine_mm": refine_mm,
                "affine_start_mm": start_mm,
                "affine_start_mi": ends,
                "stages": {k: np.asarray(v).tolist() for k, v in stages.items()}}
    return reg


# ---------------------------------------------------------------------------------------
def streamlines_to_mni(streamlines_ras, reg: Registration) -> list[np.ndarray]:
    """Map subject RAS+ mm streamlines to MNI mm (same order, same point counts; float32).

    Works through the tractogram in chunks of about a million points, so a whole-brain
    tractogram costs one float32 copy, not several float64 ones.
    """
    out: list[np.ndarray] = []
    chunk: list[np.ndarray] = []
    n_chunk = 0
    for s in streamlines_ras:
        s = np.asarray(s).reshape(-1, 3)
        chunk.append(s)
        n_chunk += len(s)
        if n_chunk >= 1_000_000:
            out.extend(_chunk_to_mni(chunk, reg))
            chunk, n_chunk = [], 0
    if chunk:
        out.extend(_chunk_to_mni(chunk, reg))
    return out


def _chunk_to_mni(chunk: list[np.ndarray], reg: Registration) -> list[np.ndarray]:
    lengths = np.array([len(s) for s in chunk])
    pts = np.concatenate(chunk, axis=0).astype(np.float64)
    if reg.mapping is not None:
        res = np.asarray(reg.mapping.transform_points(pts))
    else:
        a = np.asarray(reg.subject_to_mni, float)
        res = pts @ a[:3, :3].T + a[:3, 3]
    return np.split(res.astype(np.float32), np.cumsum(lengths)[:-1])


def points_to_mni(points: np.ndarray, reg: Registration) -> np.ndarray:
    """Map an (n, 3) array of subject RAS+ mm points to MNI mm."""
    return streamlines_to_mni([np.asarray(points)], reg)[0].astype(np.float64)


# ---------------------------------------------------------------------------------------
#: ITK (and ANTs, SimpleITK, nitransforms reading ITK files) works in LPS+ physical coordinates,
#: nibabel and dipy in RAS+: an affine changes convention by flipping x and y on both sides.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ITK_AFFINE_TYPES = ("AffineTransform_double_3_3", "AffineTransform_float_3_3",
                     "MatrixOffsetTransformBase_double_3_3", "MatrixOffsetTransformBase_float_3_3")


def save_itk_affine(subject_to_template: np.ndarray, path) -> Path:
    """Write a subject RAS+ mm → template mm affine as an ITK text transform, atomically.

    ITK's resampling convention maps each point of the output grid to the input image, so this
    transform resamples template images onto the subject grid: in NiPreps' naming it goes
    ``from-<template>_to-dwi``. Written here rather than by nitransforms, whose writer stores
    6 significant digits (``AffineTransform_float_3_3``): cstbatch reads the file back for the
    later steps, so the 17 digits of a double are kept and the round trip is exact.
    """
    m = _RAS_TO_LPS @ np.asarray(subject_to_template, float) @ _RAS_TO_LPS
    values = [*m[:3, :3].ravel(), *m[:3, 3]]
    text = ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
            f"Parameters: {' '.join(format(float(v) + 0.0, '.17g') for v in values)}\n"
            "FixedParameters: 0 0 0\n")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def load_itk_affine(path) -> np.ndarray:
    """The RAS+ 4x4 affine of an ITK text affine transform (any centre), e.g. one from ANTs."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "transform file not found")
    fields = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.split()
    kind = (fields.get("Transform") or ["?"])[0]
    if kind not in _ITK_AFFINE_TYPES:
        raise InputError(path, f"not a 3-D ITK affine transform (Transform: {kind})")
    try:
        params = np.array(fields["Parameters"], float)
        centre = np.array(fields.get("FixedParameters", ["0", "0", "0"]), float)
    except (KeyError, ValueError) as exc:
        raise InputError(path, f"cannot read the transform's parameters: {exc}") from exc
    if params.size != 12 or centre.size != 3:
        raise InputError(path, f"expected 12 parameters and a 3-D centre, got {params.size} and {centre.size}")
    m = np.eye(4)
    m[:3, :3] = params[:9].reshape(3, 3)
    # ITK: y = A (x - c) + t + c
    m[:3, 3] = params[9:] + centre - m[:3, :3] @ centre
    return _RAS_TO_LPS @ m @ _RAS_TO_LPS


# ---------------------------------------------------------------------------------------
def save_registration(reg: Registration, path) -> Path:
    """Write ``reg`` to ``path`` (.npz; the SyN fields included), atomically.

    cstbatch's own format, kept for SyN registrations: their displacement fields are dipy's
    and have no ITK file here. The affine part is also in the ITK file (:func:`save_itk_affine`).
    """
    path = Path(path)
    meta = {
        "method": reg.method, "quality": None if not np.isfinite(reg.quality) else float(reg.quality),
        "quality_metric": reg.quality_metric, "subject_shape": list(reg.subject_shape),
        "template_shape": list(reg.template_shape), "info": reg.info, "format": "cstbatch-registration-1",
    }
    arrays = {
        "subject_to_mni": np.asarray(reg.subject_to_mni, float),
        "subject_affine": np.asarray(reg.subject_affine if reg.subject_affine is not None else np.eye(4)),
        "template_affine": np.asarray(reg.template_affine if reg.template_affine is not None else np.eye(4)),
        "meta": np.array(json.dumps(meta)),
    }
    m = reg.mapping
    if m is not None:
        arrays.update({
            "syn_forward": np.asarray(m.forward, np.float32), "syn_backward": np.asarray(m.backward, np.float32),
            "syn_disp_shape": np.asarray(m.disp_shape), "syn_disp_grid2world": np.asarray(m.disp_grid2world),
            "syn_domain_shape": np.asarray(m.domain_shape), "syn_domain_grid2world": np.asarray(m.domain_grid2world),
            "syn_codomain_shape": np.asarray(m.codomain_shape),
            "syn_codomain_grid2world": np.asarray(m.codomain_grid2world),
            "syn_prealign": np.asarray(m.prealign),
            # dipy's SyN returns the map with is_inverse=True: keep it, or points go backwards
            "syn_is_inverse": np.asarray(bool(m.is_inverse)),
        })

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def load_registration(path) -> Registration:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "registration file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception as exc:
        raise InputError(path, f"cannot read registration: {exc}") from exc
    meta = json.loads(str(d["meta"]))
    q = meta.get("quality")
    reg = Registration(
        subject_to_mni=d["subject_to_mni"], method=meta["method"],
        quality=float("nan") if q is None else float(q), quality_metric=meta.get("quality_metric", ""),
        subject_shape=tuple(meta.get("subject_shape", ())), subject_affine=d["subject_affine"],
        template_shape=tuple(meta.get("template_shape", ())), template_affine=d["template_affine"],
        info=meta.get("info", {}),
    )
    if "syn_forward" in d:
        from dipy.align.imwarp import DiffeomorphicMap

        m = DiffeomorphicMap(
            3, d["syn_disp_shape"], disp_grid2world=d["syn_disp_grid2world"],
            domain_shape=d["syn_domain_shape"], domain_grid2world=d["syn_domain_grid2world"],
            codomain_shape=d["syn_codomain_shape"], codomain_grid2world=d["syn_codomain_grid2world"],
            prealign=d["syn_prealign"],
        )
        m.forward = d["syn_forward"].astype(np.float32)
        m.backward = d["syn_backward"].astype(np.float32)
        m.is_inverse = bool(d["syn_is_inverse"]) if "syn_is_inverse" in d else False
        reg.mapping = m
    return reg


# ---------------------------------------------------------------------------------------
def qc_figure(fa_img, warped_template, path, rois: Mapping[str, np.ndarray] | None = None,
              title: str | None = None) -> Path:
    """PNG: subject FA with the warped template's outline (and ROIs) on 3 axial + 2 other slices.

    ``warped_template``: array on the subject grid (or a nibabel image). ``rois``: optional
    subject-grid bool masks (brainstem, motor_left, motor_right) drawn as coloured contours.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fa, _ = _clean_fa(_as_image(fa_img, "FA map"))
    tpl = np.asarray(getattr(warped_template, "dataobj", warped_template), np.float32)
    if tpl.shape != fa.shape:
        raise InputError(None, f"warped template shape {tpl.shape} differs from FA {fa.shape}")
    tmax = float(tpl.max()) or 1.0
    levels = [0.08 * tmax, 0.5 * tmax]  # brain outline, white-matter boundary
    nz = np.argwhere(fa > 0.05)
    lo, hi = (nz.min(0), nz.max(0)) if len(nz) else (np.zeros(3, int), np.array(fa.shape) - 1)
    zs = np.linspace(lo[2], hi[2], 5)[1:4].astype(int)
    views = [("axial", 2, int(z)) for z in zs] + [("coronal", 1, int((lo[1] + hi[1]) // 2)),
                                                  ("sagittal", 0, int((lo[0] + hi[0]) // 2))]
    colors = {"brainstem": "yellow", "motor_left": "cyan", "motor_right": "magenta"}
    fig, axes = plt.subplots(1, len(views), figsize=(3.2 * len(views), 3.6))
    for ax, (label, axis, idx) in zip(axes, views):
        sl = [slice(None)] * 3
        sl[axis] = idx
        sl = tuple(sl)
        ax.imshow(fa[sl].T, origin="lower", cmap="gray", vmin=0, vmax=0.8)
        t = tpl[sl].T
        if t.max() > levels[0]:
            ax.contour(t, levels=levels, colors=["red", "orange"], linewidths=0.7)
        for name, mask in (rois or {}).items():
            m = np.asarray(mask)[sl].T.astype(float)
            if m.any():
                ax.contour(m, levels=[0.5], colors=[colors.get(name, "lime")], linewidths=0.8)
        ax.set_title(f"{label} {idx}", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
    finally:
        plt.close(fig)
    return path
