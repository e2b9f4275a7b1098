"""Where CST tracking runs and where it starts: regions defined in MNI mm, mapped to the subject.

Why: whole-brain tracking spends nearly all its time (CSD fit and streamlines) in white matter
the CST never enters, and seeds spread over the brain give a CST of a few dozen streamlines on a
2–3 mm clinical scan: too few for stable numbers (the Trio repeats kept 29–51 per side). With the
template registration done first, the tracker works only inside a generous CST corridor and
starts its streamlines where every CST streamline passes, so the same seed budget lands on the
tract.

The regions (MNI mm, RAS+; ``s`` = x for the right side, −x for the left; ``yc(z) = −8 −
0.45 (z − 40)``, the crown of the precentral gyrus, as in :mod:`cstbatch.steps.atlas`):

corridor (tracking stops outside it)
    * brainstem, z −80 … −6: |x| ≤ 24, −52 ≤ y ≤ −2 (medulla to the cerebral peduncles);
    * diencephalon / internal capsule, z −6 … 16: |x| ≤ 40, −46 ≤ y ≤ 12;
    * corona radiata and cortex, z ≥ 16: |x| ≤ 72, yc(max(z, 20)) − 30 ≤ y ≤ yc(max(z, 20)) + 24:
      a coronal slab around the central sulcus, 54 mm thick, from the midline to the lateral
      surface, so every part of the precentral gyrus (leg, hand, face) and the path to it lies
      inside with 13–17 mm to spare in front and behind (the extractor's precentral band is
      yc − 13 … yc + 11).
    The margins absorb an affine registration that is off by ~10 mm and anatomy that differs
    from the template; they are not tuned to any scan.
seeds (streamlines start here and are followed both ways)
    * the brainstem trunk, z −60 … −8: |x| ≤ 16, −44 ≤ y ≤ −8 (pons, peduncles: every CST
      streamline passes, in one compact bundle);
    * the posterior limb of the internal capsule, z −6 … 16: 6 ≤ s ≤ 34, −38 ≤ y ≤ 0;
    * the white matter under the precentral gyrus, z 20 … 76: 4 ≤ s ≤ 66, yc − 16 ≤ y ≤ yc + 12,
      below z = 38 only laterally (s ≥ 40: the face area, not the corona radiata): streamlines started at the top reach the lateral (face) and medial (leg) parts of the
      fan, which tracking up from the capsule often leaves where the corpus callosum and the
      superior longitudinal fasciculus cross.
    Only seed voxels with FA above ``track_seed_fa`` count; ``track_cst_seeds`` seeds are spread
    over them (a fixed budget: the tracking time does not grow with the brain or the voxel count,
    and a 3 mm scan gets as many streamlines as a 2 mm one).

Only the affine part of the registration is used (with SyN too): the corridor is generous enough
that the warp's few millimetres do not matter, and the regions stay cheap (one matrix product
per voxel, no resampling).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from cstbatch.steps.atlas import _mm_grid, precentral_crown_y
from cstbatch.study.options import option_value

def mni_coordinates(shape, affine, subject_to_mni) -> np.ndarray:
    """MNI mm of every voxel centre, (X, Y, Z, 3)."""
    grid = _mm_grid(tuple(shape[:3]), np.asarray(subject_to_mni, float) @ np.asarray(affine, float))
    return np.stack(np.broadcast_arrays(*grid), axis=-1)


def corridor_mni(p: np.ndarray) -> np.ndarray:
    """Bool per point (…, 3 MNI mm): inside the CST corridor (see module doc)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    ax = np.abs(x)
    stem = (z >= -80) & (z < -6) & (ax <= 24) & (y >= -52) & (y <= -2)
    capsule = (z >= -6) & (z < 16) & (ax <= 40) & (y >= -46) & (y <= 12)
    yc = precentral_crown_y(np.maximum(z, 20.0))
    crown = (z >= 16) & (ax <= 72) & (y >= yc - 30) & (y <= yc + 24)
    return stem | capsule | crown


#: the seed regions (``track_cst_seed_regions``, comma-separated)
SEED_REGIONS = ("brainstem", "capsule", "precentral")


def seeds_mni(p: np.ndarray, regions=SEED_REGIONS) -> np.ndarray:
    """Bool per point (…, 3 MNI mm): inside one of the CST seed ``regions`` (see module doc)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    ax = np.abs(x)
    out = np.zeros(p.shape[:-1], bool)
    if "brainstem" in regions:
        out |= (z >= -60) & (z <= -8) & (ax <= 16) & (y >= -44) & (y <= -8)
    if "capsule" in regions:
        out |= (z >= -6) & (z <= 16) & (ax >= 6) & (ax <= 34) & (y >= -38) & (y <= 0)
    if "precentral" in regions:
        yc = precentral_crown_y(z)
        out |= ((z >= 20) & (z <= 76) & (ax >= 4) & (ax <= 66) & (y >= yc - 16) & (y <= yc + 12)
                & ((z >= 38) | (ax >= 40)))
    return out


def seed_regions(options: Mapping[str, Any]) -> tuple[str, ...]:
    value = option_value(options, "track_cst_seed_regions", null_is_default=True)
    names = tuple(v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip())
    unknown = [n for n in names if n not in SEED_REGIONS]
    if unknown or not names:
        from cstbatch.errors import OptionError
        raise OptionError(f"track_cst_seed_regions: {value!r}: choose from {', '.join(SEED_REGIONS)}")
    return names


def cst_region(shape, affine, subject_to_mni, regions=SEED_REGIONS) -> tuple[np.ndarray, np.ndarray]:
    """(corridor, seed region): bool (X, Y, Z) on the subject grid, from the registration."""
    p = mni_coordinates(shape, affine, subject_to_mni)
    return corridor_mni(p), seeds_mni(p, regions)


def tracking_inputs(brain: np.ndarray, maps: Mapping[str, np.ndarray], affine,
                    subject_to_mni: Callable[[], np.ndarray],
                    options: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """(mask handed to the tracker, maps with ``seed_mask`` for ``track_region=cst``, info).

    ``subject_to_mni`` returns the registration's subject → MNI matrix; it is called only for
    ``track_region=cst``. ``track_region=brain`` returns the brain mask and the maps unchanged:
    whole-brain tracking as before, for users who want the tractogram, with no registration.
    """
    from cstbatch.study.options import require_choice

    region = require_choice("track_region", str(option_value(options, "track_region", null_is_default=True)))
    brain = np.asarray(brain, bool)
    if region == "brain":
        return brain, dict(maps), {"region": "brain", "region_voxels": int(brain.sum())}
    corridor, seeds = cst_region(brain.shape, affine, subject_to_mni(), seed_regions(options))
    mask = brain & corridor
    info = {"region": "cst", "region_voxels": int(mask.sum()), "brain_voxels": int(brain.sum()),
            "seed_voxels": int((mask & seeds).sum())}
    return mask, {**maps, "seed_mask": mask & seeds}, info
