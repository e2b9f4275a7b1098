"""Gradient-table check on real scans and deliberately broken copies: detection and cost.

For each DWI (default: every scan under /work/shared/real-dwi) this builds the brain mask and
fits the tensor exactly as the pipeline does (median_otsu, b ≤ 1500), then runs
:func:`cstbatch.steps.gradcheck.check_gradients` on the intact table and on copies of the
``.bvec`` with x, y or z flipped and x/y swapped (each copy refitted from scratch, as a user's
broken file would be). It prints, per scan × table: the best candidate, the ratio of its mean
streamline length to the given table's, whether the table is flagged, and the seconds of the
check alone (the tensor fit is the model step's, so the check's cost per session is the
tracking time) and of the refit.

Usage::

    python benchmarks/gradient_check.py [DWI.nii.gz ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

BREAKS = {"intact": None, "flip x": ((0, 1, 2), (-1, 1, 1)), "flip y": ((0, 1, 2), (1, -1, 1)),
          "flip z": ((0, 1, 2), (1, 1, -1)), "swap xy": ((1, 0, 2), (1, 1, 1))}


def run_one(path: str) -> list[dict]:
    import nibabel as nib
    from dipy.core.gradients import gradient_table

    from cstbatch.steps.gradcheck import Candidate, check_gradients
    from cstbatch.steps.gradients import bids_to_voxel_axes, read_bvals_bvecs
    from cstbatch.steps.mask import mask_median_otsu
    from cstbatch.steps.model import fit_tensor_maps, tensor_volumes

    stem = path[:-len(".nii.gz")]
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    bvals, bvecs = read_bvals_bvecs(stem + ".bval", stem + ".bvec", data.shape[-1])
    keep = tensor_volumes(bvals)
    gtab0 = gradient_table(bvals, bvecs=bids_to_voxel_axes(bvecs, img.affine), b0_threshold=50)
    mask = mask_median_otsu(data, gtab0, {})
    rows = []
    for label, change in BREAKS.items():
        table = bvecs if change is None else Candidate(*change).apply_bids(bvecs)
        gtab = gradient_table(bvals[keep], bvecs=bids_to_voxel_axes(table[keep], img.affine), b0_threshold=50)
        t0 = time.perf_counter()
        maps = fit_tensor_maps(data[..., keep], gtab, mask)
        t1 = time.perf_counter()
        res = check_gradients(maps["evecs"], maps["fa"], mask, img.affine)
        t2 = time.perf_counter()
        rows.append({"scan": os.path.basename(stem), "table": label, "flagged": res.suspect, "best": res.best,
                     "ratio": round(res.ratio, 3), "given_mm": round(res.mean_length_mm.get("identity", 0), 1),
                     "best_mm": round(max(res.mean_length_mm.values(), default=0), 1), "seeds": res.n_seeds,
                     # best other table over the given one: how far an intact table is from a flag
                     "next_ratio": round(max((v for k, v in res.mean_length_mm.items() if k != "identity"),
                                             default=0) / max(res.mean_length_mm.get("identity", 0), 1e-3), 3),
                     "check_s": round(t2 - t1, 2), "fit_s": round(t1 - t0, 2)})
        r = rows[-1]
        print(f"{r['scan']:28s} {label:8s} flagged={str(r['flagged']):5s} best={r['best']:22s} "
              f"ratio={r['ratio']:.3f} next={r['next_ratio']:.3f} given={r['given_mm']:.1f}mm best={r['best_mm']:.1f}mm "
              f"seeds={r['seeds']} check={r['check_s']:.2f}s fit={r['fit_s']:.2f}s", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dwi", nargs="*")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    paths = args.dwi or sorted(glob.glob("/work/shared/real-dwi/sub-*/**/*_dwi.nii.gz", recursive=True))
    rows = [r for p in paths for r in run_one(p)]
    intact = [r for r in rows if r["table"] == "intact"]
    broken = [r for r in rows if r["table"] != "intact"]
    print(f"\nbroken tables flagged: {sum(r['flagged'] for r in broken)}/{len(broken)}; "
          f"intact tables flagged: {sum(r['flagged'] for r in intact)}/{len(intact)}; "
          f"largest other/given ratio on intact tables: {max(r['next_ratio'] for r in intact):.3f}; "
          f"smallest best/given ratio on broken ones: {min(r['ratio'] for r in broken):.3f}; "
          f"check cost per session: median {np.median([r['check_s'] for r in rows]):.2f} s, "
          f"max {max(r['check_s'] for r in rows):.2f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
