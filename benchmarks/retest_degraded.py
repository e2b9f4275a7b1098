"""Test-retest of the Trio pair when both repeats are acquired worse: does the bar hold?

    python benchmarks/retest_degraded.py OUT [--real ../shared/real-dwi] [--variants noise1.5,p3b2500,noise2]
                                             [-n 2]

Issue 14's test-retest bar (Dice ≥ 0.70 between the CSTs of two repeats of one series) is met on
the shared Trio pair as acquired. A held-back pair may be noisier or coarser. Each variant
degrades both repeats the same way but with its own noise draw per repeat (as two acquisitions
would): ``noiseF`` multiplies the noise by F (:func:`real_grids.add_noise`'s Rician noise),
``p3bB`` makes 3 mm voxels at b B (:func:`real_grids.coarser`, :func:`real_grids.higher_b`). The
whole pipeline runs on ``OUT/bids`` → ``OUT/derivatives``, then ``real_scans.run`` prints each
session's CST and the pair's Dice of the 2 mm cells both visit, in MNI and scanner coordinates.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def degrade(data: np.ndarray, affine: np.ndarray, bvals: np.ndarray, variant: str, seed: int):
    """(data, affine, b-values) of the repeat as ``variant`` acquires it, noise draw ``seed``."""
    import real_grids as rg

    if variant.startswith("noise"):
        return rg.add_noise(data, float(variant[len("noise"):]), seed=seed), affine, bvals
    if variant.startswith("p3b"):
        coarse, new_aff = rg.coarser(data, affine, 3.0)  # same axes: the b-vectors stay
        out, new_b = rg.higher_b(coarse, bvals, float(variant[len("p3b"):]), seed=seed)
        return out, new_aff, new_b
    raise SystemExit(f"unknown variant {variant!r}: noiseF or p3bB")


def write_pairs(real: Path, bids: Path, variants: list[str]) -> list[tuple[str, str]]:
    import nibabel as nib
    import real_grids as rg

    pairs = []
    for v in variants:
        sub = "trio" + v.replace(".", "p")
        for rep in (1, 2):
            src = real / "sub-trio" / f"ses-rep{rep}" / "dwi"
            stem, name = f"sub-trio_ses-rep{rep}_dwi", f"sub-{sub}_ses-rep{rep}_dwi"
            img = nib.load(str(src / f"{stem}.nii.gz"))
            data, affine, bvals = degrade(np.asarray(img.dataobj, np.float32), np.asarray(img.affine, float),
                                          np.loadtxt(src / f"{stem}.bval").ravel(), v, seed=rep)
            d = bids / f"sub-{sub}" / f"ses-rep{rep}" / "dwi"
            d.mkdir(parents=True, exist_ok=True)
            rg.write_dwi(d / name, data, affine, bvals)
            for ext in ("bvec", "json"):
                shutil.copyfile(src / f"{stem}.{ext}", d / f"{name}.{ext}")
        pairs.append((f"sub-{sub}_ses-rep1", f"sub-{sub}_ses-rep2"))
    return pairs


def main() -> int:
    from real_scans import run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "real-dwi")
    p.add_argument("--variants", default="noise1.5,p3b2500,noise2")
    p.add_argument("-n", "--jobs", type=int, default=2)
    args = p.parse_args()
    bids, deriv = args.out / "bids", args.out / "derivatives"
    bids.mkdir(parents=True, exist_ok=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "degraded Trio repeats",
                                                               "BIDSVersion": "1.9.0"}))
    pairs = write_pairs(args.real, bids, [v for v in args.variants.split(",") if v])
    cmd = [sys.executable, "-m", "cstbatch", str(bids), str(deriv), "participant", "-n", str(args.jobs)]
    code = subprocess.run(cmd, cwd=ROOT).returncode
    for pair in pairs:
        run([deriv], ["corridor"], [list(pair)])
    return code


if __name__ == "__main__":
    sys.exit(main())
