"""Same head, other acquisition grids: does the CST stay where it is when only the grid changes?

    python benchmarks/real_grids.py OUT [--real ../shared/real-dwi] [--scan elition] [--scan trio/rep1]
                                        [--grids yaw12,sagittal,...] [-n 2] [--option NAME=VALUE ...]

Issue 14 judges "Dice between acquisitions of the same head" on held-back scans (slice
orientations and angulations). Without such acquisitions here, each shared real scan is
resampled (trilinear, per volume) onto grids a scanner could have used for the same head: half
a voxel shifted, turned 12° about the vertical axis, tilted ±15–20° about the left-right axis,
rolled 10° about the front-back axis; and stored without interpolation as a sagittal or coronal
acquisition would be (the voxel axes in another order, one reversed), or with slices twice as
thick (pairs of slices averaged: 2 × 2 × 4 mm voxels). The b-vectors are rotated with the grid
(they are defined on the voxel axes), the head does not move, so every grid's CST should land
on the same world positions. The whole pipeline runs on all of them (``OUT/bids`` → ``OUT/derivatives``), and this
prints, per side, the Dice of the 2 mm world cells each CST visits: every grid against the
original scan, and every grid against the half-voxel shift (both resampled once, so the same
interpolation smoothing; the original has none, which by itself raises the streamline count).

``--grids`` also takes the clinical acquisitions of :data:`CLINICAL` (3 mm, b 2000-2500, thick
slices, fields of view that start in the pons or reach down the neck), not run by default: the
kinds of scan that once ended with no CST, or with a slab registered 9 mm off.

What it does not cover: a real second acquisition also has new noise, and different slices cut
off different parts of the brain; the Trio test-retest pair (``real_scans.py --pair``) covers the
noise. Its EPI distortion differs too, when its phase encoding runs along another axis or the
other way: ``--grids distAP,distPA,distLR,distSI`` (:func:`distort`) models that difference.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: grid name -> (rotation axis, degrees); "shift" moves the grid by half a voxel on every axis;
#: "perm" stores the same voxels in another axis order (slices along another axis, one axis
#: reversed: a sagittal or coronal acquisition's storage, no interpolation); "thick" averages
#: pairs of slices (the slice thickness doubled, anisotropic voxels). Two more change the
#: acquisition rather than the grid: "noise2" doubles the noise (:func:`add_noise`), "dirs12"
#: keeps the b0s and the first 12 diffusion directions (the fewest of the held-back scans), and
#: "b2500" makes the diffusion volumes what a b 2500 acquisition would give (:func:`higher_b`)
GRIDS = {"shift": ("shift", 0.0), "yaw12": ("z", 12.0), "pitch15": ("x", 15.0),
         "pitchm20": ("x", -20.0), "roll10": ("y", 10.0), "pitch30": ("x", 30.0), "roll20": ("y", 20.0),
         "sagittal": ("perm", (1, 2, 0)), "coronal": ("perm", (0, 2, 1)), "thick": ("thick", 2),
         "noise2": ("noise", 2.0), "dirs12": ("dirs", 12), "b2500": ("bvalue", 2500.0)}

#: Clinical acquisitions of the kind that ended with no CST in the issue's held-back scans, each a
#: chain of the changes above plus two more: "voxel" resamples onto isotropic voxels of that size
#: (the old voxels averaged, as a coarser acquisition would), "cut" removes the slices whose centre
#: lies below that MNI z (a field of view that stops in the pons: -30, the upper pons: -21);
#: "slices" (in-plane mm, slice thickness, slice spacing) makes a 2-D acquisition with gaps between
#: thick slices (:func:`slices`; "gap52oblique" follows a Siemens clinical protocol: 4 mm slices every
#: 5.2 mm, turned Tra>Cor(-29)>Sag(20)); "neck" adds that many mm of neck below the image
#: (:func:`extend_below`: for a scan that reaches the cervical cord, the Elition) and "width" keeps
#: the slices within that many mm across of the midline (:func:`narrower`). "sagneck" follows a
#: Siemens sagittal QA protocol (48 sagittal slices of 2.7 mm, a 22 cm field of view from above
#: the vertex down the neck, the head turned a little about the vertical). "distort" (MNI axis,
#: mm) adds the susceptibility distortion of an EPI read out with its phase encoding along the
#: voxel axis nearest that MNI axis (:func:`distort`): "distAP" and "distPA" are the two
#: polarities along the front-back axis, "distLR" and "distSI" read-outs with phase encoding
#: left-right and head-foot, as other slice orientations (coronal, sagittal) can have. Not in
#: the default run; name them with ``--grids``.
CLINICAL = {"p3b2000pons": [("voxel", 3.0), ("bvalue", 2000.0), ("cut", -30.0)],
            "p3b2500": [("voxel", 3.0), ("bvalue", 2500.0)],
            "p3b2500upperpons": [("voxel", 3.0), ("bvalue", 2500.0), ("cut", -21.0)],
            "p3dirs12pitch15pons": [("x", 15.0), ("voxel", 3.0), ("dirs", 12), ("cut", -30.0)],
            "thickupperpons": [("thick", 2), ("cut", -21.0)],
            "p3pitch15upperpons": [("x", 15.0), ("voxel", 3.0), ("cut", -21.0)],
            "p3b1000upperpons": [("voxel", 3.0), ("bvalue", 1000.0), ("cut", -21.0)],
            "gap52oblique": [("x", -29.0), ("y", 20.0), ("slices", (1.8, 4.0, 5.2))],
            "neck56": [("neck", 56.0)],
            "sagneck": [("neck", 56.0), ("z", 8.0), ("voxel", 2.7), ("width", 64.8), ("perm", (1, 2, 0))],
            "corneck": [("neck", 56.0), ("x", -10.0), ("voxel", 2.5), ("perm", (0, 2, 1))],
            "sag36": [("voxel", 2.7), ("width", 48.6), ("perm", (1, 2, 0))],
            "distAP": [("distort", (1, 20.0))],
            "distPA": [("distort", (1, -20.0))],
            "distLR": [("distort", (0, 20.0))],
            "distSI": [("distort", (2, 20.0))]}


def rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def regrid(affine: np.ndarray, shape, axis: str, degrees: float) -> tuple[np.ndarray, tuple]:
    """(new affine, new shape): the grid turned about the field of view's centre, large enough
    to hold the whole original field of view; or shifted by half a voxel."""
    shape = np.asarray(shape[:3])
    if axis == "shift":
        new = affine.copy()
        new[:3, 3] += affine[:3, :3] @ np.full(3, 0.5)
        return new, tuple(int(v) for v in shape - 1)
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], float)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    centre = world.mean(axis=0)
    lin = rotation(axis, degrees) @ affine[:3, :3]
    ijk = np.linalg.solve(lin, (world - centre).T).T
    lo, hi = np.floor(ijk.min(axis=0)), np.ceil(ijk.max(axis=0))
    new = np.eye(4)
    new[:3, :3] = lin
    new[:3, 3] = centre + lin @ lo
    return new, tuple(int(v) for v in hi - lo + 1)


def reorder(data: np.ndarray, affine: np.ndarray, order) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels with the voxel axes taken in ``order`` and the new last axis reversed:
    (data, affine) of an image whose slices run along another axis of the head."""
    order = tuple(int(v) for v in order)
    out = np.flip(np.transpose(data, order + (3,)), axis=2)
    perm = np.zeros((4, 4))
    for new_axis, old_axis in enumerate(order):
        perm[old_axis, new_axis] = 1.0
    perm[3, 3] = 1.0
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, out.shape[2] - 1
    return np.ascontiguousarray(out), affine @ perm @ flip


def thicken(data: np.ndarray, affine: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices averaged in groups of ``factor`` along the third voxel axis (thicker slices)."""
    n = data.shape[2] // factor
    out = data[:, :, : n * factor].reshape(data.shape[:2] + (n, factor) + data.shape[3:]).mean(axis=3)
    new = affine.copy()
    new[:3, 2] *= factor
    new[:3, 3] += affine[:3, 2] * (factor - 1) / 2.0
    return out, new


def add_noise(data: np.ndarray, factor: float, seed: int = 0) -> np.ndarray:
    """The scan with its noise ``factor`` times as large: complex Gaussian noise of
    σ0·sqrt(factor² − 1) added to the magnitude (so it stays Rician), where σ0 is the scan's own
    noise (dipy's ``estimate_sigma`` over the volumes, median). A second, noisier acquisition of
    the same head: lower SNR is what the held-back 3 mm b 2000–2500 scans have."""
    return _rician(data, _scan_sigma(data) * np.sqrt(factor ** 2 - 1.0), np.random.default_rng(seed))


def _scan_sigma(data: np.ndarray) -> float:
    """The scan's own noise σ: dipy's ``estimate_sigma`` over the volumes, median."""
    from dipy.denoise.noise_estimate import estimate_sigma

    return float(np.median(estimate_sigma(data, N=0)))


def _rician(signal: np.ndarray, sigma: float, rng) -> np.ndarray:
    """``signal`` with complex Gaussian noise of ``sigma`` added to its magnitude (Rician)."""
    return np.sqrt((signal + rng.normal(0.0, sigma, signal.shape)) ** 2 + rng.normal(0.0, sigma, signal.shape) ** 2)


def higher_b(data: np.ndarray, bvals: np.ndarray, b_new: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(the scan's diffusion volumes as a b ``b_new`` acquisition would give them, the new b-values):
    each voxel's attenuation S/S0 raised to the power b_new / b (one exponential per direction,
    which ignores the kurtosis that makes real tissue decay more slowly), then Rician noise of
    the scan's own σ (dipy's ``estimate_sigma``) added, so the b0 SNR stays and the diffusion
    volumes sink towards the noise floor as at a higher b. Some held-back scans are 3 mm at
    b 2500, and a session at b 2500 once ended with no CST at all."""
    from cstbatch.steps.gradients import B0_THRESHOLD

    dw = bvals > B0_THRESHOLD
    b0 = data[..., ~dw].mean(axis=-1)
    sigma = _scan_sigma(data)
    rng = np.random.default_rng(seed)
    out = np.array(data, np.float64)
    for k in np.flatnonzero(dw):
        att = np.clip(data[..., k] / np.maximum(b0, 1e-6), 1e-4, 1.0)
        out[..., k] = _rician(b0 * att ** (b_new / bvals[k]), sigma, rng)
    return out, np.where(dw, b_new, bvals)


def resample(data: np.ndarray, affine: np.ndarray, new_aff: np.ndarray, new_shape,
             sigma_vox=None) -> np.ndarray:
    """Every volume of ``data`` sampled (trilinear) on the grid ``new_aff``/``new_shape``, after a
    Gaussian of ``sigma_vox`` (old voxels, per axis) when the new voxels are larger."""
    from scipy import ndimage

    to_old = np.linalg.solve(affine, new_aff)
    grid_ijk = np.indices(new_shape, dtype=np.float32).reshape(3, -1)
    coords = to_old[:3, :3] @ grid_ijk + to_old[:3, 3:4]
    vols = []
    for v in range(data.shape[3]):
        vol = data[..., v] if sigma_vox is None else ndimage.gaussian_filter(data[..., v], sigma_vox)
        vols.append(ndimage.map_coordinates(vol, coords, order=1).reshape(new_shape))
    return np.stack(vols, axis=-1)


def coarser(data: np.ndarray, affine: np.ndarray, voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The scan on isotropic voxels of ``voxel_mm`` over the same field of view, the same axes
    (:func:`slices` with cubic voxels)."""
    return slices(data, affine, voxel_mm, voxel_mm, voxel_mm)


def slices(data: np.ndarray, affine: np.ndarray, inplane_mm: float, thickness_mm: float,
           spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The scan as a 2-D acquisition along the third voxel axis would give it, over the same field
    of view: voxels ``inplane_mm`` square, slices ``thickness_mm`` thick every ``spacing_mm`` (a
    gap between slices when the spacing is larger; nothing there is sampled). Each new voxel is
    about the average of the old ones it covers: a Gaussian of FWHM sqrt(new² − old²) per axis
    first, the width that turns an old voxel's box into a new one's, with the slice thickness as
    the new size through the slices."""
    old = np.linalg.norm(affine[:3, :3], axis=0)
    size = np.array([inplane_mm, inplane_mm, spacing_mm], float)
    new_aff = affine.copy()
    new_aff[:3, :3] = affine[:3, :3] / old * size
    new_shape = tuple(int(n) for n in np.floor((np.asarray(data.shape[:3]) - 1) * old / size) + 1)
    width = np.array([inplane_mm, inplane_mm, thickness_mm], float)
    fwhm = np.sqrt(np.clip(width ** 2 - old ** 2, 0.0, None))
    return resample(data, affine, new_aff, new_shape, fwhm / 2.3548 / old), new_aff


def _slices_where(shape, affine: np.ndarray, to_mni: np.ndarray, mni_axis: int, keep_mm):
    """(index of the voxel grid, its affine): the run of slices, along the voxel axis nearest MNI
    axis ``mni_axis``, whose centre's MNI coordinate on that axis passes ``keep_mm`` (an array ->
    bool array function)."""
    axis, _ = _axis_nearest(affine, to_mni, mni_axis)
    vox2mni = np.asarray(to_mni, float) @ np.asarray(affine, float)
    ijk = np.tile((np.asarray(shape[:3], float) - 1) / 2.0, (shape[axis], 1))
    ijk[:, axis] = np.arange(shape[axis])
    keep = np.flatnonzero(keep_mm(ijk @ vox2mni[mni_axis, :3] + vox2mni[mni_axis, 3]))
    lo, hi = int(keep.min()), int(keep.max()) + 1
    new_aff = np.array(affine, float)
    new_aff[:3, 3] += new_aff[:3, axis] * lo
    return tuple(slice(lo, hi) if k == axis else slice(None) for k in range(3)), new_aff


def slab_above(shape, affine: np.ndarray, to_mni: np.ndarray, z_mni: float):
    """(index of the voxel grid, its affine): the slices, along the voxel axis nearest MNI z, whose
    centre lies at or above MNI z ``z_mni``; ``to_mni`` maps world mm to MNI mm. The field of view
    of a scan that stops in the pons (here and ``anatomy_sweep.py --fov-bottom-z``)."""
    return _slices_where(shape, affine, to_mni, 2, lambda z: z >= z_mni)


def cut_below(data: np.ndarray, affine: np.ndarray, z_mni: float, to_mni: np.ndarray):
    """``data`` and its affine without the slices below MNI z ``z_mni`` (:func:`slab_above`)."""
    index, new_aff = slab_above(data.shape, affine, to_mni, z_mni)
    return np.ascontiguousarray(data[index]), new_aff


def _axis_nearest(affine: np.ndarray, to_mni: np.ndarray, mni_axis: int) -> tuple[int, float]:
    """(the voxel axis nearest MNI axis ``mni_axis``, the MNI mm one step along it moves on that
    MNI axis: its sign says which end of the grid is the low one)."""
    vox2mni = np.asarray(to_mni, float) @ np.asarray(affine, float)
    axis = int(np.argmax(np.abs(vox2mni[mni_axis, :3])))
    return axis, float(vox2mni[mni_axis, axis])


def extend_below(data: np.ndarray, affine: np.ndarray, mm: float, to_mni: np.ndarray, seed: int = 0):
    """(data, affine) with ``mm`` more field of view below the image, along the voxel axis nearest
    MNI z: a sagittal or coronal acquisition's field of view (22 cm, say) holds the neck.
    The new slices continue the tissue of the image's lowest 8 mm (the upper cervical cord, its
    CSF, the neck muscles, all with their real diffusion signal): their average, its noise floor
    taken off (Rician: E[M²] = A² + 2σ²), then Rician noise of the scan's own σ. A straight cord
    and uniform muscles below the real ones, as bright as the image's lowest slices (a head-neck
    coil's sensitivity): the registration and mask see a neck of the right size and contrast."""
    axis, step = _axis_nearest(affine, to_mni, 2)
    vox = float(np.linalg.norm(np.asarray(affine, float)[:3, axis]))
    n, k = int(round(mm / vox)), max(1, int(round(8.0 / vox)))
    low_end = 0 if step > 0 else data.shape[axis] - 1
    edge = np.take(data, range(k) if low_end == 0 else range(data.shape[axis] - k, data.shape[axis]), axis=axis)
    sigma = _scan_sigma(data)
    mean = edge.astype(np.float64).mean(axis=axis)
    signal = np.sqrt(np.clip(mean ** 2 - 2.0 * sigma ** 2, 0.0, None))
    rng = np.random.default_rng(seed)
    new = np.stack([_rician(signal, sigma, rng) for _ in range(n)], axis=axis)
    new_aff = np.array(affine, float)
    if low_end == 0:
        new = np.flip(new, axis=axis)
        new_aff[:3, 3] -= new_aff[:3, axis] * n
        out = np.concatenate([new, data], axis=axis)
    else:
        out = np.concatenate([data, new], axis=axis)
    return np.ascontiguousarray(out.astype(np.float32)), new_aff


def narrower(data: np.ndarray, affine: np.ndarray, half_mm: float, to_mni: np.ndarray):
    """(data, affine) keeping only the slices, along the voxel axis nearest MNI x, whose centre
    lies within ``half_mm`` (scanner mm) of MNI x 0, the head's midline: a sagittal acquisition
    of 48 slices of 2.7 mm spans ±64.8 mm, less than a head is wide."""
    axis, step = _axis_nearest(affine, to_mni, 0)
    world_per_mni = float(np.linalg.norm(np.asarray(affine, float)[:3, axis])) / abs(step)
    index, new_aff = _slices_where(data.shape, affine, to_mni, 0, lambda x: np.abs(x) * world_per_mni <= half_mm)
    return np.ascontiguousarray(data[index]), new_aff


#: Where the head's air spaces lie (MNI mm) and how strongly each bends the field, relative: the
#: sphenoid sinus, the frontal sinus and orbits, the two mastoid and petrous air cells.
AIR_MNI = ((0.0, 10.0, -25.0, 1.0), (0.0, 45.0, -15.0, 1.0), (-45.0, -30.0, -35.0, 0.8), (45.0, -30.0, -35.0, 0.8))
#: distance (mm) at which an air space's effect has fallen to half (it falls off as 1 / r³ beyond)
AIR_REACH_MM = 15.0


def air_field(mni: np.ndarray) -> np.ndarray:
    """Relative off-resonance at MNI points (…, 3): 1 at an air space, falling off with distance
    as a dipole's field does (1 / (1 + (r / reach)³)), summed over :data:`AIR_MNI`. One sign
    everywhere: a model of where the field is bent, not of its lobes."""
    out = np.zeros(mni.shape[:-1])
    for x, y, z, w in AIR_MNI:
        r = np.linalg.norm(mni - np.array([x, y, z]), axis=-1)
        out += w / (1.0 + (r / AIR_REACH_MM) ** 3)
    return out


def distort(data: np.ndarray, affine: np.ndarray, mni_axis: int, shift_mm: float, to_mni: np.ndarray) -> np.ndarray:
    """The scan as an EPI with another phase-encoding axis would record it: the tissue at x is
    recorded at x + d(x), along the voxel axis nearest MNI axis ``mni_axis``, with d = ``shift_mm``
    × :func:`air_field` (mm; the sign is the polarity), and its intensity scaled by the local
    stretch (1 / (1 + ∂d/∂s): piled up where the shift converges, thinned where it spreads).
    With 20 mm at the air spaces the shift is 2–3 mm in the pons, 1–1.5 mm at the internal
    capsule and under 0.3 mm at the precentral gyrus: the size of the displacement a 3 T EPI
    shows there without field-map correction. The scan's own distortion stays: this is the
    difference between two read-outs."""
    from scipy import ndimage

    from cstbatch.steps.track_region import mni_coordinates

    axis, _ = _axis_nearest(affine, to_mni, mni_axis)
    ijk = np.indices(data.shape[:3], dtype=np.float64)
    voxel_mm = float(np.linalg.norm(np.asarray(affine, float)[:3, axis]))
    d = shift_mm * air_field(mni_coordinates(data.shape, affine, to_mni)) / voxel_mm  # in voxels
    stretch = 1.0 / np.clip(1.0 + np.gradient(d, axis=axis), 0.2, None)
    # each recorded voxel p shows the tissue at x with x + d(x) = p: found by fixed-point
    # iteration, x <- p - d(x) (it converges: the shift changes by far less than a voxel per voxel)
    coords = ijk.copy()
    for _ in range(6):
        coords[axis] = ijk[axis] - ndimage.map_coordinates(d, coords, order=1, mode="nearest")
    scale = ndimage.map_coordinates(stretch, coords, order=1, mode="nearest")
    out = np.stack([ndimage.map_coordinates(data[..., v], coords, order=1) for v in range(data.shape[3])], axis=-1)
    return (out * scale[..., None]).astype(np.float32)


def fa_image(data: np.ndarray, affine: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray):
    """The scan's FA as the pipeline computes it for registration (default options: its mask and
    tensor fit; NaN as 0), a nibabel image on the scan's grid."""
    import nibabel as nib
    from dipy.core.gradients import gradient_table

    from cstbatch.steps.gradients import bids_to_voxel_axes
    from cstbatch.steps.mask import mask_median_otsu
    from cstbatch.steps.model import fit_tensor_maps
    from cstbatch.study.options import defaults

    options = defaults()
    gtab = gradient_table(bvals, bvecs=bids_to_voxel_axes(bvecs, affine), b0_threshold=50)
    maps = fit_tensor_maps(data, gtab, mask_median_otsu(data, gtab, options))
    return nib.Nifti1Image(np.nan_to_num(maps["fa"]).astype(np.float32), affine)


def world_to_mni(data: np.ndarray, affine: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """World mm → MNI mm for the scan: the pipeline's own mask, tensor fit (:func:`fa_image`) and
    template registration (default options). The head does not move between grids, so one map
    serves every copy."""
    from cstbatch.engine.context import implementation_for
    from cstbatch.steps.register import register_template
    from cstbatch.study.options import defaults

    options = defaults()
    fa = fa_image(data, affine, bvals, bvecs)
    return register_template(fa, implementation_for("register", options, None).func(options), options).subject_to_mni


def acquire(spec, data, affine, bvals, keep, to_mni):
    """(data, affine, b-values, kept volumes) after one change of :data:`GRIDS` or :data:`CLINICAL`;
    ``to_mni`` is called only by a cut."""
    kind, arg = spec
    if kind == "dirs":  # the b0s and the first ``arg`` diffusion directions
        sel = np.flatnonzero((bvals <= 50) | (np.cumsum(bvals > 50) <= arg))
        return data[..., sel], affine, bvals[sel], keep[sel]
    if kind == "noise":
        return add_noise(data, arg), affine, bvals, keep
    if kind == "bvalue":
        out, new_b = higher_b(data, bvals, arg)
        return out, affine, new_b, keep
    if kind == "perm":
        return (*reorder(data, affine, arg), bvals, keep)
    if kind == "thick":
        return (*thicken(data, affine, arg), bvals, keep)
    if kind == "voxel":
        return (*coarser(data, affine, arg), bvals, keep)
    if kind == "slices":
        return (*slices(data, affine, *arg), bvals, keep)
    if kind == "cut":
        return (*cut_below(data, affine, arg, to_mni()), bvals, keep)
    if kind == "neck":
        return (*extend_below(data, affine, arg, to_mni()), bvals, keep)
    if kind == "width":
        return (*narrower(data, affine, arg, to_mni()), bvals, keep)
    if kind == "distort":
        return distort(data, affine, *arg, to_mni()), affine, bvals, keep
    new_aff, new_shape = regrid(affine, data.shape, kind, arg)
    return resample(data, affine, new_aff, new_shape), new_aff, bvals, keep


def write_dwi(stem: Path, data: np.ndarray, affine: np.ndarray, bvals: np.ndarray) -> None:
    """``<stem>.nii.gz`` (float32, qform and sform both ``affine``) and ``<stem>.bval``."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    nib.save(img, f"{stem}.nii.gz")
    np.savetxt(f"{stem}.bval", np.asarray(bvals)[None], fmt="%g")


def write_grids(src_dir: Path, stem: str, bids: Path, name: str, grids=None, to_mni=None) -> list[str]:
    """The original scan and its regridded copies as subjects ``<name><grid>`` of ``bids``;
    ``to_mni``: the scan's world → MNI map when the caller has it (else registered here, once,
    if a grid needs it)."""
    import functools

    import nibabel as nib

    from cstbatch.steps.gradients import bids_to_voxel_axes, voxel_axes_to_bids, voxel_to_world_dirs

    img = nib.load(str(src_dir / f"{stem}.nii.gz"))
    affine = np.asarray(img.affine, float)
    data = np.asarray(img.dataobj, np.float32)
    bvals0 = np.loadtxt(src_dir / f"{stem}.bval").ravel()
    bvecs = np.loadtxt(src_dir / f"{stem}.bvec").T
    world_dirs = voxel_to_world_dirs(bids_to_voxel_axes(bvecs, affine), affine)
    known = to_mni
    to_mni = functools.cache(lambda: known if known is not None else world_to_mni(data, affine, bvals0, bvecs))
    subjects = []
    chains = {**{g: [v] for g, v in GRIDS.items()}, **CLINICAL}
    for grid, chain in {"orig": None, **{g: chains[g] for g in (grids or GRIDS)}}.items():
        sub = f"{name}{grid}"
        subjects.append(sub)
        d = bids / f"sub-{sub}" / "dwi"
        d.mkdir(parents=True, exist_ok=True)
        for ext in ("json",) if chain else ("nii.gz", "bval", "bvec", "json"):
            shutil.copyfile(src_dir / f"{stem}.{ext}", d / f"sub-{sub}_dwi.{ext}")
        if chain is None:
            continue
        out, new_aff, bvals, keep = data, affine, bvals0, np.arange(data.shape[3])
        for spec in chain:
            out, new_aff, bvals, keep = acquire(spec, out, new_aff, bvals, keep, to_mni)
        write_dwi(d / f"sub-{sub}_dwi", out, new_aff, bvals)
        axes = new_aff[:3, :3] / np.linalg.norm(new_aff[:3, :3], axis=0, keepdims=True)
        np.savetxt(d / f"sub-{sub}_dwi.bvec", voxel_axes_to_bids(world_dirs[keep] @ axes, new_aff).T, fmt="%.6f")
    return subjects


def world_cells(trk: Path | None) -> tuple[set, int]:
    """(the 2 mm world cells a tractogram's streamlines visit, sampled every 0.5 mm; how many
    streamlines it holds); an empty set and 0 when there is no tractogram."""
    import nibabel as nib

    from cstbatch.steps.metrics import visited_cells

    sl = nib.streamlines.load(str(trk)).streamlines if trk is not None else []
    return visited_cells(sl, step_mm=0.5), len(sl)


def main() -> int:
    from cstbatch.steps.metrics import cells_dice

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "real-dwi")
    p.add_argument("--scan", action="append", help="subject or subject/session (default: elition, trio/rep1)")
    p.add_argument("--grids", default=None, help=f"comma-separated, from {', '.join([*GRIDS, *CLINICAL])} (default: "
                   "all of the first list; "
                   "shift is always made: the second column compares with it)")
    p.add_argument("-n", "--jobs", type=int, default=2)
    p.add_argument("--option", "-o", action="append", default=[], metavar="NAME=VALUE")
    args = p.parse_args()
    bids, deriv = args.out / "bids", args.out / "derivatives"
    bids.mkdir(parents=True, exist_ok=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "regridded real scans",
                                                               "BIDSVersion": "1.9.0"}))
    groups = []
    for scan in args.scan or ["elition", "trio/rep1"]:
        sub, _, ses = scan.partition("/")
        src = args.real / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "dwi"
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + "_dwi"
        grids = None if not args.grids else ["shift"] + [g for g in args.grids.split(",") if g != "shift"]
        groups.append(write_grids(src, stem, bids, f"{sub}{ses}", grids))
    cmd = [sys.executable, "-m", "cstbatch", str(bids), str(deriv), "participant", "-n", str(args.jobs)]
    for option in args.option:
        cmd += ["--option", option]
    code = subprocess.run(cmd, cwd=ROOT).returncode
    print(f"\n{' '.join(cmd[1:])}\nexit {code}\n")
    print("scan\tgrid\tn_L\tn_R\tdice_L_vs_orig\tdice_R_vs_orig\tdice_L_vs_shift\tdice_R_vs_shift")
    vs_orig, vs_shift = [], []
    for subjects in groups:
        cells, counts = {}, {}
        for sub in subjects:
            for side in "LR":
                trk = next(iter(sorted((deriv / f"sub-{sub}").glob(f"**/*desc-cst{side}_tractogram.trk"))), None)
                cells[sub, side], counts[sub, side] = world_cells(trk)
        ref, shift = subjects[0], subjects[1]
        for sub in subjects[1:]:
            row = [cells_dice(cells[sub, s], cells[ref, s]) for s in "LR"]
            vs_orig += row
            row2 = [cells_dice(cells[sub, s], cells[shift, s]) for s in "LR"] if sub != shift else [float("nan")] * 2
            vs_shift += [v for v in row2 if v == v]
            print(f"{ref[:-4]}\t{sub[len(ref) - 4:]}\t{counts[sub, 'L']}\t{counts[sub, 'R']}\t"
                  + "\t".join(f"{v:.3f}" for v in row + row2))
        print(f"{ref[:-4]}\torig\t{counts[ref, 'L']}\t{counts[ref, 'R']}")
    print(f"\nDice vs the original grid: median {np.median(vs_orig):.3f} min {min(vs_orig):.3f}; "
          f"between resampled grids (vs the shift): median {np.median(vs_shift):.3f} min {min(vs_shift):.3f}")
    return code


if __name__ == "__main__":
    sys.exit(main())
