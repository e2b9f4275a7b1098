"""Head motion on a real scan: how much it costs the CST, and how much ``motion_correction`` wins back.

    python benchmarks/motion.py OUT [--real ../shared/real-dwi] [--scan elition] [--scales 1,2] [-n 2]

No shared scan moved much (every volume within 0.65 mm of its reference), so motion is put in:
each diffusion-weighted volume of the real scan is moved by a rigid transform about the head's
centre, a slow drift (up to 2.5 mm and 2.4° at scale 1) with jitter and two sudden jerks, and its
b-vector is turned with the head (the scanner applied the gradient in the scanner frame, so the
volume's signal belongs to the original head-frame direction only if the file's vector turns).
Scale 2 doubles every movement. The original and the moved series are processed with
``motion_correction`` ``none`` and ``auto``; printed per series and side: CST streamlines and
the Dice of the 2 mm world cells it visits against the original series processed with ``none``,
then the estimated motion and, where the series was corrected, the angle between each corrected
b-vector and the original one (what the correction should restore).
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

from real_grids import dice, rotation, world_cells  # noqa: E402

SCANS = {"elition": "sub-elition/dwi/sub-elition_dwi", "trio": "sub-trio/ses-rep1/dwi/sub-trio_ses-rep1_dwi",
         "toshiba": "sub-toshiba/dwi/sub-toshiba_dwi"}


def move(data, bvals, bvecs_bids, affine, scale: float, seed: int = 7):
    """(moved data, their BIDS b-vectors, per moved volume (|translation| mm, rotation °))."""
    from scipy import ndimage

    from cstbatch.steps.gradients import bids_to_voxel_axes, voxel_axes_to_bids, voxel_to_world_dirs, world_to_voxel_dirs
    from cstbatch.steps.motion import rotation_angle_deg
    from cstbatch.study.bvalues import B0_THRESHOLD

    rng = np.random.default_rng(seed)
    world = voxel_to_world_dirs(bids_to_voxel_axes(bvecs_bids, affine), affine)
    centre = affine @ np.r_[(np.array(data.shape[:3]) - 1) / 2, 1]
    dw = np.flatnonzero(bvals > B0_THRESHOLD)
    jerks = set(rng.choice(dw, size=2, replace=False).tolist())
    out, turned, moves = data.copy(), world.copy(), []
    for k, i in enumerate(dw):
        f = (k + 1) / len(dw)
        t = scale * (f * np.array([1.0, -1.5, 2.0]) + rng.normal(0, 0.3, 3))
        ang = scale * (f * np.array([2.0, 1.0, -1.0]) + rng.normal(0, 0.3, 3))
        if i in jerks:
            t, ang = t + scale * rng.normal(0, 2.0, 3), ang + scale * rng.normal(0, 2.0, 3)
        r = rotation("z", ang[2]) @ rotation("y", ang[1]) @ rotation("x", ang[0])
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = r, centre[:3] - r @ centre[:3] + t
        vox = np.linalg.inv(affine) @ np.linalg.inv(m) @ affine  # new voxel -> where the head was
        out[..., i] = ndimage.affine_transform(data[..., i], vox[:3, :3], vox[:3, 3], order=1, mode="constant")
        turned[i] = r @ world[i]
        moves.append((float(np.linalg.norm(t)), rotation_angle_deg(r)))
    new = voxel_axes_to_bids(world_to_voxel_dirs(turned, affine), affine)
    b0 = bvals <= B0_THRESHOLD
    new[b0] = bvecs_bids[b0]
    return out, new, moves


def _write(bids: Path, sub: str, img, data, bvals, bvecs_bids, sidecar: Path) -> None:
    import nibabel as nib

    d = bids / f"sub-{sub}" / "dwi"
    d.mkdir(parents=True, exist_ok=True)
    out = nib.Nifti1Image(data.astype(np.float32), img.affine, img.header)
    out.set_data_dtype(np.float32)
    nib.save(out, d / f"sub-{sub}_dwi.nii.gz")
    (d / f"sub-{sub}_dwi.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    (d / f"sub-{sub}_dwi.bvec").write_text("".join(" ".join(f"{v:.6f}" for v in bvecs_bids[:, ax]) + "\n"
                                                   for ax in range(3)))
    shutil.copy(sidecar, d / f"sub-{sub}_dwi.json")


def _angles(a_bids, b_bids, bvals, affine) -> np.ndarray:
    from cstbatch.steps.gradients import bids_to_voxel_axes
    from cstbatch.study.bvalues import B0_THRESHOLD

    a, b = bids_to_voxel_axes(a_bids, affine), bids_to_voxel_axes(b_bids, affine)
    dw = bvals > B0_THRESHOLD
    return np.degrees(np.arccos(np.clip(np.abs(np.sum(a[dw] * b[dw], axis=1)), 0, 1)))


def main() -> int:
    import nibabel as nib

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "real-dwi")
    p.add_argument("--scan", default="elition", choices=sorted(SCANS))
    p.add_argument("--scales", default="1,2")
    p.add_argument("-n", default="2")
    a = p.parse_args()
    stem = a.real / SCANS[a.scan]
    img = nib.load(str(stem) + ".nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)
    bvals = np.array(stem.with_suffix(".bval").read_text().split(), float)
    bvecs = np.array([r.split() for r in stem.with_suffix(".bvec").read_text().splitlines() if r.strip()], float).T
    bids = a.out / "bids"
    if bids.exists():
        shutil.rmtree(bids)
    bids.mkdir(parents=True)
    shutil.copy(a.real / "dataset_description.json", bids)
    sidecar = stem.with_suffix(".json")
    _write(bids, f"{a.scan}orig", img, data, bvals, bvecs, sidecar)
    series = {f"{a.scan}orig": (bvecs, None)}
    for scale in (float(s) for s in a.scales.split(",")):
        moved, moved_bvecs, moves = move(data, bvals, bvecs, img.affine, scale)
        name = f"{a.scan}moved{scale:g}".replace(".", "p")
        _write(bids, name, img, moved, bvals, moved_bvecs, sidecar)
        series[name] = (moved_bvecs, moves)
        print(f"{name}: put in |t| {min(m[0] for m in moves):.1f}-{max(m[0] for m in moves):.1f} mm, "
              f"{min(m[1] for m in moves):.1f}-{max(m[1] for m in moves):.1f} deg", flush=True)
    for method in ("none", "auto"):
        deriv = a.out / f"deriv-{method}"
        subprocess.run([sys.executable, "-m", "cstbatch", str(bids), str(deriv), "participant", "-n", a.n,
                        "--option", f"motion_correction={json.dumps(method)}"], check=False,
                       stdout=subprocess.DEVNULL)
    base = {s: world_cells(a.out / "deriv-none" / f"sub-{a.scan}orig" / "tractography"
                           / f"sub-{a.scan}orig_desc-cst{s}_tractogram.trk")[0] for s in "LR"}
    for name in series:
        for method in ("none", "auto"):
            sdir = a.out / f"deriv-{method}" / f"sub-{name}"
            row = []
            for s in "LR":
                cells, n = world_cells(sdir / "tractography" / f"sub-{name}_desc-cst{s}_tractogram.trk")
                row.append(f"{s} {n:4d} streamlines, Dice {dice(cells, base[s]):.3f}")
            record = sdir / "steps" / f"sub-{name}_step-ingest.json"
            motion = (json.loads(record.read_text()).get("info") or {}).get("motion") if record.exists() else None
            extra = ""
            if motion:
                extra = (f"; motion mean {motion['mean_displacement_mm']:.2f}, largest {motion['max_displacement_mm']:.2f} mm,"
                         f" corrected {motion['corrected']}")
                written = sdir / "dwi" / f"sub-{name}_dwi.bvec"
                if motion["corrected"] and written.exists():
                    got = np.array([r.split() for r in written.read_text().splitlines() if r.strip()], float).T
                    ang = _angles(got, bvecs, bvals, img.affine)
                    extra += f"; b-vectors vs original: median {np.median(ang):.2f}, max {ang.max():.2f} deg"
            print(f"{name:16s} {method:5s} " + " | ".join(row) + extra, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
