"""CST of processed real scans under each extraction method, and test-retest agreement.

    python benchmarks/real_scans.py DERIV_DIR [DERIV_DIR ...] [--methods passthrough,corridor]
                                   [--pair sub-trio_ses-rep1 sub-trio_ses-rep2 ...]
                                   [--retrack NAME=JSON ...] [--option NAME=JSON ...]

Reads what ``cstbatch BIDS DERIV_DIR participant`` wrote for every session (tractogram, FA map,
transform to MNI), runs each extraction method on the same tractogram as the extract step does
(with the image's MNI coverage), and prints per session and side the streamline count, mean FA
along the tract, volume (visited voxels × voxel volume) and the share of streamlines that reach
the lateral part of the precentral gyrus (:func:`_lateral_share`), then, for each ``--pair``
(repeatable), the Dice of the 2 mm cells visited by each side's CST in the two sessions, in MNI
and in scanner coordinates (:func:`cstbatch.steps.metrics.visited_cells`). Several output
folders may be given, so that sessions processed as different studies can be paired (the Trio
repeats and the same series converted from its DICOM, processed through a manifest). No ground
truth: a check that both CSTs are found and that repeats agree.

``--retrack NAME=JSON`` (repeatable; ``--retrack default`` for the defaults alone) tracks again
from the session's own preprocessed DWI, mask, tensor maps and transform with the default options
changed by these (e.g. ``track_method="csd_probabilistic"``, ``track_cst_seeds=40000``) instead of
reading the saved tractogram, so tracking variants are compared on the same registrations; the
tracking time is printed per session.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sessions(roots: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in roots:
        for p in sorted(root.rglob("*_tractogram.trk")):
            if "desc-" in p.name:  # the CST files, not the session's tractogram
                continue
            key = p.name[: -len("_tractogram.trk")]
            if key in found:
                raise SystemExit(f"{p}: session {key} is also in {found[key]}; pair folders whose keys differ")
            found[key] = p.parent.parent
    return found


def _lateral_share(streamlines_mni) -> float:
    """Share of the streamlines whose highest point lies at MNI |x| >= 40 mm: the lateral part of
    the fan (hand knob and face area), which the tracker reaches least on real scans."""
    if not len(streamlines_mni):
        return float("nan")
    tops = np.array([s[np.argmax(s[:, 2])] for s in (np.asarray(x) for x in streamlines_mni)])
    return float((np.abs(tops[:, 0]) >= 40.0).mean())


def _registration(sdir: Path):
    """The session's subject → MNI transform: cstbatch's .npz (SyN) or the ITK affine."""
    from cstbatch.steps.register import Registration, load_itk_affine, load_registration

    npz = sorted(sdir.glob("xfm/*_xfm.npz"))
    if npz:
        return load_registration(npz[0])
    return Registration(subject_to_mni=load_itk_affine(next(sdir.glob("xfm/*_xfm.txt"))))


def _track_again(sdir: Path, maps, reg, options) -> list[np.ndarray]:
    """Track as the track step does, from the session's saved preprocessed DWI, mask and maps."""
    import nibabel as nib
    from dipy.core.gradients import gradient_table

    from cstbatch.engine.context import implementation_for
    from cstbatch.steps.gradients import bids_to_voxel_axes, read_bvals_bvecs
    from cstbatch.steps.track_region import tracking_inputs

    dwi = sorted(sdir.glob("dwi/*_desc-denoised_dwi.nii.gz")) or sorted(sdir.glob("dwi/*_desc-preproc_dwi.nii.gz"))
    img = nib.load(str(dwi[0]))
    data = np.asarray(img.dataobj, np.float32)
    bvec = sorted(sdir.glob("dwi/*_desc-checked_dwi.bvec")) or sorted(sdir.glob("dwi/*_dwi.bvec"))
    bvals, bvecs = read_bvals_bvecs(next(sdir.glob("dwi/*_dwi.bval")), bvec[0], data.shape[-1])
    gtab = gradient_table(bvals, bvecs=bids_to_voxel_axes(bvecs, img.affine), b0_threshold=50)
    brain = np.asarray(nib.load(str(next(sdir.glob("dwi/*_desc-brain_mask.nii.gz")))).dataobj) > 0
    region, track_maps, _ = tracking_inputs(brain, maps, img.affine, lambda: reg.subject_to_mni, options)
    tracker = implementation_for("track", options, None)
    return [np.asarray(s, np.float64) for s in tracker.func(data, gtab, region, track_maps, img.affine, options)
            if len(s) >= 2]


def run(roots: list[Path], methods: list[str], pairs: list[list[str]] | None, retrack: dict | None = None,
        options: dict | None = None) -> None:
    import nibabel as nib

    from cstbatch.engine.context import implementation_for
    from cstbatch.steps.extract import selected_streamlines
    from cstbatch.steps.extract_corridor import extraction_inputs
    from cstbatch.steps.metrics import cells_dice, compute_metrics, visited_cells
    from cstbatch.steps.register import streamlines_to_mni
    from cstbatch.study.options import defaults

    cells = {}
    print("session\tmethod\tcoverage_z\tlevels\tn_L\tn_R\tFA_L\tFA_R\tvol_L_mm3\tvol_R_mm3\tlateral_L\tlateral_R")
    for key, sdir in _sessions(roots).items():
        fa_img = nib.load(str(next(sdir.glob("dwi/*param-fa_dwimap.nii.gz"))))
        maps = {p: np.asarray(nib.load(str(next(sdir.glob(f"dwi/*param-{p}_dwimap.nii.gz")))).dataobj,
                              np.float32) for p in ("fa", "md", "rd", "ad")}
        reg = _registration(sdir)
        if retrack is None:
            trk = sdir / "tractography" / f"{key}_tractogram.trk"  # not the CST files (desc-cst*)
            sl = [np.asarray(s, np.float64) for s in nib.streamlines.load(str(trk)).streamlines
                  if len(s) >= 2]
        else:
            t0 = time.process_time()
            sl = _track_again(sdir, maps, reg, {**defaults(), **retrack})
            print(f"# {key}: tracked again in {time.process_time() - t0:.1f} CPU s, {len(sl)} streamlines",
                  flush=True)
        cover = extraction_inputs(maps["fa"], fa_img.affine, reg.subject_to_mni, sl, {**defaults(), **(options or {})})
        mni = streamlines_to_mni(sl, reg)
        for m in methods:
            opts = {**defaults(), **(options or {}), "extraction_method": m, **cover}
            atlas = implementation_for("register", opts, None).func(opts)
            sel = implementation_for("extract", opts, None).func(mni, atlas, opts)
            b = {s: selected_streamlines(sl, sel, s) for s in ("left", "right")}
            res = compute_metrics(b["left"], b["right"], maps, fa_img.affine, opts, mni=reg,
                                  profile_from_z=sel.get("info", {}).get("inferior_top_z_mni"))
            info = sel.get("info", {})
            fa = [res[s]["fa_mean"] for s in ("left", "right")]
            vol = [res[s]["volume_mm3"] for s in ("left", "right")]
            lateral = [_lateral_share([mni[i] for i in sel[s]]) for s in ("left", "right")]
            print(f"{key}\t{m}\t{cover['coverage_z']:.1f}\t{','.join(info.get('inferior_levels', ['-']))}\t"
                  f"{len(b['left'])}\t{len(b['right'])}\t"
                  + "\t".join("-" if v is None else f"{v:.3f}" for v in fa) + "\t"
                  + "\t".join("-" if v is None else f"{v:.0f}" for v in vol) + "\t"
                  + "\t".join(f"{v:.2f}" for v in lateral), flush=True)
            for s in ("left", "right"):
                cells[(key, m, s, "MNI")] = visited_cells(b[s], reg)
                cells[(key, m, s, "scanner")] = visited_cells(b[s])
    for a, b_ in pairs or []:
        for m in methods:
            for space in ("MNI", "scanner"):
                out = []
                for s in ("left", "right"):
                    out.append(cells_dice(cells.get((a, m, s, space), set()), cells.get((b_, m, s, space), set())))
                print(f"test-retest {a} vs {b_} ({m}): Dice of visited 2 mm {space} cells "
                      f"left {out[0]:.3f} right {out[1]:.3f}")


def _name_json(items: list[str]) -> dict:
    """``NAME=JSON`` arguments as a dict."""
    return {name: json.loads(value) for name, _, value in (item.partition("=") for item in items)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", type=Path, nargs="+", metavar="root")
    ap.add_argument("--methods", default="passthrough,corridor")
    ap.add_argument("--pair", nargs=2, action="append", default=None)
    ap.add_argument("--retrack", action="append", default=None, metavar="NAME=JSON")
    ap.add_argument("--option", action="append", default=[], metavar="NAME=JSON",
                    help="extraction option, e.g. extract_core_filter=false")
    args = ap.parse_args(argv)
    retrack = None if args.retrack is None else _name_json([i for i in args.retrack if i != "default"])
    run(args.roots, [m for m in args.methods.split(",") if m], args.pair, retrack, _name_json(args.option))
    return 0


if __name__ == "__main__":
    sys.exit(main())
