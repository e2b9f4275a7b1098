"""Slabs cut from the shared real scans: where does the template land, and does the session know
when it cannot tell?

    python benchmarks/slab_registration.py [--scan trio --scan elition --scan toshiba]
                                           [--bvalue 1000] [--cuts=-30,-25,-21,-15] [--draws 2]

Each scan is made a 3 mm acquisition at ``--bvalue`` (``real_grids.coarser`` and ``higher_b``:
new Rician noise per draw) and cut below each MNI z of ``--cuts`` (``real_grids.cut_below``): a
field of view that starts in the pons. The head has not moved, so the template should land
where the whole scan's registration puts it. Per slab this prints how far it landed from there
(median over the slab's brain, mm), the affine start taken, how far the 12-parameter refinement
of the slab's similarity moved the brain (``slab_refine_mm``: kept when at most
``SLAB_REFINE_MAX_MM``), the farthest rival optimum that fits almost as well
(``cstbatch.steps.qc.ambiguous_placement``), and whether the session would be flagged
``registration_ambiguous``; then a summary per scan. The slabs are cast to float32, as the
pipeline reads them from NIfTI: the optimiser's path depends on it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SCANS = {"trio": "sub-trio/ses-rep1/dwi/sub-trio_ses-rep1_dwi", "elition": "sub-elition/dwi/sub-elition_dwi",
         "toshiba": "sub-toshiba/dwi/sub-toshiba_dwi"}


def slab_fa(weighted: np.ndarray, affine: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, cut_mni_z: float,
            to_mni: np.ndarray):
    """The FA image of the scan ``weighted`` (on ``affine``) cut below MNI z ``cut_mni_z`` (``to_mni``:
    the whole scan's world → MNI map), the slab first cast to float32 as the pipeline reads it
    from NIfTI: the optimiser's path depends on it."""
    import real_grids as grids

    slab, slab_aff = grids.cut_below(weighted, affine, cut_mni_z, to_mni)
    # the coarser grid keeps the original voxel axes, so the b-vectors stay as they are
    return grids.fa_image(slab.astype(np.float32), slab_aff, bvals, bvecs)


def main() -> int:
    import nibabel as nib

    import real_grids as grids
    from cstbatch.engine.context import implementation_for
    from cstbatch.steps.qc import ambiguous_placement
    from cstbatch.steps.register import affine_distance_mm, register_template
    from cstbatch.study.options import defaults

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "real-dwi")
    p.add_argument("--scan", action="append", choices=sorted(SCANS))
    p.add_argument("--bvalue", type=float, default=1000.0)
    p.add_argument("--cuts", default="-30,-25,-21,-15")
    p.add_argument("--draws", type=int, default=2)
    p.add_argument("--single-start", action="store_true", help="the affine stage from the rigid result only "
                   "(as before the extra starts), for comparison")
    args = p.parse_args()
    if args.single_start:
        import cstbatch.steps.register as register

        register.AFFINE_STARTS_MM = ()
    options = defaults()
    atlas = implementation_for("register", options, None).func(options)
    print("scan\tb\tdraw\tcut\tmm_off_whole\tstart_taken\trefine_mm\trival_mm\trival_mi_below\tflagged")
    summary = {}
    for name in args.scan or ["trio", "elition", "toshiba"]:
        stem = args.real / SCANS[name]
        img = nib.load(f"{stem}.nii.gz")
        data, affine = np.asarray(img.dataobj, np.float32), np.asarray(img.affine, float)
        bvals, bvecs = np.loadtxt(f"{stem}.bval").ravel(), np.loadtxt(f"{stem}.bvec").T
        whole = grids.world_to_mni(data, affine, bvals, bvecs)
        coarse, coarse_aff = grids.coarser(data, affine, 3.0)
        for draw in range(args.draws):
            weighted, new_b = grids.higher_b(coarse, bvals, args.bvalue, seed=draw)
            for cut in (float(c) for c in args.cuts.split(",")):
                fa = slab_fa(weighted, coarse_aff, new_b, bvecs, cut, whole)
                reg = register_template(fa, atlas, options)
                off = affine_distance_mm(np.asarray(fa.dataobj), fa.affine, reg.subject_to_mni, whole)
                rival = ambiguous_placement(reg.info["affine_start_mi"])
                summary.setdefault(name, []).append((off, rival is not None))
                refine = reg.info.get("slab_refine_mm")
                print(f"{name}\t{args.bvalue:g}\t{draw}\t{cut:g}\t{off:.2f}\t{reg.info['affine_start_mm']:+g}\t"
                      + ("" if refine is None else f"{refine:.2f}") + "\t"
                      + (f"{rival[0]:.2f}\t{rival[2] - rival[1]:.4f}\tyes" if rival else "\t\tno"), flush=True)
    for name, rows in summary.items():
        offs = np.array([o for o, _ in rows])
        print(f"{name}: {len(rows)} slabs, mm off the whole scan's registration median {np.median(offs):.2f} "
              f"max {offs.max():.2f}, > 5 mm: {(offs > 5).sum()}; flagged registration_ambiguous: "
              f"{sum(f for _, f in rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
