"""Which levels of the CST an image covers, from its field of view mapped to MNI space.

Partial slabs (a 20 mm 7 T slab, an 84 mm high-resolution block) cannot contain the whole
CST; without this check they end as "success" with an empty or truncated tract. The levels are
defined once here (MNI mm, ICBM 2009 space, left side; the right side mirrors x) so other code —
extraction starting from the lowest covered level, reports, metrics — uses the same numbers.

Each level is a stretch of the tract: an MNI z range and the tract's (x, y) there, taken from
the course of the pyramidal tract in MNI atlases (pyramids of the medulla → basis pontis →
cerebral peduncle → posterior limb of the internal capsule → centrum semiovale → precentral
gyrus). A level is *covered* when at least :data:`MIN_LEVEL_FRACTION` of its points (every 2 mm
along z, both sides) fall inside the image grid (half a voxel of tolerance).

The precentral gyrus, where the tract fans out, has three parts across (:data:`GYRUS_PARTS_MNI_X`:
leg area by the midline, hand knob, face area on the lateral surface). A field of view can hold
every level and still miss a part: a sagittal acquisition of 48 slices of 2.7 mm spans ±65 mm
across, where the face area reaches 60-65 mm from the midline. :func:`gyrus_fractions` says how
much of each part lies inside the image, so "no streamline reaches the face area" can be told
apart from "the image does not hold the face area".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class Level:
    name: str
    label: str
    z_min: float
    z_max: float
    x: float  # left side, MNI mm (negative = left); the right side is -x
    y: float
    brainstem: bool = False


#: Inferior → superior.
CST_LEVELS: tuple[Level, ...] = (
    Level("medulla", "medulla", -58.0, -42.0, -5.0, -40.0, brainstem=True),
    Level("pons", "pons", -40.0, -16.0, -9.0, -28.0, brainstem=True),
    Level("peduncle", "cerebral peduncle", -14.0, -4.0, -16.0, -18.0, brainstem=True),
    Level("internal_capsule", "internal capsule", 0.0, 18.0, -22.0, -14.0),
    Level("centrum_semiovale", "centrum semiovale", 24.0, 40.0, -25.0, -18.0),
    Level("precentral", "precentral gyrus", 46.0, 66.0, -32.0, -20.0),
)
LEVELS = {lv.name: lv for lv in CST_LEVELS}
#: Share of a level's points that must lie inside the image for the level to count as covered.
MIN_LEVEL_FRACTION = 0.5
#: ... and for it to count as whole: a level (or part of the gyrus) between the two is partly
#: outside the image, which ``fov_truncated`` says. Why not one threshold: a field of view that
#: ends inside the medulla holds 44 % of it on one scan and 56 % on the next (the Toshiba and Trio
#: scans; the Trio's noisier copies), and a flag that flips at 50 % tells the two apart where
#: nothing differs; the tract search still starts at the lowest level at least half inside.
COMPLETE_FRACTION = 0.9
Z_STEP_MM = 2.0


def level_points(level: Level) -> np.ndarray:
    """(n, 3) MNI mm points along the level, both sides."""
    z = np.arange(level.z_min, level.z_max + 1e-6, Z_STEP_MM)
    left = np.column_stack([np.full_like(z, level.x), np.full_like(z, level.y), z])
    right = left * np.array([-1.0, 1.0, 1.0])
    return np.vstack([left, right])


def inside_image(points_mni: np.ndarray, shape, affine, subject_to_mni) -> np.ndarray:
    """Bool per MNI mm point: inside the image grid (``shape``, voxel → RAS+ mm ``affine``, half a
    voxel of tolerance), given the subject RAS+ mm → MNI mm 4x4 transform (the registration's
    affine part)."""
    to_vox = np.linalg.inv(np.asarray(affine, float)) @ np.linalg.inv(np.asarray(subject_to_mni, float))
    ijk = np.asarray(points_mni, float).reshape(-1, 3) @ to_vox[:3, :3].T + to_vox[:3, 3]
    return np.all((ijk >= -0.5) & (ijk <= np.asarray(shape[:3], float) - 0.5), axis=1)


def level_fractions(shape, affine, subject_to_mni) -> dict[str, float]:
    """Share of each level's points inside the image grid (:func:`inside_image`)."""
    return {level.name: round(float(inside_image(level_points(level), shape, affine, subject_to_mni).mean()), 3)
            for level in CST_LEVELS}


#: Parts of the precentral gyrus by MNI |x| (mm): name, from, to. The leg area runs up to the
#: vertex and over the midline, the hand knob lies between, the face area low on the lateral surface.
GYRUS_PARTS_MNI_X = (("medial", 0.0, 25.0), ("middle", 25.0, 45.0), ("lateral", 45.0, math.inf))


def gyrus_part_index(x_mni: np.ndarray) -> np.ndarray:
    """Per MNI x (mm), the index into :data:`GYRUS_PARTS_MNI_X` of the part of the gyrus it lies
    over: the one place the leg / hand / face split is drawn for the cleaning, the metrics and QC."""
    bounds = np.array([lo for _, lo, _ in GYRUS_PARTS_MNI_X[1:]])
    return np.searchsorted(bounds, np.abs(np.asarray(x_mni, float)), side="right")


GYRUS_PART_LABELS = {"medial": "medial precentral gyrus (leg area)", "middle": "middle precentral gyrus (hand knob)",
                     "lateral": "lateral precentral gyrus (face area)"}
#: Template voxels (every this many along each axis) that sample the gyrus for :func:`gyrus_points`.
GYRUS_STRIDE = 2


def gyrus_points(template_img) -> np.ndarray:
    """(n, 3) MNI mm of the precentral gyrus: the template's brain voxels (any non-zero value; an
    atlas's registration template is zero outside the brain) inside the gyrus band the corridor
    extractor targets (:func:`cstbatch.steps.atlas.precentral_band`, z 18-80), both sides."""
    from cstbatch.steps.atlas import precentral_band

    data = np.asarray(template_img.dataobj, np.float32)[::GYRUS_STRIDE, ::GYRUS_STRIDE, ::GYRUS_STRIDE]
    affine = np.asarray(template_img.affine, float) @ np.diag([GYRUS_STRIDE] * 3 + [1])
    ijk = np.argwhere(data > 0)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    return xyz[precentral_band(xyz[:, 0], xyz[:, 1], xyz[:, 2], z_range=(18.0, 80.0))]


def gyrus_fractions(points_mni: np.ndarray, shape, affine, subject_to_mni) -> dict[str, dict[str, float | None]]:
    """Per side (``left``: MNI x < 0), the share of each part of the gyrus (:data:`GYRUS_PARTS_MNI_X`,
    points from :func:`gyrus_points`) inside the image grid; None for a part without points. Per
    side, because a head off the field of view's centre loses one side's face area only."""
    points_mni = np.asarray(points_mni, float).reshape(-1, 3)
    inside = inside_image(points_mni, shape, affine, subject_to_mni)
    ax = np.abs(points_mni[:, 0])
    out: dict[str, dict[str, float | None]] = {}
    for side, on_side in (("left", points_mni[:, 0] < 0), ("right", points_mni[:, 0] > 0)):
        out[side] = {}
        for name, lo, hi in GYRUS_PARTS_MNI_X:
            part = on_side & (ax >= lo) & (ax < hi)
            out[side][name] = round(float(inside[part].mean()), 3) if part.any() else None
    return out


def partial_levels(fractions) -> list[tuple[str, float]]:
    """(level, share inside) of the levels covered (:data:`MIN_LEVEL_FRACTION`) but not whole
    (:data:`COMPLETE_FRACTION`), inferior → superior, from :func:`level_fractions`' output."""
    fractions = fractions or {}
    return [(lv.name, fractions[lv.name]) for lv in CST_LEVELS
            if lv.name in fractions and MIN_LEVEL_FRACTION <= fractions[lv.name] < COMPLETE_FRACTION]


def describe_partial(partial: Iterable[tuple[str, float]]) -> str:
    """'medulla (MNI z -58 to -42 mm), 56 % inside'."""
    return ", ".join(f"{describe([name])}, {share * 100:.0f} % inside" for name, share in partial)


def gyrus_parts_cut(fractions) -> list[tuple[str, str, float]]:
    """(side, part, share inside) of the parts of the gyrus (:func:`gyrus_fractions`) less than
    :data:`COMPLETE_FRACTION` inside the image."""
    out = []
    for side in ("left", "right"):
        held = (fractions or {}).get(side) or {}
        out += [(side, name, held[name]) for name, _, _ in GYRUS_PARTS_MNI_X
                if held.get(name) is not None and held[name] < COMPLETE_FRACTION]
    return out


def describe_cut(cut: Iterable[tuple[str, str, float]]) -> str:
    """'the left lateral precentral gyrus (face area), 21 % inside'."""
    return ", ".join(f"the {side} {GYRUS_PART_LABELS[name]}, {share * 100:.0f} % inside" for side, name, share in cut)


def covered_levels(shape, affine, subject_to_mni, min_fraction: float = MIN_LEVEL_FRACTION) -> list[str]:
    """Names of the covered levels, inferior → superior (see module doc)."""
    frac = level_fractions(shape, affine, subject_to_mni)
    return [lv.name for lv in CST_LEVELS if frac[lv.name] >= min_fraction]


def lowest_covered_level(covered: Iterable[str]) -> Level | None:
    """The most inferior covered level (where a tract search can start), or None."""
    covered = set(covered)
    return next((lv for lv in CST_LEVELS if lv.name in covered), None)


def describe(names: Iterable[str]) -> str:
    """'pons (MNI z -40 to -16 mm), internal capsule (MNI z 0 to 18 mm)'."""
    return ", ".join(f"{LEVELS[n].label} (MNI z {LEVELS[n].z_min:g} to {LEVELS[n].z_max:g} mm)" for n in names)


def coverage(shape, affine, subject_to_mni) -> dict:
    """JSON-ready summary: fractions per level, covered and missing levels, and the verdict.

    ``usable`` is False when the image holds neither a brainstem level nor the internal
    capsule: no CST can be identified there (the session fails with an input error).
    """
    frac = level_fractions(shape, affine, subject_to_mni)
    covered = [lv.name for lv in CST_LEVELS if frac[lv.name] >= MIN_LEVEL_FRACTION]
    missing = [lv.name for lv in CST_LEVELS if lv.name not in covered]
    usable = any(LEVELS[n].brainstem for n in covered) or "internal_capsule" in covered
    return {"fractions": frac, "covered": covered, "missing": missing, "usable": usable}
