"""MNI-shaped diffusion phantom for the synthetic sample study.

Everything here is deterministic for a given seed and uses only installed files: the brain
comes from the ICBM 2009a symmetric template that nilearn ships (T1, GM and WM probability
maps), and the fibre bundles are tubes around hand-placed centre lines in MNI mm.

Tissue model (per voxel, fractions summing to the brain fraction)
    * CSF   = brain − GM − WM (the brain is the skull-stripped T1's support); isotropic,
      D = 3.0e-3 mm²/s, bright b0 (S0 = 2400).
    * GM    isotropic, D = 0.8e-3 mm²/s, S0 = 1300.
    * WM    anisotropic everywhere: a cylindrical tensor (λ∥ 1.4e-3, λ⊥ 0.6e-3) along a smooth
      orientation field that is fixed in MNI space (:func:`wm_orientation_mni`; a random
      anatomy draws its own), S0 = 1000.
    * Bundles replace WM and GM (never CSF) inside their tubes: cylindrical tensors along the
      tube's tangent (CST λ∥ 1.65e-3, λ⊥ 0.38e-3); where tubes overlap the voxel is a
      mixture. The corpus callosum yields half its fraction where it crosses the CSTs in the
      corona radiata (CST:CC = 2:1 at the crossing's core), so the CST stays dominant there.

    The signal is the closed form S = Σ_k f_k S0_k exp(−b gᵀ D_k g) with g the gradient
    direction in world space, then Rician noise with σ = S0_WM / snr.

Subject anatomy
    A random MNI→subject affine (rotation 4–10° about a random axis, per-axis scale 0.9–1.1,
    shift up to 5 mm) and an oblique image grid (5–15° off LAS or RAS) cropped to the brain's
    bounding box. Everything (tissue maps, fibre tangents, truth masks) is computed by mapping
    every subject voxel centre to MNI and looking it up there, so all of it moves together.

Gradient convention (the one dcm2niix writes, BIDS/FSL)
    The gradient directions are fixed in the scanner's world frame (``gradients_world``, RAS+).
    The ``.bvec`` written for an image holds them *along the image's voxel axes*
    (``v = Rᵀ g`` with ``R`` the affine's column-normalised 3×3), and the first component is
    negated when ``det(affine[:3, :3]) > 0`` (FSL treats every image as radiologically stored).
    LAS images (det < 0) therefore get the voxel-axis vectors unchanged, RAS images (det > 0)
    get ``-v_x``: a reader that forgets the flip mirrors every oblique fibre of the RAS
    subjects while the LAS ones still look right.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

# --------------------------------------------------------------------------------------------
# constants of the model
# --------------------------------------------------------------------------------------------

B_VALUE = 1000.0
N_B0 = 5
N_DIRS = 32

S0 = {"wm": 1000.0, "gm": 1300.0, "csf": 2400.0}
D_CSF = 3.0e-3
D_GM = 0.8e-3
WM_EIG = (1.4e-3, 0.6e-3)  # background white matter (λ∥, λ⊥)
BUNDLE_EIG = {
    "cst_left": (1.65e-3, 0.38e-3),
    "cst_right": (1.65e-3, 0.38e-3),
    "distractor_left": (1.6e-3, 0.35e-3),
    "distractor_right": (1.6e-3, 0.35e-3),
    "cc": (1.7e-3, 0.3e-3),
}
#: bundle -> how much of its tube fraction it gives up where it overlaps the other bundles
CROSSING_YIELD = {"cc": 0.5}
LESION_EIG = (1.35e-3, 0.72e-3)  # damaged CST compartment: FA ≈ 0.37 (healthy 0.73), MD +15 %
TAPER_MM = 1.0  # half width of the soft tube edge (tube fraction 1 → 0 over r ± TAPER_MM)

#: Bundle centre lines in MNI mm: (x, y, z, tube radius). Left side; the right is mirrored.
_CST_LEFT = [
    (-4.0, -38.0, -50.0, 3.0),   # medullary pyramid
    (-6.0, -31.0, -37.0, 3.5),   # lower pons
    (-8.0, -25.0, -25.0, 3.5),   # basis pontis
    (-12.0, -19.0, -12.0, 3.5),  # cerebral peduncle
    (-18.0, -16.0, -2.0, 3.5),
    (-22.0, -15.0, 6.0, 3.5),    # posterior limb of the internal capsule
    (-26.0, -17.0, 20.0, 4.0),   # corona radiata
    (-28.0, -18.0, 32.0, 4.0),   # crossing with the corpus callosum body
    (-32.0, -19.0, 47.0, 4.0),   # centrum semiovale
    (-35.0, -21.0, 60.0, 4.0),   # precentral gyrus (hand knob) white matter
    (-37.0, -22.0, 69.0, 3.5),   # precentral cortex
]
_DISTRACTOR_LEFT = [  # frontopontine fibres: share the pons, end in prefrontal cortex
    (-9.0, -29.0, -38.0, 3.0),
    (-11.0, -24.0, -27.0, 3.0),
    (-10.0, -15.0, -12.0, 3.0),  # medial cerebral peduncle
    (-14.0, -3.0, -1.0, 3.0),
    (-16.0, 8.0, 6.0, 3.0),      # anterior limb of the internal capsule
    (-20.0, 22.0, 16.0, 3.5),
    (-24.0, 36.0, 26.0, 3.5),
    (-27.0, 49.0, 33.0, 3.0),    # prefrontal cortex
]
_CC_BODY = [  # corpus callosum body, left to right, arching over the ventricles
    (-48.0, -17.0, 41.0, 3.5),
    (-38.0, -17.0, 36.0, 4.0),
    (-28.0, -17.0, 33.0, 4.0),
    (-18.0, -16.0, 31.0, 4.0),
    (-9.0, -15.0, 29.0, 4.0),
    (0.0, -15.0, 26.0, 4.0),
    (9.0, -15.0, 29.0, 4.0),
    (18.0, -16.0, 31.0, 4.0),
    (28.0, -17.0, 33.0, 4.0),
    (38.0, -17.0, 36.0, 4.0),
    (48.0, -17.0, 41.0, 3.5),
]


def _mirror(points):
    return [(-x, y, z, r) for (x, y, z, r) in points]


#: bundle name -> control points (x, y, z, radius) in MNI mm
BUNDLES: dict[str, list[tuple[float, float, float, float]]] = {
    "cst_left": _CST_LEFT,
    "cst_right": _mirror(_CST_LEFT),
    "distractor_left": _DISTRACTOR_LEFT,
    "distractor_right": _mirror(_DISTRACTOR_LEFT),
    "cc": _CC_BODY,
}

#: lesion name -> (bundle, MNI z range of the damaged segment, description)
LESIONS = {
    "cst_left_ic": ("cst_left", (-2.0, 14.0),
                    "left CST, posterior limb of the internal capsule (MNI z -2..14 mm)"),
    "cst_right_ic": ("cst_right", (-2.0, 14.0),
                     "right CST, posterior limb of the internal capsule (MNI z -2..14 mm)"),
}
_LESION_ALIASES = {"left": "cst_left_ic", "right": "cst_right_ic"}


# --------------------------------------------------------------------------------------------
# gradient table
# --------------------------------------------------------------------------------------------

def _hemisphere_directions(n: int) -> np.ndarray:
    """``n`` well spread unit vectors on the upper hemisphere (Fibonacci spiral, closed form)."""
    golden = math.pi * (3.0 - math.sqrt(5.0))
    k = np.arange(n, dtype=float)
    z = 1.0 - (k + 0.5) / n          # z in (0, 1): one hemisphere, antipodes are redundant
    r = np.sqrt(1.0 - z * z)
    phi = golden * k
    d = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    d = np.round(d, 6)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def gradient_scheme(n_b0: int = N_B0, n_directions: int = N_DIRS,
                    b_value: float = B_VALUE) -> tuple[np.ndarray, np.ndarray]:
    """(bvals (N,), gradient directions in world RAS+ (N, 3)); b0 rows are zero vectors.

    The default is the sample study's scheme: 5 b0 volumes + 32 directions at b = 1000 s/mm²
    (37 volumes), a b0 first, last and after every 8 directions; ``b_value`` sets the shell
    (the held-back clinical scans go up to b 2500). Other counts (larger
    synthetic sessions, ``benchmarks/memory.py``) keep that layout: a b0 first, the directions
    split as evenly as possible between the following b0s, the last b0 at the end (with a
    single b0, all directions follow it).
    """
    if n_b0 < 1 or n_directions < 0:
        raise ValueError(f"need n_b0 >= 1 and n_directions >= 0, not {n_b0}, {n_directions}")
    dirs = _hemisphere_directions(n_directions)
    gaps = max(n_b0 - 1, 1)
    per_gap = [n_directions // gaps + (1 if i < n_directions % gaps else 0) for i in range(gaps)]
    bvals, vecs = [], []
    di = 0
    for blk in range(n_b0):
        bvals.append(0.0)
        vecs.append(np.zeros(3))
        if blk < gaps:
            for _ in range(per_gap[blk]):
                bvals.append(float(b_value))
                vecs.append(dirs[di])
                di += 1
    return np.array(bvals), np.array(vecs)


# --------------------------------------------------------------------------------------------
# conventions
# --------------------------------------------------------------------------------------------

def axes_rotation(affine: np.ndarray) -> np.ndarray:
    """The affine's 3×3 with unit-length columns (voxel axes as world unit vectors)."""
    lin = np.asarray(affine, float)[:3, :3]
    return lin / np.linalg.norm(lin, axis=0, keepdims=True)


def world_to_bids_bvecs(g_world: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (RAS+) gradient directions (N, 3) → BIDS/FSL ``.bvec`` vectors (N, 3).

    ``v = Rᵀ g`` (components along the voxel axes), then ``v_x → −v_x`` if the affine's
    determinant is positive. See the module docstring.
    """
    v = np.asarray(g_world, float) @ axes_rotation(affine)
    if np.linalg.det(np.asarray(affine, float)[:3, :3]) > 0:
        v[:, 0] = -v[:, 0]
    return v


def bids_bvecs_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`world_to_bids_bvecs`: BIDS ``.bvec`` vectors (N, 3) → world RAS+."""
    v = np.array(bvecs, float, copy=True)
    if np.linalg.det(np.asarray(affine, float)[:3, :3]) > 0:
        v[:, 0] = -v[:, 0]
    return v @ axes_rotation(affine).T


def bids_bvecs_to_voxel(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """BIDS ``.bvec`` vectors (N, 3) → unit vectors along the voxel axes (flip undone)."""
    v = np.array(bvecs, float, copy=True)
    if np.linalg.det(np.asarray(affine, float)[:3, :3]) > 0:
        v[:, 0] = -v[:, 0]
    return v


# --------------------------------------------------------------------------------------------
# MNI template
# --------------------------------------------------------------------------------------------

def _template_dir() -> str:
    from cstbatch.steps.atlas import nilearn_data_dir

    return str(nilearn_data_dir())


def template_path(kind: str) -> str:
    """Path of the installed ICBM 2009a map ``kind`` in {"t1", "gm", "wm"}."""
    return os.path.join(_template_dir(), f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz")


@dataclass(frozen=True)
class _Template:
    affine: np.ndarray          # voxel -> MNI mm (1 mm, axis aligned) of the cropped arrays
    brain: np.ndarray           # float32 support of the skull-stripped T1
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain_points: np.ndarray    # (P, 3) MNI mm of brain voxels on a 3 mm lattice (bbox use)


@functools.lru_cache(maxsize=1)
def _load_template() -> _Template:
    t1_img = nib.load(template_path("t1"))
    t1 = np.asanyarray(t1_img.dataobj)
    gm = np.asanyarray(nib.load(template_path("gm")).dataobj).astype(np.float32) / 255.0
    wm = np.asanyarray(nib.load(template_path("wm")).dataobj).astype(np.float32) / 255.0
    brain = (t1 > 0)
    idx = np.argwhere(brain)
    lo = np.maximum(idx.min(0) - 6, 0)
    hi = np.minimum(idx.max(0) + 7, brain.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    brain = brain[sl].astype(np.float32)
    gm, wm = gm[sl] * brain, wm[sl] * brain
    tot = gm + wm
    over = tot > 1.0
    gm[over] /= tot[over]
    wm[over] /= tot[over]
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    aff = t1_img.affine.copy()
    aff[:3, 3] += aff[:3, :3] @ lo
    pts = np.argwhere(brain[::3, ::3, ::3] > 0) * 3
    brain_points = pts @ aff[:3, :3].T + aff[:3, 3]
    return _Template(aff, brain, gm, wm, csf, brain_points)


@functools.lru_cache(maxsize=4)
def _smoothed_maps(voxel_mm: float) -> dict[str, np.ndarray]:
    """Template maps blurred to roughly the target voxel's point spread (partial volume)."""
    t = _load_template()
    sigma = max(0.0, float(voxel_mm) / 2.355)
    out = {}
    for name in ("brain", "gm", "wm", "csf"):
        arr = getattr(t, name)
        out[name] = ndimage.gaussian_filter(arr, sigma, mode="constant") if sigma > 0.3 else arr
    return out


def wm_orientation_mni(p: np.ndarray, waves=None) -> np.ndarray:
    """Smooth unit orientation field of the background white matter, in MNI space.

    ``p``: (..., 3) MNI mm → (..., 3) unit vectors (angles vary on a ~3–6 cm scale).
    ``waves``: None for the sample study's fixed field, or a random anatomy's own
    (:attr:`cstbatch.sample.anatomy.Anatomy.background`: the azimuth's and the elevation's
    plane waves, each ``(kx, ky, kz, phase, amplitude)`` with k in rad/mm).
    """
    if waves:
        theta, phi = (sum(a * np.sin(p @ np.array(k) + ph) for (*k, ph, a) in w) for w in waves)
        return np.stack([np.cos(phi) * np.cos(theta), np.cos(phi) * np.sin(theta), np.sin(phi)], -1)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    theta = 1.2 * np.sin(y / 40.0) + 0.8 * np.cos(z / 33.0) + 0.5 * np.sin(x / 28.0)
    phi = 0.9 * np.sin(x / 37.0 + z / 45.0) + 0.4 * np.cos(y / 50.0)
    return np.stack([np.cos(phi) * np.cos(theta), np.cos(phi) * np.sin(theta), np.sin(phi)], -1)


# --------------------------------------------------------------------------------------------
# centre lines
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Centreline:
    points: np.ndarray   # (M, 3) MNI mm, ~0.5 mm apart
    tangents: np.ndarray  # (M, 3) unit
    radius: np.ndarray   # (M,) mm
    tree: cKDTree


def _catmull_rom(ctrl: np.ndarray, samples: int = 40) -> np.ndarray:
    p = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[:, None]
    segs = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        segs.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                           + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    segs.append(ctrl[-1:])
    return np.vstack(segs)


@functools.lru_cache(maxsize=None)
def centreline(name: str) -> Centreline:
    """Smooth centre line of bundle ``name`` resampled every 0.5 mm (MNI mm)."""
    return centreline_of(tuple(tuple(float(v) for v in p) for p in BUNDLES[name]))


@functools.lru_cache(maxsize=256)
def centreline_of(control: tuple) -> Centreline:
    """Smooth centre line through ``control`` points (x, y, z, radius), every 0.5 mm."""
    ctrl = np.array(control, float)
    dense = _catmull_rom(ctrl)  # columns x, y, z, radius interpolated together
    seg = np.linalg.norm(np.diff(dense[:, :3], axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(math.ceil(s[-1] / 0.5)) + 1)
    si = np.linspace(0.0, s[-1], n)
    res = np.stack([np.interp(si, s, dense[:, c]) for c in range(4)], axis=1)
    pts = res[:, :3]
    tan = np.gradient(pts, axis=0)
    tan /= np.linalg.norm(tan, axis=1, keepdims=True)
    return Centreline(pts, tan, res[:, 3], cKDTree(pts))


def _tube_fraction(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    """1 inside r − TAPER_MM, 0 beyond r + TAPER_MM, raised cosine between (0.5 at d = r)."""
    u = np.clip((d - (r - TAPER_MM)) / (2 * TAPER_MM), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * u))


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------

def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * (k @ k)


@dataclass(frozen=True)
class SubjectGeometry:
    mni_to_subject: np.ndarray  # 4x4, MNI mm -> subject world mm
    affine: np.ndarray          # 4x4, voxel -> subject world (RAS+) mm, oblique
    shape: tuple[int, int, int]
    orientation: str


def subject_geometry(seed, voxel_mm: float = 2.0, orientation: str = "LAS",
                     margin: int = 2, extra_scale=None) -> SubjectGeometry:
    """The random anatomy and image grid of one subject (cheap: no image data is computed).

    All random draws come from ``numpy.random.default_rng(seed)`` in a fixed order, so the
    geometry of a subject is a function of (seed, voxel_mm, orientation) only.
    """
    if orientation not in ("LAS", "RAS"):
        raise ValueError(f"orientation must be 'LAS' or 'RAS', not {orientation!r}")
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    rot = _rotation(axis, math.radians(rng.uniform(4.0, 10.0)))
    scale = rng.uniform(0.9, 1.1, size=3)
    shift = rng.uniform(-5.0, 5.0, size=3)
    m2s = np.eye(4)
    if extra_scale is not None:  # another brain size / shape (anatomy sweep), same draws
        scale = scale * np.asarray(extra_scale, float)
    m2s[:3, :3] = rot @ np.diag(scale)
    m2s[:3, 3] = shift
    obl_axis = rng.normal(size=3)
    obl = _rotation(obl_axis, math.radians(rng.uniform(5.0, 15.0)))
    base = np.diag([-1.0, 1.0, 1.0]) if orientation == "LAS" else np.eye(3)
    rimg = obl @ base
    lin = rimg * float(voxel_mm)
    pts = _load_template().brain_points @ m2s[:3, :3].T + m2s[:3, 3]
    q = pts @ np.linalg.inv(lin).T
    lo = np.floor(q.min(0)) - margin
    hi = np.ceil(q.max(0)) + margin
    shape = tuple(int(v) for v in (hi - lo + 1))
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = lin @ lo
    return SubjectGeometry(m2s, aff, shape, orientation)


# --------------------------------------------------------------------------------------------
# the session
# --------------------------------------------------------------------------------------------

@dataclass
class PhantomSession:
    """One synthetic DWI session (arrays in the image's voxel grid).

    Attributes
    ----------
    data : float32 (X, Y, Z, N)
        Noisy magnitude signal (Rician), before any integer rounding.
    signal : float32 (X, Y, Z, N)
        The noise-free signal.
    affine : (4, 4)
        voxel → subject world RAS+ mm (oblique; LAS has det < 0, RAS det > 0).
    bvals : (N,)
    bvecs : (N, 3)
        BIDS/FSL convention (see module docstring): what goes into the ``.bvec`` file
        (transposed). ``bvecs_voxel`` / ``gradients_world`` give the other two frames.
    gradients_world : (N, 3)
        The same directions in world RAS+ (what the scanner applied).
    fa_noisefree : float32 (X, Y, Z)
        dipy ``TensorModel`` FA of ``signal`` inside the brain, 0 elsewhere.
    masks : dict[str, bool ndarray]
        ``cst_left``, ``cst_right``, ``distractor`` (both sides), ``distractor_left``,
        ``distractor_right``, ``cc``, ``brain`` and, with a lesion, ``lesion``.
    fractions : dict[str, float32 ndarray]
        Volume fraction of each compartment (``csf``, ``gm``, ``wm`` background and every
        bundle of :data:`BUNDLES`).
    directions : dict[str, float32 (X, Y, Z, 3)]
        Per bundle, the unit tangent of its centre line in subject *world* space at each voxel
        the tube touches (zeros elsewhere).
    subject_to_mni, mni_to_subject : (4, 4)
        world subject mm ↔ MNI mm.
    """

    data: np.ndarray
    signal: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    gradients_world: np.ndarray
    fa_noisefree: np.ndarray | None
    masks: dict[str, np.ndarray]
    fractions: dict[str, np.ndarray]
    directions: dict[str, np.ndarray]
    subject_to_mni: np.ndarray
    mni_to_subject: np.ndarray
    orientation: str
    lesion: str | None
    snr: float
    sigma: float
    seed: object
    noise_seed: object
    voxel_mm: float
    info: dict = field(default_factory=dict)

    @property
    def bvecs_voxel(self) -> np.ndarray:
        """Gradient directions along the voxel axes (BIDS x flip undone)."""
        return bids_bvecs_to_voxel(self.bvecs, self.affine)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def voxel_to_mni(self) -> np.ndarray:
        """4x4 voxel → MNI mm."""
        return self.subject_to_mni @ self.affine

    def truth(self) -> dict:
        """JSON-able description of how the session was made (written as ``truth.json``)."""
        out = {
            "orientation": self.orientation,
            "affine_determinant_sign": int(np.sign(np.linalg.det(self.affine[:3, :3]))),
            "snr": self.snr,
            "noise_sigma": self.sigma,
            "snr_reference": "b0 signal of pure white matter (S0_WM = %g)" % S0["wm"],
            "seed": _jsonable_seed(self.seed),
            "noise_seed": _jsonable_seed(self.noise_seed),
            "voxel_mm": self.voxel_mm,
            "shape": list(self.data.shape),
            "lesion": None,
            "bvec_convention": ("BIDS/FSL: components along the image voxel axes, first "
                                "component negated when det(affine[:3,:3]) > 0"),
            "bundles_mni_mm": {k: [list(p) for p in v] for k, v in BUNDLES.items()},
            "model": {
                "b_value": float(self.bvals.max()), "s0": S0, "d_csf": D_CSF, "d_gm": D_GM,
                "wm_eigenvalues": list(WM_EIG),
                "bundle_eigenvalues": {k: list(v) for k, v in BUNDLE_EIG.items()},
            },
        }
        if self.lesion is not None:
            bundle, zr, desc = LESIONS[self.lesion]
            out["lesion"] = {
                "name": self.lesion, "bundle": bundle, "side": bundle.split("_")[1],
                "mni_z_range_mm": list(zr), "description": desc,
                "eigenvalues": list(LESION_EIG),
                "n_voxels": int(self.masks["lesion"].sum()),
            }
        out.update(self.info)
        return out


def _jsonable_seed(seed):
    if seed is None or isinstance(seed, (int, np.integer)):
        return None if seed is None else int(seed)
    return [int(s) for s in seed]


def _cyl_signal(g: np.ndarray, b: np.ndarray, v: np.ndarray, eig) -> np.ndarray:
    """exp(−b gᵀDg) for cylindrical tensors: v (P, 3) unit, eig (λ∥, λ⊥) scalars or (P,) → (P, N)."""
    lpar, lperp = eig
    lpar = np.asarray(lpar, np.float32)
    lperp = np.asarray(lperp, np.float32)
    if lpar.ndim:
        lpar, lperp = lpar[:, None], lperp[:, None]
    c2 = (v @ g.T) ** 2
    return np.exp(-b[None, :] * (lperp + (lpar - lperp) * c2))


def resolve_lesion(lesion: str | None) -> str | None:
    if lesion is None:
        return None
    name = _LESION_ALIASES.get(lesion, lesion)
    if name not in LESIONS:
        raise ValueError(f"unknown lesion {lesion!r}; known: {sorted(LESIONS) + sorted(_LESION_ALIASES)}")
    return name


def fit_fa(signal: np.ndarray, bvals: np.ndarray, bvecs_voxel: np.ndarray,
           mask: np.ndarray) -> np.ndarray:
    """dipy TensorModel FA of ``signal`` inside ``mask`` (float32, 0 outside).

    Log-linear least squares ("LS"): exact enough for a noise-free signal and ~8x faster than
    WLS at 2 mm.
    """
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    gtab = gradient_table(np.asarray(bvals, float), bvecs=np.asarray(bvecs_voxel, float))
    model = TensorModel(gtab, fit_method="LS")
    fa = np.zeros(signal.shape[:3], np.float32)
    vox = signal[mask].astype(np.float64)
    if vox.size:
        fit = model.fit(vox)
        fa[mask] = np.nan_to_num(np.clip(fit.fa, 0.0, 1.0)).astype(np.float32)
    return fa


def make_phantom_session(*, seed, voxel_mm: float = 2.0, snr: float = 30.0,
                         orientation: str = "LAS", lesion: str | None = None,
                         noise_seed=None, compute_fa: bool = True, n_b0: int = N_B0,
                         n_directions: int = N_DIRS, anatomy=None,
                         b_value: float = B_VALUE,
                         lesion_eigenvalues: tuple[float, float] = LESION_EIG) -> PhantomSession:
    """Simulate one DWI session of the MNI-shaped phantom.

    Parameters
    ----------
    seed
        Anything ``numpy.random.default_rng`` accepts; drives the subject's anatomy (random
        MNI→subject affine, oblique grid). Two sessions of one subject share it.
    voxel_mm
        Isotropic voxel size (2 for the sample study; 4 makes tiny sessions for tests).
    snr
        b0 SNR of pure white matter: σ = S0_WM / snr (``snr <= 0`` or ``inf``: no noise).
    orientation
        "LAS" (det < 0) or "RAS" (det > 0) base orientation of the oblique grid.
    lesion
        None, or a key of :data:`LESIONS` (aliases "left"/"right"): the CST compartment of
        that segment becomes nearly isotropic.
    lesion_eigenvalues
        (λ∥, λ⊥) of the damaged CST compartment, mm²/s. The default :data:`LESION_EIG` (FA ≈
        0.37) is a moderate lesion; (1.1e-3, 0.85e-3) (FA ≈ 0.15) is a chronic infarct's core,
        below the tracker's stopping FA.
    noise_seed
        Seed of the Rician noise (default: ``seed``); a new session of the same subject uses a
        new noise seed.
    compute_fa
        Fit the noise-free FA with dipy (a few seconds at 2 mm); False leaves it None.
    n_b0, n_directions
        Gradient scheme (:func:`gradient_scheme`); the default is the sample study's 5 + 32.
    b_value
        The shell's b-value (s/mm²); every compartment's signal is simulated at it.
    anatomy
        None (the fixed bundles of :data:`BUNDLES`, the sample study), or a
        :class:`cstbatch.sample.anatomy.Anatomy`: its own bundles (several tubes may form one
        truth mask, e.g. the branches of a fanning CST), eigenvalues, crossing yields, an
        extra brain scaling and the background white matter's orientations.
    """
    lesion = resolve_lesion(lesion)
    if anatomy is None:
        bundles = {n: tuple(tuple(p) for p in v) for n, v in BUNDLES.items()}
        groups = {n: n for n in BUNDLES}
        eigs, yields, extra_scale = BUNDLE_EIG, CROSSING_YIELD, None
    else:
        bundles, groups = anatomy.bundles, anatomy.groups
        eigs, yields, extra_scale = anatomy.eigenvalues, anatomy.crossing_yield, anatomy.scale
    geo = subject_geometry(seed, voxel_mm, orientation, extra_scale=extra_scale)
    aff = geo.affine
    shape = geo.shape
    s2m = np.linalg.inv(geo.mni_to_subject)
    vox2mni = s2m @ aff
    tpl = _load_template()
    maps = _smoothed_maps(float(voxel_mm))

    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    mni = ijk @ vox2mni[:3, :3].T.astype(np.float32) + vox2mni[:3, 3].astype(np.float32)
    tvox = (mni - tpl.affine[:3, 3]) @ np.linalg.inv(tpl.affine[:3, :3]).T.astype(np.float32)
    brain_all = ndimage.map_coordinates(maps["brain"], tvox.T, order=1, mode="constant", cval=0.0)
    inside = np.flatnonzero(brain_all > 0.02)
    p_mni = mni[inside].astype(np.float64)
    tv = tvox[inside].T
    gm = ndimage.map_coordinates(maps["gm"], tv, order=1, mode="constant")
    wm = ndimage.map_coordinates(maps["wm"], tv, order=1, mode="constant")
    csf = ndimage.map_coordinates(maps["csf"], tv, order=1, mode="constant")
    tot = gm + wm + csf
    over = tot > 1.0
    gm[over] /= tot[over]
    wm[over] /= tot[over]
    csf[over] /= tot[over]
    tissue = gm + wm  # what bundles may occupy

    lin = geo.mni_to_subject[:3, :3]
    n_in = inside.size
    bundle_f: dict[str, np.ndarray] = {}
    bundle_dir: dict[str, np.ndarray] = {}
    bundle_z: dict[str, np.ndarray] = {}
    for name, cl in ((n, centreline_of(bundles[n])) for n in bundles):
        rmax = float(cl.radius.max()) + TAPER_MM
        d, idx = cl.tree.query(p_mni, k=1, distance_upper_bound=rmax)
        hit = np.isfinite(d)
        f = np.zeros(n_in, np.float32)
        f[hit] = _tube_fraction(d[hit], cl.radius[idx[hit]])
        t = np.zeros((n_in, 3), np.float32)
        ts = cl.tangents[idx[hit]] @ lin.T
        t[hit] = ts / np.linalg.norm(ts, axis=1, keepdims=True)
        z = np.full(n_in, np.nan)
        z[hit] = cl.points[idx[hit], 2]
        bundle_f[name], bundle_dir[name], bundle_z[name] = f, t, z

    # where a yielding bundle (the corpus callosum) crosses the others it keeps only part of
    # its share, so the CST stays the dominant population (2:1 at the crossing's core), as in
    # the corona radiata, and a tensor model can still follow it through the crossing
    dominant = np.minimum(1.0, np.sum([bundle_f[n] for n in bundles if n not in yields],
                                      axis=0))
    weight = {n: bundle_f[n] * (1.0 - yields.get(n, 0.0) * dominant) for n in bundles}
    fsum = np.sum([weight[n] for n in bundles], axis=0)
    share = np.minimum(fsum, 1.0)
    norm = np.maximum(fsum, 1.0)
    frac = {name: (weight[name] / norm * tissue).astype(np.float32) for name in bundles}
    frac["gm"] = (gm * (1.0 - share)).astype(np.float32)
    frac["wm"] = (wm * (1.0 - share)).astype(np.float32)
    frac["csf"] = csf.astype(np.float32)

    bvals, g_world = gradient_scheme(n_b0, n_directions, b_value)
    g = g_world.astype(np.float32)
    b = bvals.astype(np.float32)
    sig = np.zeros((n_in, bvals.size), np.float32)
    sig += (frac["csf"] * S0["csf"])[:, None] * np.exp(-b * D_CSF)[None, :]
    sig += (frac["gm"] * S0["gm"])[:, None] * np.exp(-b * D_GM)[None, :]
    wm_dir = wm_orientation_mni(p_mni, None if anatomy is None else anatomy.background) @ lin.T
    wm_dir = (wm_dir / np.linalg.norm(wm_dir, axis=1, keepdims=True)).astype(np.float32)
    sel = frac["wm"] > 0
    sig[sel] += (frac["wm"][sel] * S0["wm"])[:, None] * _cyl_signal(g, b, wm_dir[sel], WM_EIG)

    lesion_w = np.zeros(n_in, np.float32)
    lesion_ws = {}
    if lesion is not None:
        lb, (z0, z1), _ = LESIONS[lesion]
        for name in (n for n in bundles if groups[n] == lb):
            zc = bundle_z[name]
            ok = np.isfinite(zc)
            # smooth 2 mm ramps at both ends of the damaged segment
            ramp = np.clip(np.minimum(zc[ok] - (z0 - 1.0), (z1 + 1.0) - zc[ok]) / 2.0, 0.0, 1.0)
            lesion_ws[name] = np.zeros(n_in, np.float32)
            lesion_ws[name][ok] = ramp
            lesion_w = np.maximum(lesion_w, lesion_ws[name])
    for name in bundles:
        sel = frac[name] > 0
        if not sel.any():
            continue
        lpar, lperp = eigs[name]
        if name in lesion_ws:
            w = lesion_ws[name][sel]
            eig = (lpar + w * (lesion_eigenvalues[0] - lpar), lperp + w * (lesion_eigenvalues[1] - lperp))
        else:
            eig = (lpar, lperp)
        sig[sel] += (frac[name][sel] * S0["wm"])[:, None] * _cyl_signal(g, b, bundle_dir[name][sel], eig)

    nvox = int(np.prod(shape))
    signal = np.zeros((nvox, bvals.size), np.float32)
    signal[inside] = sig
    signal = signal.reshape(shape + (bvals.size,))

    sigma = 0.0 if (snr is None or snr <= 0 or not np.isfinite(snr)) else S0["wm"] / float(snr)
    if sigma > 0:
        rng = np.random.default_rng(seed if noise_seed is None else noise_seed)
        data = np.empty_like(signal)
        for v in range(signal.shape[3]):  # volume by volume: keeps the peak memory low
            re = rng.standard_normal(shape, dtype=np.float32)
            re *= sigma
            re += signal[..., v]
            im = rng.standard_normal(shape, dtype=np.float32)
            im *= sigma
            np.hypot(re, im, out=data[..., v])
    else:
        data = signal.copy()

    def to_vol(vals, dtype=np.float32):
        out = np.zeros(nvox, dtype)
        out[inside] = vals
        return out.reshape(shape)

    fractions = {k: to_vol(v) for k, v in frac.items()}
    directions = {}
    for name in bundles:
        dv = np.zeros((nvox, 3), np.float32)
        dv[inside] = bundle_dir[name]
        directions[name] = dv.reshape(shape + (3,))
    tissue_vol = to_vol(tissue)
    brain = to_vol(gm + wm + csf) >= 0.5
    masks = {}
    for name in bundles:  # a truth mask is the union of its group's tubes
        m = (to_vol(bundle_f[name]) >= 0.5) & (tissue_vol >= 0.5)
        masks[groups[name]] = masks[groups[name]] | m if groups[name] in masks else m
    masks["distractor"] = np.zeros(shape, bool)
    for g in sorted(set(groups.values())):
        if g.startswith("distractor"):
            masks["distractor"] |= masks[g]
    masks["brain"] = brain
    if lesion is not None:
        masks["lesion"] = masks[LESIONS[lesion][0]] & (to_vol(lesion_w) >= 0.5)

    bvecs = world_to_bids_bvecs(g_world, aff)
    bvecs[bvals <= 50] = 0.0
    fa = None
    if compute_fa:
        fa = fit_fa(signal, bvals, bids_bvecs_to_voxel(bvecs, aff), brain)

    return PhantomSession(
        data=data, signal=signal, affine=aff, bvals=bvals, bvecs=bvecs, gradients_world=g_world,
        fa_noisefree=fa, masks=masks, fractions=fractions, directions=directions,
        subject_to_mni=s2m, mni_to_subject=geo.mni_to_subject.copy(), orientation=orientation,
        lesion=lesion, snr=float(snr), sigma=float(sigma), seed=seed, noise_seed=noise_seed,
        voxel_mm=float(voxel_mm),
        info={} if anatomy is None else {"anatomy": anatomy.describe()},
    )
