"""Registration + CST extraction + metrics on a phantom session, timed and checked vs truth.

Runs the chain on one synthetic session of ``cstbatch.sample.phantom`` (tensor fit and
tractography first, untimed), then times register → streamlines_to_mni → extract → metrics,
reports peak RSS, and compares with the phantom's truth:

* Dice of each side's visited-voxel mask with the truth CST tube (target ≥ 0.70) and of the
  left bundle with the truth *right* CST (≤ 0.05);
* |FA mean − truth| (≤ 0.03), truth = mean noise-free tensor FA inside the truth CST mask
  sampled along the truth centre line's voxels (the same tube the streamlines follow);
* distractor share (< 5 %): selected streamlines whose points lie more in the distractor
  (frontopontine) tube than in the CST tube;
* registration error: mean |estimated − true| subject→MNI displacement over brain voxels.

    python benchmarks/extract.py [--seed 3] [--voxel 2] [--orientation LAS] [--method passthrough]
                                 [--registration affine] [--cache /tmp/cst_bench]
"""
from __future__ import annotations

import argparse
import json
import pickle
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def prepare(args):
    """Phantom session, tensor maps and whole-brain tractogram (cached on disk)."""
    cache = (Path(args.cache) / f"s{args.seed}_v{args.voxel}_{args.orientation}_{args.track}_d{args.seed_density}.pkl"
             if args.cache else None)
    if cache and cache.exists():
        with open(cache, "rb") as fh:
            return pickle.load(fh)
    from dipy.core.gradients import gradient_table

    from cstbatch.study.options import defaults
    from cstbatch.sample.phantom import make_phantom_session
    from cstbatch.steps.model import fit_tensor_maps
    from cstbatch.steps import track as track_mod

    t = time.perf_counter()
    sess = make_phantom_session(seed=args.seed, voxel_mm=args.voxel, snr=args.snr,
                                orientation=args.orientation)
    t_phantom = time.perf_counter() - t
    gtab = gradient_table(sess.bvals, bvecs=sess.bvecs_voxel)
    mask = sess.masks["brain"]
    t = time.perf_counter()
    maps = fit_tensor_maps(sess.data, gtab, mask)
    t_model = time.perf_counter() - t
    opts = defaults()
    opts["track_seed_density"] = args.seed_density
    t = time.perf_counter()
    tracker = {"csd": track_mod.track_deterministic, "dti": track_mod.track_tensor_eudx}[args.track]
    streamlines = tracker(sess.data, gtab, mask, maps, sess.affine, opts)
    t_track = time.perf_counter() - t
    out = {
        "affine": sess.affine, "maps": {k: maps[k] for k in ("fa", "md", "rd", "ad")},
        "masks": {k: sess.masks[k] for k in ("cst_left", "cst_right", "distractor", "brain")},
        "fa_noisefree": sess.fa_noisefree, "subject_to_mni": sess.subject_to_mni,
        "streamlines": streamlines,
        "prep_seconds": {"phantom": t_phantom, "tensor": t_model, "track": t_track},
    }
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(cache, "wb") as fh:
            pickle.dump(out, fh)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--voxel", type=float, default=2.0)
    ap.add_argument("--snr", type=float, default=30.0)
    ap.add_argument("--orientation", default="LAS", choices=["LAS", "RAS"])
    ap.add_argument("--track", default="csd", choices=["csd", "dti"])
    ap.add_argument("--seed-density", type=int, default=1, help="track_seed_density (seeds per voxel)")
    ap.add_argument("--method", default="passthrough", choices=["passthrough", "endpoint"])
    ap.add_argument("--registration", default="affine", choices=["affine", "syn"])
    ap.add_argument("--atlas", default="icbm2009a")
    ap.add_argument("--cache", default=None, help="folder caching phantom + tractogram between runs")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    import nibabel as nib

    from cstbatch.steps.atlas import PROVIDERS
    from cstbatch.steps.extract import EXTRACTORS, selected_streamlines
    from cstbatch.steps.metrics import compute_metrics, visited_voxel_mask
    from cstbatch.steps.register import register_template, streamlines_to_mni

    prep = prepare(args)
    aff, maps, masks = prep["affine"], prep["maps"], prep["masks"]
    streamlines = prep["streamlines"]
    options = {"registration_method": args.registration, "accept_fsl_license": True, "atlas": args.atlas}
    rss_before = peak_rss_mb()
    timing = {}
    t = time.perf_counter()
    atlas = PROVIDERS[args.atlas](options)
    timing["atlas_load"] = time.perf_counter() - t
    fa_img = nib.Nifti1Image(maps["fa"], aff)
    t = time.perf_counter()
    reg = register_template(fa_img, atlas, options)
    timing["register"] = time.perf_counter() - t
    t = time.perf_counter()
    rois = reg.warp_rois(atlas, fa_img)
    timing["warp_rois"] = time.perf_counter() - t
    t = time.perf_counter()
    sl_mni = streamlines_to_mni(streamlines, reg)
    timing["to_mni"] = time.perf_counter() - t
    t = time.perf_counter()
    sel = EXTRACTORS[args.method](sl_mni, atlas, options)
    timing["extract"] = time.perf_counter() - t
    left, right = (selected_streamlines(streamlines, sel, side) for side in ("left", "right"))
    t = time.perf_counter()
    met = compute_metrics(left, right, maps, aff, {"profile_nodes": 100}, mni=reg,
                          brainstem_mask=rois["brainstem"],
                          profile_from_z=sel.get("info", {}).get("inferior_top_z_mni"))
    timing["metrics"] = time.perf_counter() - t

    # --- truth comparison
    brain = masks["brain"]
    ijk = np.argwhere(brain)
    w = ijk @ aff[:3, :3].T + aff[:3, 3]
    true_mni = w @ prep["subject_to_mni"][:3, :3].T + prep["subject_to_mni"][:3, 3]
    est_mni = w @ reg.subject_to_mni[:3, :3].T + reg.subject_to_mni[:3, 3]
    reg_err = np.linalg.norm(true_mni - est_mni, axis=1)
    shape = maps["fa"].shape
    vis = {s: visited_voxel_mask(b, shape, aff) for s, b in (("left", left), ("right", right))}
    truth = {"left": masks["cst_left"], "right": masks["cst_right"]}
    fa_truth = {s: float(prep["fa_noisefree"][truth[s]].mean()) for s in truth}
    inv = np.linalg.inv(aff)

    def distractor_share(bundle):
        if not bundle:
            return float("nan")
        n_bad = 0
        for s in bundle:
            v = np.rint(s @ inv[:3, :3].T + inv[:3, 3]).astype(int)
            ok = np.all((v >= 0) & (v < np.array(shape)), axis=1)
            v = v[ok]
            in_d = masks["distractor"][v[:, 0], v[:, 1], v[:, 2]].sum()
            in_c = (masks["cst_left"] | masks["cst_right"])[v[:, 0], v[:, 1], v[:, 2]].sum()
            n_bad += in_d > in_c
        return n_bad / len(bundle)

    result = {
        "session": {"seed": args.seed, "voxel_mm": args.voxel, "orientation": args.orientation,
                    "shape": list(shape), "streamlines": len(streamlines), "tracker": args.track},
        "prep_seconds": prep["prep_seconds"],
        "seconds": {k: round(v, 3) for k, v in timing.items()},
        "seconds_register_extract_metrics": round(sum(v for k, v in timing.items() if k != "atlas_load"), 2),
        "peak_rss_mb": round(peak_rss_mb(), 1), "peak_rss_mb_before_chain": round(rss_before, 1),
        "registration": {"method": reg.method, "quality_r": round(reg.quality, 4),
                         "error_mm_mean": round(float(reg_err.mean()), 2),
                         "error_mm_max": round(float(reg_err.max()), 2)},
        "extraction": {"method": args.method, "left": len(left), "right": len(right)},
    }
    for s, other in (("left", "right"), ("right", "left")):
        result[s] = {
            "dice_vs_truth": round(dice(vis[s], truth[s]), 3),
            f"dice_vs_truth_{other}": round(dice(vis[s], truth[other]), 3),
            "fa_mean": met[s]["fa_mean"], "fa_truth": round(fa_truth[s], 4),
            "fa_abs_error": None if met[s]["fa_mean"] is None else round(abs(met[s]["fa_mean"] - fa_truth[s]), 4),
            "distractor_share": round(distractor_share(left if s == "left" else right), 4),
            "volume_mm3": met[s]["volume_mm3"], "truth_volume_mm3": float(truth[s].sum() * abs(np.linalg.det(aff[:3, :3]))),
            "mean_length_mm": met[s]["mean_length_mm"],
        }
    result["laterality_fa"] = met["laterality"]["fa_mean"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
