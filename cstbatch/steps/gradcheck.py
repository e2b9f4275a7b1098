"""Is the gradient table right? A check in the spirit of MRtrix's ``dwigradcheck``.

A b-vector file with one axis sign flipped, or two axes swapped, is the most common silent
error in real diffusion data: every tensor still fits, FA is unchanged, but the principal
directions are mirrored or permuted, so curved tracts (corpus callosum, corona radiata) break up
into short pieces. The check tracks a fixed sample of seeds once per candidate table — every
axis permutation of the b-vectors combined with no flip or a flip of one axis (24 tables;
flipping two axes equals flipping the third, because a diffusion direction has no sign) — and
compares the mean streamline length. Where another table gives streamlines clearly longer than
the given one (:data:`MARGIN`), the given table is suspect.

Why one tensor fit serves all 24 tables: the tensor fit (OLS/WLS) is linear in the six tensor
elements, so fitting with b-vectors ``M g`` (``M`` a signed permutation, orthogonal) gives
exactly ``M D Mᵀ``: the same eigenvalues (FA, MD…) and eigenvectors ``M v``.
``tests/test_qc.py`` checks this against real refits. The check therefore costs one tracking
pass over 24 × seeds streamlines, vectorised in numpy; the tensor fit is the model step's.

Tracking: deterministic, principal eigenvector at the nearest voxel (EuDX-like), both ways
from each seed, :data:`STEP_VOXELS` of the smallest voxel per step, stopping outside the mask,
below FA :data:`STOP_FA`, at a turn sharper than :data:`MAX_ANGLE_DEG` or after
:data:`MAX_LENGTH_MM`. Seeds: the centres of up to :data:`N_SEEDS` of the most anisotropic
voxels (the top :data:`SEED_FRACTION` of the mask's FA, at least :data:`SEED_FA`), evenly
spaced through the mask's voxel order (no randomness).

Why the most anisotropic voxels only: they lie in the big coherent tracts (corpus callosum,
CST, …), whose extent follows their fibres, so a wrong table leaves them within a few mm. From
every voxel with FA ≥ 0.3 the sample phantom's background white matter (anisotropic
everywhere, along a smooth field) let wrong tables run as far as the right one and beat it by up
to 20 %; seeded from its top 2 %, the right table wins there by 1.5x, as on the real scans
(benchmarks/gradient_check.py).

Frames: candidates are defined on the ``.bvec`` file's rows (what a user would edit);
:func:`cstbatch.steps.gradients.bids_to_voxel_axes` may flip x between the file and the voxel
axes, so a file-frame change ``M`` acts on voxel-axis vectors as ``F M F``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations
from typing import Any

import numpy as np
from nibabel.affines import voxel_sizes

#: The best other table must give mean streamlines at least this much longer (relative)
#: than the given table to flag it. dwigradcheck takes the best table outright; a margin keeps
#: noise (a few % between tables on intact scans) from flagging good data. Measured:
#: benchmarks/gradient_check.py: on the 4 shared real scans and 3 sample sessions no other
#: table reaches 0.7x of an intact one, and a broken table is beaten by ≥ 1.5x; 0.25 sits in that
#: gap with room for thin slabs, where every streamline is short and ratios are noisier.
MARGIN = 0.25
#: Seeds come from the top 2 % of the mask's FA values (never below FA 0.3).
SEED_FRACTION = 0.02
SEED_FA = 0.3
STOP_FA = 0.15
MAX_ANGLE_DEG = 45.0
STEP_VOXELS = 0.5
MAX_LENGTH_MM = 250.0
N_SEEDS = 1000
#: fewer seeds than this (little white matter in the mask): no verdict.
MIN_SEEDS = 50
AXES = "xyz"


@dataclass(frozen=True)
class Candidate:
    """A change of the ``.bvec`` file: new row ``i`` = ``signs[i]`` × old row ``order[i]``."""

    order: tuple[int, int, int]
    signs: tuple[int, int, int]

    @property
    def matrix(self) -> np.ndarray:
        m = np.zeros((3, 3))
        for i, (j, s) in enumerate(zip(self.order, self.signs)):
            m[i, j] = s
        return m

    @property
    def name(self) -> str:
        """'identity', 'flip x', 'swap xy', 'swap xy + flip z', 'permute yzx + flip x' …"""
        parts = []
        if self.order != (0, 1, 2):
            moved = [i for i in range(3) if self.order[i] != i]
            parts.append(f"swap {AXES[moved[0]]}{AXES[moved[1]]}" if len(moved) == 2
                         else "permute " + "".join(AXES[j] for j in self.order))
        parts += [f"flip {AXES[i]}" for i in range(3) if self.signs[i] < 0]
        return " + ".join(parts) or "identity"

    def apply_bids(self, bvecs_bids: np.ndarray) -> np.ndarray:
        """The candidate table in the file's convention ((N, 3) rows per volume)."""
        return np.asarray(bvecs_bids, float) @ self.matrix.T


def candidates() -> list[Candidate]:
    """The 24 distinct tables, identity first (each flip of one axis or none × 6 orders)."""
    out = []
    for order in permutations(range(3)):
        for flip in (None, 0, 1, 2):
            signs = tuple(-1 if i == flip else 1 for i in range(3))
            out.append(Candidate(tuple(order), signs))
    return out


@dataclass
class GradientCheck:
    mean_length_mm: dict[str, float]
    given: str = "identity"
    best: str = "identity"
    ratio: float = 1.0
    suspect: bool = False
    n_seeds: int = 0
    margin: float = MARGIN
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"suspect": self.suspect, "best": self.best, "ratio": round(self.ratio, 4),
                "margin": self.margin, "n_seeds": self.n_seeds,
                "mean_length_mm": {k: round(v, 2) for k, v in self.mean_length_mm.items()}, **self.extra}


def _voxel_frame(m_bids: np.ndarray, affine: np.ndarray) -> np.ndarray:
    if np.linalg.det(np.asarray(affine, float)[:3, :3]) > 0:  # see gradients.bids_to_voxel_axes
        f = np.diag([-1.0, 1.0, 1.0])
        return f @ m_bids @ f
    return m_bids


def seed_voxels(fa: np.ndarray, mask: np.ndarray, n: int = N_SEEDS, fraction: float = SEED_FRACTION,
                seed_fa: float = SEED_FA) -> np.ndarray:
    """(k, 3) int voxel indices: up to ``n`` of the top ``fraction`` of the mask's FA values
    (and FA ≥ ``seed_fa``), evenly spaced."""
    mask = np.asarray(mask, bool)
    fa = np.asarray(fa)
    values = fa[mask & (fa > 0)]
    if values.size:
        seed_fa = max(seed_fa, float(np.quantile(values, 1.0 - fraction)))
    idx = np.argwhere(mask & (fa >= seed_fa))
    if len(idx) > n:
        idx = idx[np.linspace(0, len(idx) - 1, n).round().astype(int)]
    return idx


def track_lengths(v1: np.ndarray, fa: np.ndarray, mask: np.ndarray, voxel_mm, seeds: np.ndarray,
                  matrices: np.ndarray) -> np.ndarray:
    """Mean streamline length (mm) from ``seeds`` for each voxel-frame matrix in ``matrices``.

    ``v1``: (X, Y, Z, 3) principal eigenvectors on voxel axes (physical components).
    ``matrices``: (C, 3, 3); candidate c's direction field is ``matrices[c] @ v1``.
    Returns float (C,).
    """
    shape = np.array(fa.shape[:3])
    vox = np.asarray(voxel_mm, float)
    step_mm = STEP_VOXELS * float(vox.min())
    cos_max = np.cos(np.deg2rad(MAX_ANGLE_DEG))
    ok = np.asarray(mask, bool) & (np.asarray(fa) >= STOP_FA)
    v1 = np.asarray(v1, np.float32)
    mats = np.asarray(matrices, float)
    n_c, n_s = len(mats), len(seeds)
    start = np.asarray(seeds, float)
    d0 = v1[tuple(np.asarray(seeds).T)]  # (S, 3)
    d0 = np.einsum("cij,sj->csi", mats, d0)  # (C, S, 3)
    # both directions from each seed: (C, 2S)
    pos = np.concatenate([np.broadcast_to(start, (n_c, n_s, 3))] * 2, axis=1).reshape(-1, 3).copy()
    prev = np.concatenate([d0, -d0], axis=1).reshape(-1, 3)
    cand = np.repeat(np.arange(n_c), 2 * n_s)
    length = np.zeros(len(pos))
    alive = np.linalg.norm(prev, axis=1) > 0
    for _ in range(int(MAX_LENGTH_MM / step_mm)):
        if not alive.any():
            break
        a = np.flatnonzero(alive)
        p = pos[a] + prev[a] * (step_mm / vox)
        ijk = np.rint(p).astype(int)
        inside = np.all((ijk >= 0) & (ijk < shape), axis=1)
        ijk[~inside] = 0
        good = inside & ok[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        d = np.einsum("nij,nj->ni", mats[cand[a]], v1[ijk[:, 0], ijk[:, 1], ijk[:, 2]])
        dot = np.einsum("ni,ni->n", d, prev[a])
        d *= np.where(dot < 0, -1.0, 1.0)[:, None]
        good &= np.abs(dot) >= cos_max
        pos[a] = p
        length[a[good]] += step_mm
        prev[a[good]] = d[good]
        alive[a[~good]] = False
    per_seed = length.reshape(n_c, 2, n_s).sum(axis=1)
    return per_seed.mean(axis=1)


def check_gradients(evecs: np.ndarray, fa: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                    margin: float = MARGIN) -> GradientCheck:
    """Track the seed sample with each candidate table; flag the given one when beaten.

    ``evecs``: (X, Y, Z, 3, 3) tensor eigenvectors on voxel axes, ``evecs[..., :, 0]`` the
    principal one (:func:`cstbatch.steps.model.fit_tensor_maps`); ``fa``, ``mask``: (X, Y, Z);
    ``affine``: the image's voxel → RAS+ mm (voxel sizes, and the file ↔ voxel x flip).
    """
    affine = np.asarray(affine, float)
    voxel_mm = voxel_sizes(affine)
    seeds = seed_voxels(fa, mask)
    cands = candidates()
    if len(seeds) < MIN_SEEDS:
        return GradientCheck({}, n_seeds=len(seeds), margin=margin,
                             extra={"skipped": f"only {len(seeds)} seed voxels (FA >= {SEED_FA}) in the mask"})
    mats = np.stack([_voxel_frame(c.matrix, affine) for c in cands])
    lengths = track_lengths(np.asarray(evecs)[..., :, 0], fa, mask, voxel_mm, seeds, mats)
    by_name = {c.name: float(v) for c, v in zip(cands, lengths)}
    best = int(np.argmax(lengths))
    given = float(lengths[0])
    ratio = float(lengths[best] / max(given, 1e-3))
    return GradientCheck(by_name, best=cands[best].name, ratio=ratio, n_seeds=len(seeds), margin=margin,
                         suspect=bool(best != 0 and ratio >= 1.0 + margin))


def candidate_by_name(name: str) -> Candidate:
    for c in candidates():
        if c.name == name:
            return c
    raise KeyError(name)
