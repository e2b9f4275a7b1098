"""Random phantom anatomies: a new set of bundles for every seed (the anatomy sweep).

The sample study's phantom (:mod:`cstbatch.sample.phantom`) has one fixed set of centre lines,
so an extraction tuned on it may only have learnt those lines. :func:`random_anatomy` draws a
subject's bundles from documented ranges instead; ``make_phantom_session(anatomy=...)`` turns
them into a DWI session. The sample study itself is unchanged (its default is ``anatomy=None``).

Ranges (MNI mm; every side drawn on its own, so the two CSTs are never mirror images)
    * CST trunk, medulla → corona radiata (8 levels of :data:`phantom.BUNDLES`): every level
      moves by N(0, 1.5) in x, N(0, 2.5) in y, N(0, 1.5) in z, plus one offset of the whole
      trunk above the pons, U(±2) x, U(±3) y; radius × U(0.8, 1.2).
    * CST fan (the real tract reaches the whole precentral gyrus): from the top of the trunk
      (corona radiata, z ≈ 32) a hand branch to the hand knob (≈ −37, −22, 69) always, a leg
      branch to the paracentral / medial precentral cortex near the vertex (≈ −9, −31, 71)
      with probability 0.85, and a face branch lateral and low (≈ −55, −7, 30) with probability
      0.7; every branch point moves by N(0, 2.5) mm, branch radius U(2.5, 3.5) mm. All
      branches form the one truth mask ``cst_<side>``. The trunk's radius (3–4 mm in the
      sample) and the branches' may be multiplied by ``cst_width`` (1 by default): the CST is
      then about 8 cm³ per side at 1 and 13–20 cm³ at 1.5, the atlas phantom's 17–23.
    * Corpus callosum body: midline height U(23, 31), lateral rise U(8, 16) mm, antero-
      posterior position U(−22, −10), radius U(3, 5), crossing yield U(0.35, 0.65) (the share
      of its fraction it gives up where it overlaps the CST).
    * Superior longitudinal fasciculus / arcuate (crosses the fan laterally, front to back):
      x ≈ −38 ± 4, z ≈ 33 ± 4, radius U(3, 4.5).
    * Corticopontine distractors: the frontopontine tract (pons → anterior limb → prefrontal
      cortex) always, perturbed like the trunk, and a parietopontine tract (pons →
      retrolenticular capsule → superior parietal cortex) with probability 0.6; both form
      ``distractor_<side>`` and the ``distractor`` mask.
    * Eigenvalues: CST λ∥ U(1.5, 1.8)e-3, λ⊥ U(0.3, 0.45)e-3; others as the sample phantom.
    * Brain size / shape: an extra per-axis scale U(0.92, 1.08) on top of the subject's random
      MNI → subject affine.
    * Background white matter (everything outside the tubes): its orientation field is a sum of
      plane waves in MNI space, azimuth 3 waves of amplitude U(0.5, 1.2) rad and wavelength
      U(170, 260) mm, elevation 3 waves of U(0.45, 0.95) rad and U(170, 320) mm, each in a
      random direction and phase. The sample phantom's fixed field has amplitudes and
      wavelengths in these ranges, and over the brain and many seeds the drawn fields are as
      often steep: 23 % of points more than 60° from the horizontal, against 22 % in the fixed
      field (median 35° against 40°). Until anatomy version 2 every anatomy had that fixed
      field, which is not mirror-symmetric: beside the right CST in the corona radiata it runs
      within 17–30° of the tract, beside the left one 41–86°, so every tube set asked the same
      question of the right sides. Drawn from its own stream (``default_rng([seed, 15])``), so
      a seed's bundles are those of version 1.
SNR, orientation (LAS/RAS, oblique) and voxel size are arguments of the session, not of the
anatomy. The bundles are drawn from ``numpy.random.default_rng([seed, 14])`` in a fixed order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cstbatch.sample.phantom import BUNDLE_EIG, BUNDLES

#: 2: each anatomy draws its background white matter's orientations (1: the fixed field)
ANATOMY_VERSION = 2
#: the CST trunk is the sample CST up to the corpus-callosum crossing (index 7, z = 32)
TRUNK_LEVELS = 8
_FAN = {  # branch -> control points after the trunk top (x, y, z) in MNI mm, left side
    "hand": [(-32.0, -19.0, 47.0), (-35.0, -21.0, 60.0), (-37.0, -22.0, 69.0)],
    "leg": [(-22.0, -23.0, 46.0), (-14.0, -29.0, 60.0), (-9.0, -31.0, 71.0)],
    "face": [(-38.0, -15.0, 36.0), (-48.0, -11.0, 34.0), (-55.0, -7.0, 30.0)],
}
_FAN_P = {"hand": 1.0, "leg": 0.85, "face": 0.7}
_PARIETOPONTINE = [(-9.0, -30.0, -38.0), (-11.0, -26.0, -27.0), (-14.0, -22.0, -12.0),
                   (-22.0, -30.0, 2.0), (-26.0, -42.0, 16.0), (-25.0, -55.0, 34.0),
                   (-22.0, -64.0, 50.0)]
_SLF = [(-36.0, 20.0, 28.0), (-38.0, 5.0, 32.0), (-38.0, -10.0, 34.0), (-38.0, -25.0, 34.0),
        (-37.0, -40.0, 32.0), (-36.0, -52.0, 28.0)]


@dataclass(frozen=True)
class Anatomy:
    """Bundles of one random subject: what ``make_phantom_session(anatomy=...)`` needs."""

    bundles: dict          # tube name -> tuple of (x, y, z, radius) control points, MNI mm
    groups: dict           # tube name -> truth mask name (cst_left, distractor_right, cc, ...)
    eigenvalues: dict      # tube name -> (λ∥, λ⊥)
    crossing_yield: dict   # tube name -> share of its fraction given up where it overlaps
    scale: tuple           # extra per-axis brain scale
    seed: int
    #: the background white matter's orientation waves (:func:`phantom.wm_orientation_mni`);
    #: empty: the sample phantom's fixed field
    background: tuple = ()
    #: the factor every CST radius was multiplied by (:func:`random_anatomy`)
    cst_width: float = 1.0

    def describe(self) -> dict:
        """JSON-able summary (written into the session's truth)."""
        return {"seed": self.seed, "scale": list(self.scale), "version": 2 if self.background else 1,
                "background_waves": [[list(w) for w in part] for part in self.background],
                "cst_width": self.cst_width,
                "tubes": {k: {"group": self.groups[k], "points": [list(p) for p in v]}
                          for k, v in self.bundles.items()}}


def _mirror(points):
    return tuple((-x, y, z, r) for (x, y, z, r) in points)


def _side(rng, side: str, cst_width: float = 1.0) -> tuple[dict, dict, dict]:
    """The CST and distractor tubes of one side (drawn as left, mirrored for the right)."""
    bundles, groups, eigs = {}, {}, {}
    rscale = rng.uniform(0.8, 1.2)
    shift = np.array([rng.uniform(-2, 2), rng.uniform(-3, 3), 0.0])
    trunk = []
    for i, (x, y, z, r) in enumerate(BUNDLES["cst_left"][:TRUNK_LEVELS]):
        p = np.array([x, y, z]) + rng.normal(0.0, [1.5, 2.5, 1.5])
        if i >= 3:  # above the pons the whole trunk may sit elsewhere
            p += shift
        trunk.append((*p, r * rscale * cst_width))
    eig = (rng.uniform(1.5e-3, 1.8e-3), rng.uniform(0.30e-3, 0.45e-3))
    top = trunk[-1]
    for name, pts in _FAN.items():
        keep = rng.uniform() < _FAN_P[name]
        radius = rng.uniform(2.5, 3.5) * cst_width
        moved = [tuple(np.array(p) + rng.normal(0.0, 2.5, 3)) + (radius,) for p in pts]
        if not keep:
            continue
        # the branch starts one level below the trunk top so branches overlap smoothly there
        bundles[f"cst_{side}_{name}"] = tuple(trunk[:-1]) + (top,) + tuple(moved)
        groups[f"cst_{side}_{name}"] = f"cst_{side}"
        eigs[f"cst_{side}_{name}"] = eig
    dshift = rng.normal(0.0, [1.5, 2.5, 1.5])
    fp = tuple((x + dshift[0], y + dshift[1], z + dshift[2], r)
               for (x, y, z, r) in BUNDLES["distractor_left"])
    bundles[f"distractor_{side}"] = fp
    groups[f"distractor_{side}"] = f"distractor_{side}"
    eigs[f"distractor_{side}"] = BUNDLE_EIG["distractor_left"]
    if rng.uniform() < 0.6:
        pp = tuple(tuple(np.array(p) + rng.normal(0.0, 2.0, 3)) + (3.0,) for p in _PARIETOPONTINE)
        bundles[f"distractor_{side}_parietal"] = pp
        groups[f"distractor_{side}_parietal"] = f"distractor_{side}"
        eigs[f"distractor_{side}_parietal"] = BUNDLE_EIG["distractor_left"]
    slf_r = rng.uniform(3.0, 4.5)
    slf_shift = np.array([rng.uniform(-4, 4), 0.0, rng.uniform(-4, 4)])
    bundles[f"slf_{side}"] = tuple(tuple(np.array(p) + slf_shift) + (slf_r,) for p in _SLF)
    groups[f"slf_{side}"] = f"slf_{side}"
    eigs[f"slf_{side}"] = BUNDLE_EIG["distractor_left"]
    if side == "right":
        bundles = {k: _mirror(v) for k, v in bundles.items()}
    return bundles, groups, eigs


def random_anatomy(seed: int, version: int = ANATOMY_VERSION, cst_width: float = 1.0) -> Anatomy:
    """A new subject's bundles, drawn from the ranges of the module docstring; ``version=1``
    gives the same bundles in the fixed background of the sets scored before version 2.

    ``cst_width`` multiplies every CST radius (trunk and fan branches) after the draw, the rest
    of the anatomy unchanged. Why: at 2-3 mm a visited-voxel Dice depends on how many of a
    tract's voxels are rim, so the tract's width decides much of the score; this lets the
    sweep ask whether the extraction finds a wider tract as well (``anatomy_sweep.py
    --cst-width``; benchmarks/RESULTS.md, "The tube CST's width")."""
    if not cst_width > 0:
        raise ValueError(f"cst_width must be positive, got {cst_width!r}")
    rng = np.random.default_rng([int(seed), 14])
    bundles, groups, eigs = {}, {}, {}
    for side in ("left", "right"):
        b, g, e = _side(rng, side, float(cst_width))
        bundles.update(b)
        groups.update(g)
        eigs.update(e)
    mid_z, rise = rng.uniform(23, 31), rng.uniform(8, 16)
    cc_y, cc_r = rng.uniform(-22, -10), rng.uniform(3.0, 5.0)
    xs = np.array([-48.0, -38, -28, -18, -9, 0, 9, 18, 28, 38, 48])
    cc = tuple((float(x), cc_y - abs(x) * 0.04, mid_z + rise * (abs(x) / 48.0) ** 1.5, cc_r) for x in xs)
    bundles["cc"] = cc
    groups["cc"] = "cc"
    eigs["cc"] = BUNDLE_EIG["cc"]
    cc_yield = {"cc": rng.uniform(0.35, 0.65)}
    scale = tuple(float(v) for v in rng.uniform(0.92, 1.08, 3))
    bundles = {k: tuple(tuple(float(c) for c in p) for p in v) for k, v in bundles.items()}
    eigs = {k: (float(a), float(b)) for k, (a, b) in eigs.items()}
    return Anatomy(bundles, groups, eigs, cc_yield, scale, int(seed), _background(seed) if version >= 2 else (),
                   float(cst_width))


def _background(seed: int) -> tuple:
    """The background white matter's orientation waves (module docstring), from their own stream."""
    rng = np.random.default_rng([int(seed), 15])

    def waves(n, amplitude, wavelength):
        out = []
        for _ in range(n):
            k = rng.normal(size=3)
            k *= 2.0 * np.pi / rng.uniform(*wavelength) / np.linalg.norm(k)
            out.append((*(float(v) for v in k), float(rng.uniform(0.0, 2.0 * np.pi)), float(rng.uniform(*amplitude))))
        return tuple(out)

    return waves(3, (0.5, 1.2), (170.0, 260.0)), waves(3, (0.45, 0.95), (170.0, 320.0))
