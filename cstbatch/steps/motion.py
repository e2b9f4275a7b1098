"""Head motion between the volumes of a DWI series: rigid estimates, and their correction.

Why here (the ingest step): the preprocessed DWI (``desc-preproc``) is what every later step
reads, and the b-vectors must turn with the head, so both are written together. Clinical
patients move between volumes by millimetres; uncorrected, each direction samples a slightly
different place and the tensor, the fODFs and the tract blur (simulated on the real Philips
scan, ``benchmarks/motion.py``).

What is registered to what, and why:

* diffusion-weighted volumes to the mean diffusion-weighted image, b0s to the first b0. Each is
  compared with an image of the same contrast. Registering diffusion-weighted volumes to the
  b0 (dipy's ``motion_correction``) puts every one of them 0.5–1.4 mm off the b0 on all four
  shared real series, about the same offset for every direction: the contrast difference biasing
  the mutual information, not motion. The b0 and the diffusion-weighted block are therefore not
  aligned to each other; a move between the two blocks is left as it is, and the corrected
  volumes sit in their mean position (the b-vectors are turned to match it).
* rigid (6 parameters), Mattes mutual information, on the field of view cut to its content.
  Eddy-current shears and scalings are not modelled (they need a model of the signal, as FSL's
  ``eddy`` has).

``motion_correction`` (option): ``none`` leaves the data as they are; ``estimate`` measures and
reports the motion but writes the data untouched (no interpolation); ``auto`` corrects only
when some volume moved by more than :data:`AUTO_FRACTION` of a voxel (on average over the
brain), so a still scan is not smoothed by resampling; ``rigid`` always corrects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cstbatch.study.bvalues import B0_THRESHOLD

#: Pyramid of each volume's registration (coarse → fine): iterations, smoothing (voxels), shrink.
#: The finest level gets dipy's minimum (a few evaluations): on the real Philips scan with
#: simulated motion the estimates' error against the motion put in changed by at most 0.04 mm,
#: in 0.6 of the time.
LEVEL_ITERS = (100, 50, 0)
SIGMAS = (3.0, 1.0, 0.0)
FACTORS = (4, 2, 1)
#: ``auto`` corrects when a volume's mean displacement over the brain exceeds this share of the
#: smallest voxel side.
AUTO_FRACTION = 0.5
#: Voxels of the reference at least this share of its 99th percentile count as brain when
#: measuring displacement (b0 and mean-DWI images: the skull and air are far below it).
BRAIN_FRACTION = 0.2
#: Displacements are averaged over at most this many brain voxels (evenly spaced).
MAX_POINTS = 20000


@dataclass
class Motion:
    """Per volume (in the series' order): the rigid transform (reference world mm → the volume's
    world mm, dipy's convention), mean displacement of the brain (mm), rotation (degrees)."""

    transforms: np.ndarray  # (N, 4, 4)
    displacement_mm: np.ndarray  # (N,)
    rotation_deg: np.ndarray  # (N,)
    corrected: bool = False

    def summary(self) -> dict[str, Any]:
        d = self.displacement_mm
        step = np.abs(np.diff(d)) if d.size > 1 else np.zeros(1)
        return {"corrected": self.corrected,
                "mean_displacement_mm": round(float(d.mean()), 3),
                "max_displacement_mm": round(float(d.max()), 3),
                "max_rotation_deg": round(float(self.rotation_deg.max()), 3),
                "max_change_between_volumes_mm": round(float(step.max()), 3),
                "displacement_mm": [round(float(x), 3) for x in d],
                "rotation_deg": [round(float(x), 3) for x in self.rotation_deg]}


def rotation_angle_deg(m: np.ndarray) -> float:
    """The angle (degrees) of the rotation part of a rigid 3x3 or 4x4 transform."""
    r = np.asarray(m, float)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def _bright(ref: np.ndarray) -> np.ndarray:
    hi = float(np.percentile(ref, 99)) if ref.size else 0.0
    return ref > BRAIN_FRACTION * hi if hi > 0 else np.ones(ref.shape, bool)


def _brain_points(ref: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World mm points of the reference's bright voxels (at most MAX_POINTS, evenly spaced)."""
    ijk = np.argwhere(_bright(ref))
    if len(ijk) > MAX_POINTS:
        ijk = ijk[np.linspace(0, len(ijk) - 1, MAX_POINTS).astype(int)]
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _register(static, static_affine, moving, moving_affine) -> np.ndarray:
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric
    from dipy.align.transforms import RigidTransform3D

    reg = AffineRegistration(metric=MutualInformationMetric(nbins=32, sampling_proportion=None),
                             level_iters=list(LEVEL_ITERS), sigmas=list(SIGMAS), factors=list(FACTORS),
                             verbosity=0)
    amap = reg.optimize(static, moving, RigidTransform3D(), None, static_grid2world=static_affine,
                        moving_grid2world=moving_affine, starting_affine=np.eye(4))
    return np.asarray(amap.affine, float)


def estimate_motion(data: np.ndarray, bvals: np.ndarray, affine: np.ndarray) -> Motion:
    """Rigid transform of every volume to its group's reference (module doc)."""
    from cstbatch.steps.register import crop_to_content

    data = np.asarray(data, dtype=np.float32)
    affine = np.asarray(affine, float)
    b0 = np.asarray(bvals) <= B0_THRESHOLD
    n = data.shape[-1]
    transforms = np.repeat(np.eye(4)[None], n, axis=0)
    displacement = np.zeros(n)
    rotation = np.zeros(n)
    for group in (np.flatnonzero(b0), np.flatnonzero(~b0)):
        if group.size < 2:
            continue
        ref = data[..., group[0]] if b0[group[0]] else data[..., group].mean(axis=-1)
        # the field of view cut to the head: noisy background outside it costs time (Philips
        # scans have no zero background) and carries no alignment
        ref_c, ref_affine = crop_to_content(ref, affine, margin=3, content=_bright(ref))
        points = _brain_points(ref_c, ref_affine)
        for i in group:
            if b0[i] and i == group[0]:
                continue
            m = _register(ref_c, ref_affine, data[..., i], affine)
            transforms[i] = m
            moved = points @ m[:3, :3].T + m[:3, 3]
            displacement[i] = float(np.linalg.norm(moved - points, axis=1).mean())
            rotation[i] = rotation_angle_deg(m)
    return Motion(transforms, displacement, rotation)


def should_correct(method: str, motion: Motion, voxel_mm) -> bool:
    if method == "rigid":
        return True
    if method == "auto":
        return bool(motion.displacement_mm.max() > AUTO_FRACTION * float(np.min(voxel_mm)))
    return False


def apply_motion(data: np.ndarray, motion: Motion, affine: np.ndarray) -> np.ndarray:
    """Every moved volume resampled (trilinear) onto the grid of the reference head position."""
    from dipy.align.imaffine import AffineMap

    out = np.array(data, dtype=np.float32, copy=True)
    shape = data.shape[:3]
    for i, m in enumerate(motion.transforms):
        if np.allclose(m, np.eye(4)):
            continue
        amap = AffineMap(m, domain_grid_shape=shape, domain_grid2world=affine,
                         codomain_grid_shape=shape, codomain_grid2world=affine)
        out[..., i] = amap.transform(data[..., i], interpolation="linear")
    return out


def rotate_bvecs(bvecs_bids: np.ndarray, motion: Motion, affine: np.ndarray) -> np.ndarray:
    """The b-vectors each volume had relative to the head in its reference position.

    A gradient applied along world direction ``s`` while the head was turned by ``R`` probed the
    head along ``Rᵀ s``; the volume is moved back into the reference position, so its b-vector
    becomes ``Rᵀ s`` (written in the BIDS convention of the same affine)."""
    from cstbatch.steps.gradients import (bids_to_voxel_axes, voxel_axes_to_bids, voxel_to_world_dirs,
                                          world_to_voxel_dirs)

    world = voxel_to_world_dirs(bids_to_voxel_axes(bvecs_bids, affine), affine)
    turned = np.einsum("nji,nj->ni", motion.transforms[:, :3, :3], world)
    out = voxel_axes_to_bids(world_to_voxel_dirs(turned, affine), affine)
    still = np.linalg.norm(np.asarray(bvecs_bids, float), axis=1) == 0
    out[still] = np.asarray(bvecs_bids, float)[still]
    return out
