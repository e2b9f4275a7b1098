"""Issue 4 benchmark: the cstbatch step chain (ingest → denoise → mask → model → track) on one
sample-study session, against a bare script making the same dipy calls with the same
parameters in one process, without doit, records, checksums or intermediate files.

    python benchmarks/pipeline.py [--session sub-02] [--sample sample_data/generated]

Prints both wall times, the ratio (goal ≤ 1.15) and peak RSS of each (goal ≤ 1 GB per 2 mm
session). The cstbatch chain runs in a subprocess so its peak RSS is its own.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAIN = """
import json, sys, time, resource
from pathlib import Path
from cstbatch.engine.threads import limit_threads
limit_threads()
from cstbatch.engine.runner import run_doit
from cstbatch.study import load_study
study = load_study(manifest=Path(sys.argv[1]), output_dir=Path(sys.argv[2]), participant_label=[sys.argv[3]])
key = study.subjects[0].key
t = time.perf_counter()
code = run_doit(study, ["run", f"{key}:track"])
print(json.dumps({"seconds": time.perf_counter() - t, "code": code,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
BARE = """
import json, sys, time, resource
from cstbatch.engine.threads import limit_threads
limit_threads()
import numpy as np, nibabel as nib
from pathlib import Path
from dipy.core.gradients import gradient_table
from cstbatch.steps.gradients import read_bvals_bvecs, bids_to_voxel_axes
from cstbatch.study.options import defaults
from cstbatch.steps.mask import mask_median_otsu
from cstbatch.steps.model import fit_tensor_maps
from cstbatch.steps.track import track_deterministic, save_trk
stem, out = sys.argv[1], Path(sys.argv[2])
t = time.perf_counter()
img = nib.load(stem + ".nii.gz")
data = np.asarray(img.dataobj, dtype=np.float32)
bvals, bvecs = read_bvals_bvecs(stem + ".bval", stem + ".bvec", data.shape[-1])
gtab = gradient_table(bvals, bvecs=bids_to_voxel_axes(bvecs, img.affine), b0_threshold=50)
options = defaults()
mask = mask_median_otsu(data, gtab, options)
maps = fit_tensor_maps(data, gtab, mask)
streamlines = track_deterministic(data, gtab, mask, maps, img.affine, options)
save_trk(streamlines, img, out / "bare.trk")
print(json.dumps({"seconds": time.perf_counter() - t, "streamlines": len(streamlines),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _run(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--session", default="sub-02", help="subject of the sample study (default sub-02, RAS)")
    p.add_argument("--sample", type=Path, default=ROOT / "sample_data" / "generated")
    args = p.parse_args()
    manifest = ROOT / "sample_data" / "manifest.json"
    entry = next(e for e in json.loads(manifest.read_text())["subjects"] if e["id"] == args.session and "nifti" in e)
    stem = str((manifest.parent / entry["nifti"]))[: -len(".nii.gz")]
    if not Path(stem + ".nii.gz").exists():
        raise SystemExit(f"{stem}.nii.gz: generate the sample study first (doit run sample_study)")
    with tempfile.TemporaryDirectory() as tmp:
        bare = _run(BARE, stem, tmp)
        chain = _run(CHAIN, str(manifest), str(Path(tmp) / "out"), args.session)
    ratio = chain["seconds"] / bare["seconds"]
    print(f"bare dipy script : {bare['seconds']:7.1f} s  peak RSS {bare['peak_rss_mb']:6.0f} MB  "
          f"({bare['streamlines']} streamlines)")
    print(f"cstbatch chain   : {chain['seconds']:7.1f} s  peak RSS {chain['peak_rss_mb']:6.0f} MB  (doit exit {chain['code']})")
    print(f"ratio chain/bare : {ratio:.3f}  (goal ≤ 1.15);  peak RSS goal ≤ 1024 MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
