"""What a perfect tractogram would score on the sweep phantoms (issue 14's Dice bar in context).

    python benchmarks/phantom_ceiling.py [--seed0 7000] [--n 6] [--voxel 3] [--phantom tubes|juelich]

``benchmarks/anatomy_sweep.py`` scores a CST by the voxels its streamlines visit (a voxel counts
as soon as a streamline passes through any part of it) against the phantom's truth mask (voxels
whose CST tube fraction is at least 0.5). Streamlines that fill the true tubes exactly would
therefore also visit the tubes' partial-volume rim. This prints, per subject and side, the Dice of
the voxels the tubes touch at all (fraction > 0.01) against the truth, and of the voxels at least
a quarter tract: the scores of ideal tractograms that fill the whole tube, or only its inner
part. Same subjects as the sweep for the same seeds and voxel size. ``--phantom juelich`` does
the same for the atlas phantom, whose CST fraction is the atlas's probability map (its soft
edge is anatomy, not only partial volume): 0.64–0.67 at 3 mm and 0.67–0.70 at 2 mm on seeds
900–903.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    from anatomy_sweep import TOUCHED, _subject, cst_fraction, fill_dice

    from cstbatch.sample.accuracy import dice

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed0", type=int, default=7000)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--voxel", type=float, default=3.0)
    ap.add_argument("--phantom", default="tubes", choices=("tubes", "juelich"))
    args = ap.parse_args(argv)
    print("seed\tside\ttruth_voxels\ttouched_voxels\tdice_touched\tprecision_touched\tdice_quarter")
    touched_all = []
    for seed in range(args.seed0, args.seed0 + args.n):
        s = _subject(seed, args.voxel, {"phantom": args.phantom})
        for side in ("left", "right"):
            f = cst_fraction(s, args.phantom, side)
            truth = s.masks[f"cst_{side}"]
            touched = f > TOUCHED
            d = fill_dice(s, args.phantom, side, f)
            touched_all.append(d)
            print(f"{seed}\t{side}\t{int(truth.sum())}\t{int(touched.sum())}\t{d:.3f}\t"
                  f"{(touched & truth).sum() / max(1, touched.sum()):.3f}\t{dice(f > 0.25, truth):.3f}", flush=True)
    print(f"ideal tractogram filling the tubes: Dice min {min(touched_all):.3f} median "
          f"{float(np.median(touched_all)):.3f} max {max(touched_all):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
