"""CST extraction on random phantom anatomies (issue 14): does it hold on anatomy it was not tuned to?

    python benchmarks/anatomy_sweep.py [--seed0 1000] [--n 20] [--voxel 3]
        [--methods passthrough,corridor] [--track csd_deterministic] [--cache DIR] [--json OUT]
        [--bvalue 1000] [--directions 32] [--b0s 5] [--fov-bottom-z Z]
        [--lesion random|none|left|right|alternate] [--lesion-eig PAR,PERP] [--phantom tubes|juelich]
        [--anatomy-version 2|1|3] [--cst-width 1.0] [--regions] [--fill]

Every subject ``i`` gets seed ``seed0 + i``: a new anatomy (:func:`cstbatch.sample.anatomy.
random_anatomy`: perturbed centre lines, a CST fanning to the whole precentral gyrus, other
crossings, brain size), SNR U(15, 30), LAS or RAS oblique grid, and in one subject of four a
lesion of one CST in the internal capsule. Each is processed by the pipeline's own step
functions (mask → tensor → registration to the atlas → tracking (in the CST corridor unless
``track_region=brain``) → each extraction method →
FA metrics), in one process without doit or files, and scored like the sample study
(:mod:`cstbatch.sample.accuracy`): Dice / precision / recall of the visited voxels with the
side's truth mask, swap Dice with the other side's mask, distractor share, |FA − noise-free FA|.
Prints one row per subject and method, then the minimum and median per method.

``--bvalue``, ``--directions`` and ``--b0s`` change the acquisition (the sample study's 5 b0s +
32 directions at b 1000 by default; the held-back clinical scans include 3 mm b 2000–2500
ones). ``--fov-bottom-z`` removes the axial slices (along the voxel axis nearest to S-I) whose
centre lies below that MNI z, as a field of view that stops in the pons does; the truth masks
are cut with the image.

``--lesion`` puts a capsular lesion in every subject (``left``, ``right``, or ``alternate``:
right for even seeds, left for odd) or in none, instead of one subject in four; anatomy, SNR and
grid stay those of the seed. ``--lesion-eig`` sets the damaged compartment's (λ∥, λ⊥) in
10⁻³ mm²/s: the default 1.35,0.72 (FA ≈ 0.37) is moderate, 1.1,0.85 (FA ≈ 0.15) an infarct
core below the tracker's stopping FA. The summary says on how many lesioned subjects the
lesioned side has the lower mean CST FA.

``--phantom juelich`` makes each subject with ``benchmarks/atlas_phantom.py`` instead: bundles
from the Juelich histological atlas (a CST of 17-23 cm³ with a continuous fan), a nonlinear
deformation per subject, no distractor; ``--lesion-eig`` does not apply to it.

``--anatomy-version 1`` gives each tube anatomy the sample phantom's fixed background white
matter, as every tube set scored before anatomy version 2 had; the bundles of a seed are the
same in both versions, so the two pair up (version 2 draws the background's orientations per
subject: :mod:`cstbatch.sample.anatomy`). With ``--phantom juelich``, version 1 moves the
bundles with each subject's deformation but not their fibre directions, as every atlas set
scored before the thirtieth landing had; version 2 carries the directions too
(``atlas_phantom.ATLAS_VERSION``). The bundles, masks and noise of a seed are the same in both.
Version 3 (atlas phantom only) lays each bundle's fibres only where the bundle is, so that the
CST's fibres reach the brainstem inside it; the fractions and truth masks are version 2's.

``--cst-width W`` multiplies every radius of the tube CST (trunk and fan branches) by ``W``,
the rest of each anatomy unchanged: 1.5 makes a CST of 13-20 cm³ per side, as wide as the atlas
phantom's, so whether a set's score is the tract's thinness (rim voxels at 2-3 mm) or its course
can be told apart.

``--regions`` adds, per method and side, the truth voxels, recall, false positives and precision
summed over the subjects by MNI region (:data:`REGION_Z`; from z 20 up also by |x|, the fan's leg,
hand and face branches): where a set's Dice is lost.

``--fill`` adds, per subject, ``fill_L`` / ``fill_R``: the Dice of a tract that fills the side's
true bundle (every voxel it touches, :func:`fill_dice`, which ``phantom_ceiling.py`` prints per
seed), and says on how many sides the method scores above it. Why: a visited-voxel Dice has a
ceiling that depends on the family and the voxel size (on the atlas phantom at 3 mm it lies
under 0.70), so a number means little without it. The subject is made again for it (seconds),
not read from the cache.

Develop on one seed range and report on a fresh one (``--seed0``). ``--cache`` keeps the
tracked and registered subjects (pickles keyed by seed, voxel, tracker and its options), so
other extraction methods can be compared on the same tractograms.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cstbatch.sample.anatomy import ANATOMY_VERSION  # noqa: E402

COLUMNS = ("seed", "method", "orient", "snr", "lesion", "n_L", "n_R", "dice_L", "dice_R", "prec_L", "prec_R",
           "rec_L", "rec_R", "swap_L", "swap_R", "distr", "faerr_L", "faerr_R", "course_mm")


#: the sample study's acquisition; ``--bvalue`` / ``--directions`` / ``--b0s`` / ``--fov-bottom-z``
ACQUISITION = {"b_value": 1000.0, "n_directions": 32, "n_b0": 5, "fov_bottom_z": None,
               "anatomy_version": ANATOMY_VERSION, "cst_width": 1.0,
               "lesion": "random", "lesion_eig": None, "phantom": "tubes"}


def _subject(seed: int, voxel: float, acq: dict | None = None):
    from cstbatch.sample.anatomy import random_anatomy
    from cstbatch.sample.phantom import make_phantom_session

    acq = {**ACQUISITION, **(acq or {})}
    rng = np.random.default_rng([seed, 99])
    snr = float(rng.uniform(15.0, 30.0))
    orientation = "LAS" if rng.uniform() < 0.5 else "RAS"
    lesion = None if rng.uniform() >= 0.25 else ("left" if rng.uniform() < 0.5 else "right")
    if acq["lesion"] != "random":
        lesion = {"none": None, "left": "left", "right": "right",
                  "alternate": "right" if seed % 2 == 0 else "left"}[acq["lesion"]]
    extra = {} if acq["lesion_eig"] is None else {"lesion_eigenvalues": tuple(1e-3 * v for v in acq["lesion_eig"])}
    if acq["phantom"] == "juelich":
        from atlas_phantom import make_atlas_session

        s = make_atlas_session(seed=seed, voxel_mm=voxel, snr=snr, orientation=orientation, lesion=lesion,
                               b_value=acq["b_value"], n_directions=acq["n_directions"], n_b0=acq["n_b0"],
                               version=acq["anatomy_version"])
    else:
        s = make_phantom_session(seed=seed, voxel_mm=voxel, snr=snr, orientation=orientation,
                                 lesion=lesion,
                                 anatomy=random_anatomy(seed, acq["anatomy_version"], acq["cst_width"]),
                                 b_value=acq["b_value"], n_directions=acq["n_directions"], n_b0=acq["n_b0"],
                                 **extra)
    if acq["fov_bottom_z"] is not None:
        _cut_below(s, float(acq["fov_bottom_z"]))
    return s


def _cut_below(s, z_mni: float) -> None:
    """Remove the slices of ``s`` whose centre lies below ``z_mni`` (``real_grids.slab_above``),
    from the image, the noise-free FA and the truth masks; the affine follows."""
    from real_grids import slab_above

    cut, s.affine = slab_above(s.data.shape, s.affine, s.subject_to_mni, z_mni)
    s.data = s.data[cut]
    s.fa_noisefree = s.fa_noisefree[cut]
    s.masks = {k: v[cut] for k, v in s.masks.items()}


def _process(seed: int, voxel: float, options: dict, acq: dict | None = None) -> dict:
    """Everything up to (not including) extraction, for one subject."""
    import nibabel as nib
    from dipy.core.gradients import gradient_table

    from cstbatch.engine.context import implementation_for
    from cstbatch.steps.gradients import bids_to_voxel_axes
    from cstbatch.steps.mask import mask_median_otsu
    from cstbatch.steps.model import fit_tensor_maps
    from cstbatch.steps.register import register_template
    from cstbatch.steps.track_region import tracking_inputs

    t0 = time.perf_counter()
    s = _subject(seed, voxel, acq)
    t_gen = time.perf_counter() - t0
    gtab = gradient_table(s.bvals, bvecs=bids_to_voxel_axes(s.bvecs, s.affine), b0_threshold=50)
    data = implementation_for("denoise", options, None).func(s.data, gtab, options)
    mask = mask_median_otsu(data, gtab, options)
    maps = fit_tensor_maps(data, gtab, mask)
    atlas = implementation_for("register", options, None).func(options)
    fa_img = nib.Nifti1Image(np.nan_to_num(maps["fa"]).astype(np.float32), s.affine)
    reg = register_template(fa_img, atlas, options)
    t1 = time.perf_counter()
    region, track_maps, _ = tracking_inputs(mask, maps, s.affine, lambda: reg.subject_to_mni, options)
    tracker = implementation_for("track", options, None)
    streamlines = tracker.func(data, gtab, region, track_maps, s.affine, options)
    t_track = time.perf_counter() - t1
    fa_truth = {k: float(s.fa_noisefree[s.masks[k]].mean()) for k in ("cst_left", "cst_right")}
    return {"seed": seed, "orientation": s.orientation, "snr": s.snr, "lesion": s.lesion,
            "affine": s.affine, "shape": s.data.shape[:3],
            "masks": {k: s.masks[k] for k in ("cst_left", "cst_right", "distractor")},
            "maps": {k: np.asarray(maps[k], np.float32) for k in ("fa", "md", "rd", "ad")},
            "streamlines": streamlines, "reg": reg, "fa_truth": fa_truth,
            "fov_mni_z": _fov_z(mask, s.affine, reg),
            "seconds": {"generate": t_gen, "track": t_track,
                        "total": time.perf_counter() - t0}}


def _fov_z(mask, affine, reg) -> list[float]:
    ijk = np.argwhere(mask)
    mni = ijk @ (reg.subject_to_mni @ affine)[:3, :3].T + (reg.subject_to_mni @ affine)[:3, 3]
    return [float(mni[:, 2].min()), float(mni[:, 2].max())]


def _cached(seed, voxel, options, cache: Path | None, acq: dict | None = None) -> dict:
    if cache is None:
        return _process(seed, voxel, options, acq)
    path = cache / f"s{seed}_{cache_key(seed, voxel, options, acq)}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    out = _process(seed, voxel, options, acq)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(out))
    tmp.replace(path)
    return out


def cache_key(seed, voxel, options, acq: dict | None = None) -> str:
    """What a cached subject depends on: the seed, the voxel size, the options of every step
    up to tracking, and the acquisition where it differs from the sample study's."""
    from cstbatch.study.options import OPTIONS

    track_keys = sorted(k for k in options if k.startswith(("track_", "mask_", "denoise")))
    ident = [seed, voxel, [(k, options[k]) for k in track_keys]]
    # the registration makes the tracking corridor too; keyed only when changed, so that the
    # caches written before it was keyed stay valid for the default
    reg_keys = sorted(k for k in options if k.startswith("registration_")
                      and k in OPTIONS and options[k] != OPTIONS[k].default)
    if reg_keys:
        ident.append([(k, options[k]) for k in reg_keys])
    # the keys of caches written before anatomy version 2 (of either family) stay valid for version 1
    base = {**ACQUISITION, "anatomy_version": 1}
    acq = {**ACQUISITION, **(acq or {})}
    changed = {k: v for k, v in acq.items() if base.get(k) != v}
    if changed:  # the sample study's acquisition keeps the keys older caches were written with
        ident.append(sorted(changed.items()))
    return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]


def _points_in(sl, mask, inv) -> int:
    v = np.rint(sl @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ok = np.all((v >= 0) & (v < np.array(mask.shape)), axis=1)
    v = v[ok]
    return int(mask[v[:, 0], v[:, 1], v[:, 2]].sum())


def extraction(subj: dict, method: str, options: dict):
    """(extractor, atlas, options) as the extract step calls ``method`` on the subject's
    streamlines in MNI mm: with how far the image reaches in MNI space and FA along them."""
    from cstbatch.engine.context import implementation_for
    from cstbatch.steps.extract_corridor import extraction_inputs

    cover = extraction_inputs(subj["maps"]["fa"], subj["affine"], subj["reg"].subject_to_mni,
                              subj["streamlines"], options)
    opts = {**options, "extraction_method": method, **cover}
    atlas = implementation_for("register", opts, None).func(opts)
    return implementation_for("extract", opts, None).func, atlas, opts


def score(subj: dict, method: str, options: dict) -> dict:
    from cstbatch.sample.accuracy import dice
    from cstbatch.steps.extract import selected_streamlines
    from cstbatch.steps.metrics import compute_metrics, visited_voxel_mask
    from cstbatch.steps.register import streamlines_to_mni
    from cstbatch.steps.track_region import mni_coordinates

    sl = subj["streamlines"]
    extract, atlas, opts = extraction(subj, method, options)
    t = time.perf_counter()
    sel = extract(streamlines_to_mni(sl, subj["reg"]), atlas, opts)
    seconds = time.perf_counter() - t
    bundles = {s: [np.asarray(x, np.float64) for x in selected_streamlines(sl, sel, s)] for s in ("left", "right")}
    res = compute_metrics(bundles["left"], bundles["right"], subj["maps"], subj["affine"], opts, mni=subj["reg"],
                          profile_from_z=sel.get("info", {}).get("inferior_top_z_mni"))
    masks, aff = subj["masks"], subj["affine"]
    row = {"seed": subj["seed"], "method": method, "orient": subj["orientation"], "snr": round(subj["snr"], 1),
           "lesion": subj["lesion"] or "-", "extract_s": seconds}
    mni_xyz = mni_coordinates(subj["shape"], aff, subj["reg"].subject_to_mni)
    for s, other in (("left", "right"), ("right", "left")):
        v = visited_voxel_mask(bundles[s], subj["shape"], aff)
        row[f"regions_{s[0].upper()}"] = region_counts(v, masks[f"cst_{s}"], mni_xyz)
        t_ = masks[f"cst_{s}"]
        k = s[0].upper()
        row[f"n_{k}"] = len(bundles[s])
        row[f"dice_{k}"] = dice(v, t_) if v.any() else 0.0
        row[f"prec_{k}"] = float((v & t_).sum() / v.sum()) if v.any() else 0.0
        row[f"rec_{k}"] = float((v & t_).sum() / t_.sum())
        row[f"swap_{k}"] = dice(v, masks[f"cst_{other}"]) if v.any() else 0.0
        fa = res[s]["fa_mean"]
        row[f"fa_{k}"] = fa
        row[f"fa_capsule_{k}"] = ((res[s].get("regions") or {}).get("internal_capsule") or {}).get("fa")
        row[f"faerr_{k}"] = math.inf if fa is None else abs(fa - subj["fa_truth"][f"cst_{s}"])
    row["course_mm"] = (res.get("course_asymmetry") or {}).get("median_mm", math.nan)
    inv = np.linalg.inv(aff)
    cst = masks["cst_left"] | masks["cst_right"]
    every = bundles["left"] + bundles["right"]
    bad = sum(_points_in(x, masks["distractor"], inv) > _points_in(x, cst, inv) for x in every)
    row["distr"] = bad / len(every) if every else math.nan
    return row


#: where the tract's truth and false positives lie (``--regions``): MNI z bands (brainstem, the
#: peduncle, the capsule, the corona radiata, under and in the gyrus) and, from z 20 up, |x| bands
#: (the fan's leg, hand and face branches)
REGION_Z = ((-80.0, -20.0), (-20.0, 0.0), (0.0, 20.0), (20.0, 40.0), (40.0, 90.0))
REGION_X = ((0.0, 25.0), (25.0, 40.0), (40.0, 99.0))


def region_counts(visited: np.ndarray, truth: np.ndarray, mni_xyz: np.ndarray) -> dict:
    """{(z band, |x| band): [truth voxels, of them visited, visited outside the truth]} for one
    side; ``mni_xyz`` (X, Y, Z, 3) the MNI mm of every voxel. Below z 20 one |x| band."""
    z, ax = mni_xyz[..., 2], np.abs(mni_xyz[..., 0])
    out = {}
    for zb in REGION_Z:
        for xb in (REGION_X if zb[0] >= 20 else ((0.0, 99.0),)):
            m = (z >= zb[0]) & (z < zb[1]) & (ax >= xb[0]) & (ax < xb[1])
            out[zb, xb] = [int((truth & m).sum()), int((visited & truth & m).sum()), int((visited & ~truth & m).sum())]
    return out


def region_table(rows: list[dict]) -> str:
    """The summed :func:`region_counts` of ``rows`` per side: recall and precision by region."""
    lines = ["side	MNI z	|x|	truth voxels	recall	false positives	precision"]
    for k in "LR":
        total: dict = {}
        for r in rows:
            for key, counts in r[f"regions_{k}"].items():
                total[key] = [a + b for a, b in zip(total.get(key, [0, 0, 0]), counts)]
        for (zb, xb), (n, hit, fp) in total.items():
            lines.append(f"{k}	{zb[0]:g}..{zb[1]:g}	{xb[0]:g}..{xb[1]:g}	{n}	{hit / max(n, 1):.2f}	{fp}	"
                         f"{hit / max(hit + fp, 1):.2f}")
    return "\n".join(lines)


def lesion_side_check(rows: list[dict]) -> str:
    """How many lesioned subjects have the lower CST FA on the lesioned side: over the whole
    tract, and in the internal capsule (where the phantoms' lesions lie; the report's and
    metrics.json's ``regions.internal_capsule``)."""
    les = [r for r in rows if r["lesion"] != "-"]
    if not les:
        return "none"
    ok = {"": 0, "capsule_": 0}
    for r in les:
        k, o = ("L", "R") if "left" in r["lesion"] else ("R", "L")
        for part in ok:
            a, b = r.get(f"fa_{part}{k}"), r.get(f"fa_{part}{o}")
            ok[part] += a is not None and b is not None and a < b
    return (f"the lesioned side has the lower mean FA in {ok['']} of {len(les)}, "
            f"the lower internal-capsule FA in {ok['capsule_']} of {len(les)}")


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def side_fraction(fractions: dict, side: str) -> np.ndarray:
    """The CST tube fraction of one side: the sum of its branches (``cst_left_hand`` …)."""
    parts = [v for k, v in fractions.items() if k.startswith(f"cst_{side}")]
    return np.sum(parts, axis=0) if parts else np.zeros(next(iter(fractions.values())).shape)


#: a voxel the true bundle "touches": a CST fraction above this
TOUCHED = 0.01


def cst_fraction(session, phantom: str, side: str) -> np.ndarray:
    """The side's CST fraction per voxel of a sweep subject of either family."""
    if phantom == "juelich":
        return session.info["cst_fraction"][f"cst_{side}"]
    return side_fraction(session.fractions, side)


def fill_dice(session, phantom: str, side: str, fraction: np.ndarray | None = None) -> float:
    """Dice of the voxels the true bundle touches with the truth: what a tract that fills the
    bundle would score. ``fraction``: the side's :func:`cst_fraction`, when the caller has it."""
    from cstbatch.sample.accuracy import dice

    f = cst_fraction(session, phantom, side) if fraction is None else fraction
    return float(dice(f > TOUCHED, session.masks[f"cst_{side}"]))


def _fill(seed: int, voxel: float, acq: dict) -> dict:
    s = _subject(seed, voxel, acq)
    return {f"fill_{side[0].upper()}": fill_dice(s, acq["phantom"], side) for side in ("left", "right")}


def fill_summary(rows: list[dict]) -> str:
    """On how many sides the method scores above a tract that fills the bundle, and by how much
    the fill beats it (median, range)."""
    gap = np.array([r[f"fill_{k}"] - r[f"dice_{k}"] for r in rows for k in ("L", "R")])
    fills = np.array([r[f"fill_{k}"] for r in rows for k in ("L", "R")])
    return (f"a tract filling the bundle scores min {fills.min():.3f} median {np.median(fills):.3f}; "
            f"the method scores above it on {int((gap < 0).sum())} of {gap.size} sides; fill minus "
            f"Dice median {np.median(gap):+.3f} ({gap.min():+.3f} to {gap.max():+.3f})")


def main(argv=None) -> int:
    from cstbatch.engine.threads import limit_threads
    from cstbatch.study.options import defaults

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed0", type=int, default=1000)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--voxel", type=float, default=3.0)
    ap.add_argument("--methods", default="passthrough")
    ap.add_argument("--track", default=None, help="track_method (default: the option's default)")
    ap.add_argument("--option", action="append", default=[], help="NAME=JSON, e.g. track_seed_density=2")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--bvalue", type=float, default=ACQUISITION["b_value"])
    ap.add_argument("--directions", type=int, default=ACQUISITION["n_directions"])
    ap.add_argument("--b0s", type=int, default=ACQUISITION["n_b0"])
    ap.add_argument("--fov-bottom-z", type=float, default=None,
                    help="remove the slices below this MNI z (a field of view that stops in the pons)")
    ap.add_argument("--lesion", default="random", choices=("random", "none", "left", "right", "alternate"))
    ap.add_argument("--lesion-eig", default=None, help="PAR,PERP of the lesion in 1e-3 mm^2/s (default 1.35,0.72)")
    ap.add_argument("--phantom", default="tubes", choices=("tubes", "juelich"),
                    help="tubes: cstbatch.sample.phantom (default); juelich: benchmarks/atlas_phantom.py")
    ap.add_argument("--anatomy-version", type=int, default=ANATOMY_VERSION, choices=(1, 2, 3),
                    help="tubes: 2 (default) draws each anatomy's background white matter; 1: the fixed field. "
                         "juelich: 2 (default) carries the fibre directions through the deformation; 1: does not; "
                         "3: as 2, with fibres that run only where their bundle is (atlas_phantom.ATLAS_VERSION)")
    ap.add_argument("--cst-width", type=float, default=1.0,
                    help="tubes: multiply every CST radius by this (1: the drawn radii, about 8 cm3 per side)")
    ap.add_argument("--regions", action="store_true",
                    help="also print recall and precision by MNI region, summed over the subjects")
    ap.add_argument("--fill", action="store_true",
                    help="also score a tract that fills each side's true bundle (fill_L / fill_R)")
    args = ap.parse_args(argv)
    lesion_eig = None if args.lesion_eig is None else [float(v) for v in args.lesion_eig.split(",")]
    if lesion_eig is not None and len(lesion_eig) != 2:
        ap.error(f"--lesion-eig: two numbers PAR,PERP expected, got {args.lesion_eig!r}")
    acq = {"b_value": args.bvalue, "n_directions": args.directions, "n_b0": args.b0s,
           "fov_bottom_z": args.fov_bottom_z, "lesion": args.lesion, "lesion_eig": lesion_eig,
           "phantom": args.phantom, "anatomy_version": args.anatomy_version, "cst_width": args.cst_width}
    if args.cst_width <= 0:
        ap.error(f"--cst-width must be positive, got {args.cst_width}")
    if args.anatomy_version == 3 and args.phantom != "juelich":
        ap.error("--anatomy-version 3 applies to the atlas phantom (--phantom juelich) only")
    if args.cst_width != 1.0 and args.phantom != "tubes":
        ap.error("--cst-width applies to the tube phantom only")
    if args.fill and args.fov_bottom_z is not None:
        ap.error("--fill scores the whole bundle; it does not apply with --fov-bottom-z")
    limit_threads()
    options = defaults()
    if args.track:
        options["track_method"] = args.track
    for item in args.option:
        name, _, value = item.partition("=")
        options[name] = json.loads(value)
    methods = [m for m in args.methods.split(",") if m]
    rows = []
    columns = COLUMNS + (("fill_L", "fill_R") if args.fill else ())
    print("\t".join(columns), flush=True)
    for i in range(args.n):
        subj = _cached(args.seed0 + i, args.voxel, options, args.cache, acq)
        fill = _fill(args.seed0 + i, args.voxel, acq) if args.fill else {}
        for m in methods:
            row = {**score(subj, m, options), **fill}
            row["track_s"] = round(subj["seconds"]["track"], 1)
            rows.append(row)
            print("\t".join(_fmt(row.get(c)) for c in columns), flush=True)
    print()
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        dl = np.array([min(r["dice_L"], r["dice_R"]) for r in rs])
        summ = {c: (float(np.nanmin([r[c] for r in rs])), float(np.nanmedian([r[c] for r in rs])),
                    float(np.nanmax([r[c] for r in rs])))
                for c in COLUMNS[5:]}
        print(f"{m}: worst-side Dice min {dl.min():.3f} median {np.median(dl):.3f}; "
              f"subjects with both Dice >= 0.70: {int((dl >= 0.70).sum())}/{len(rs)}")
        for c, (lo, med, hi) in summ.items():
            print(f"  {c:8s} min {lo:.3f}  median {med:.3f}  max {hi:.3f}")
        print(f"  lesions: {lesion_side_check(rs)}")
        if args.fill:
            print(f"  fill: {fill_summary(rs)}")
        if args.regions:
            print(region_table(rs))
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if not k.startswith("regions_")} for r in rows],
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
