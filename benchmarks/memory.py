"""P5: peak memory (RSS) of one session's chain, at 2 mm and on a larger 1.25 mm / 100-volume session.

Why. ``cstbatch ... -n N --mem-gb G`` caps how many sessions run side by side with an estimate
of each session's peak made from its image header alone (``session_memory_mb`` in
cstbatch/engine/memory.py: ``BASE_MB`` of libraries + ``COPIES_OF_DATA`` float32 copies of the 4-D
data). That rule was read off 2 mm sample sessions (37 volumes, ~76 MB of data), where the
libraries are most of the peak. A 1.25 mm session with 100 volumes holds ~10x the data, so
there the copies term decides whether the budget is safe. This benchmark measures what one
session's chain really uses and prints it next to the estimate.

How. For each voxel size it writes one synthetic session of the MNI phantom
(``cstbatch.sample.phantom``; int16 NIfTI + ``.bval`` + ``.bvec`` written with the sample
study's own writers) and a one-entry manifest into a work folder, then runs the real command

    python -m cstbatch --manifest study.json OUT participant

in a subprocess (one session, ``-n 1``: every step runs in that one process). The step runner
resets the process's peak RSS (VmHWM, via /proc/self/clear_refs) before each step and writes
it into the step record (``steps/<key>_step-<step>.json``: ``peak_rss_mb``, ``duration_s``),
so each step's peak is its own and includes the ~300 MB of imported libraries. As a
cross-check of the largest step peak, this script samples the process's VmHWM from
/proc/<pid>/status every 50 ms. ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (here from
``wait4``, for this one child) is printed too but is *not* a whole-run peak: the kernel
derives it from the same high-water mark the step runner resets, so it only covers the time
since the last reset (the report step and the aggregation).

Printed per session: step, status, duration_s, peak_rss_mb and peak / data; the image shape
and the size of its 4-D float32 data; the largest step peak; the sampled process peak; the
``--mem-gb`` estimate and estimate / measured; and the copies of the data the measurement
implies, (peak - BASE_MB) / data, to set beside ``COPIES_OF_DATA``. MB here is 2**20 bytes,
as in the step records and cstbatch/engine/memory.py.

Findings (2026-11-25, 2 cores): 1.25 mm / 100 volumes (117×136×126, 765 MB of data): largest
step peak 2378 MB (track; 3.1× the data), ru_maxrss 3168 MB, 773 s. 2 mm sample sessions: 832–840 MB
(step records of a full run). 4 mm: 572 MB (registration). The estimate was refitted to these
(600 MB + 3 copies; it was 300 MB + 7 copies, 2.4× too high at 1.25 mm).

Usage::

    python benchmarks/memory.py                   # 2 mm / 37 volumes, then 1.25 mm / 100 volumes
    python benchmarks/memory.py --voxel 4         # tiny smoke run, about 40 s
    python benchmarks/memory.py --geometry-only   # shapes, data sizes, estimates; runs nothing
    python benchmarks/memory.py --voxel 2 1.5 --volumes 64 [--keep DIR] [--json FILE]
                                [--option NAME=VALUE ...]

``--volumes``: one count for every voxel size, or one per voxel size. Default: 37 (the sample
study's 5 b0 + 32 directions) at 2 mm and coarser, 100 below 2 mm. Any count keeps the
sample's layout, a b0 first, last and after every 8 directions (100 = 12 b0 + 88 directions).
The pipeline runs with default options, what a user gets; ``track_seed_density`` counts seeds
per voxel, so 1.25 mm tracks ~4x the streamlines per mm³ of 2 mm (``--option`` to change).

Cost (2 loaded cores): the 4 mm smoke run ~40 s; the 2 mm session ~2-3 min. The 1.25 mm /
100-volume session (117 x 136 x 126 x 100, 765 MB as float32) holds ~10x the data of the 2 mm
one and ~4x the voxels and seeds: expect roughly 15-30 min (CSD fit and tracking most of it)
and ~1 min to generate it. The estimate says 5.7 GB for it and generating it takes ~2-3 GB in
this process (freed before cstbatch starts): run it where ~10 GB are free and no other
memory-heavy job runs. ``--geometry-only`` prints shapes and estimates in seconds.

Findings so far (4 mm smoke run, 41 x 47 x 44 x 37, 12 MB of data): the largest step is
register at ~570 MB, whatever the session's size (it holds the 1 mm MNI template), so the
estimate (384 MB) is 0.67x the measured peak: small sessions are under-estimated by a fixed
~200 MB. The 2 mm and 1.25 mm numbers decide whether COPIES_OF_DATA holds for large data.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from cstbatch.engine.memory import BASE_MB, COPIES_OF_DATA, session_memory_mb  # noqa: E402
from cstbatch.study.options import STEPS  # noqa: E402
from cstbatch.sample import (  # noqa: E402  (the sample study's own deterministic writers)
    DEFAULT_SEED,
    _bval_text,
    _bvec_text,
    _nifti,
    write_nifti_gz,
)
from cstbatch.sample.phantom import gradient_scheme, make_phantom_session, subject_geometry  # noqa: E402

SUBJECT = "sub-01"
ORIENTATION = "LAS"
DIRECTIONS_PER_B0 = 8  # the sample scheme: a b0 after every 8 directions
MB = 2.0**20


# --------------------------------------------------------------------------------------------
# the synthetic session
# --------------------------------------------------------------------------------------------

def default_volumes(voxel_mm: float) -> int:
    """37 (the sample study's scheme) at 2 mm and coarser, 100 for the finer 'large' session."""
    return 37 if voxel_mm >= 2.0 else 100


def scheme_for(volumes: int) -> tuple[int, int]:
    """(b0 count, direction count) adding up to ``volumes``, a b0 after every 8 directions.

    37 -> (5, 32), the sample study's scheme; 100 -> (12, 88).
    """
    for n_b0 in range(1, volumes + 1):
        if n_b0 >= 1 + math.ceil((volumes - n_b0) / DIRECTIONS_PER_B0):
            return n_b0, volumes - n_b0
    raise ValueError(f"no scheme for {volumes} volumes")


def label(voxel_mm: float, volumes: int) -> str:
    return f"{voxel_mm:g}mm_{volumes}vol"


def planned_shape(voxel_mm: float, volumes: int) -> tuple[int, int, int, int]:
    """Image shape of the session, from the phantom's geometry alone (no signal computed)."""
    n_b0, n_dirs = scheme_for(volumes)
    n = gradient_scheme(n_b0, n_dirs)[0].size
    return tuple(subject_geometry(DEFAULT_SEED, voxel_mm, ORIENTATION).shape) + (n,)


def data_mb(shape) -> float:
    """In-memory size of the 4-D data as float32 (what the steps hold), MB."""
    return 4.0 * math.prod(shape) / MB


def write_session(folder: Path, voxel_mm: float, volumes: int) -> tuple[Path, tuple[int, ...]]:
    """Write ``folder/data/sub-01_dwi.{nii.gz,bval,bvec}`` as the sample study writes a session."""
    n_b0, n_dirs = scheme_for(volumes)
    sess = make_phantom_session(seed=DEFAULT_SEED, voxel_mm=voxel_mm, orientation=ORIENTATION,
                                compute_fa=False, n_b0=n_b0, n_directions=n_dirs)
    data = sess.data  # rounded in place: the sample's int16 values without two more float copies
    np.clip(np.rint(data, out=data), -32768, 32767, out=data)
    img = _nifti(data, sess.affine, np.int16, descrip=f"cstbatch benchmark P5 {label(voxel_mm, volumes)}")
    stem = folder / "data" / f"{SUBJECT}_dwi"
    nifti = stem.parent / f"{stem.name}.nii.gz"
    write_nifti_gz(nifti, img)  # makes the folder
    (stem.parent / f"{stem.name}.bval").write_text(_bval_text(sess.bvals))
    (stem.parent / f"{stem.name}.bvec").write_text(_bvec_text(sess.bvecs))
    return nifti, tuple(data.shape)


def write_manifest(folder: Path, nifti: Path) -> Path:
    manifest = folder / "study.json"
    manifest.write_text(json.dumps({
        "name": f"P5 memory benchmark {folder.name}",
        "subjects": [{"id": SUBJECT, "session": None, "nifti": str(nifti.relative_to(folder))}],
    }, indent=2) + "\n")
    return manifest


# --------------------------------------------------------------------------------------------
# running and reading back
# --------------------------------------------------------------------------------------------

def _vm_hwm_mb(pid: int) -> float | None:
    """The process's current peak RSS (VmHWM) in MB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_pipeline(manifest: Path, out: Path, options: list[str], poll_s: float = 0.05) -> dict:
    """Run the cstbatch command in a child: exit code, wall/CPU seconds and two whole-process peaks.

    ``sampled_max_rss_mb``: the largest VmHWM read from /proc/<pid>/status every ``poll_s``
    (the child resets VmHWM before each step, so a peak within the last ``poll_s`` of a step
    could be missed). ``rusage_max_rss_mb``: ``ru_maxrss`` from ``wait4`` (getrusage's
    RUSAGE_CHILDREN value for this one child). The kernel computes ru_maxrss from the same
    high-water mark the step runner resets, so it only covers the time since the last reset
    (the last step and the aggregation): not a whole-run number here, printed to show that.
    The child's output goes to stderr (progress of long runs), leaving stdout to the report.
    """
    argv = [sys.executable, "-m", "cstbatch", "--manifest", str(manifest), str(out), "participant"]
    for pair in options:
        argv += ["--option", pair]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr)
    sampled = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        sampled = max(sampled, _vm_hwm_mb(proc.pid) or 0.0)
        time.sleep(poll_s)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"exit_code": proc.returncode, "wall_s": round(time.perf_counter() - start, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "sampled_max_rss_mb": round(sampled, 1),
            "rusage_max_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def session_spec(manifest: Path, out: Path):
    """The session as the command sees it (same loader, same paths)."""
    from cstbatch.study import load_study

    return load_study(manifest=manifest, output_dir=out).subjects[0]


def read_steps(spec, out: Path) -> list[dict]:
    """Status, duration_s and peak_rss_mb of every step record of the session, in chain order."""
    from cstbatch.outputs.layout import SessionLayout

    layout = SessionLayout.of(out, spec)
    rows = []
    for step in STEPS:
        path = layout.record(step)
        record = json.loads(path.read_text()) if path.exists() else {}
        rows.append({"step": step, "status": record.get("status", "missing"),
                     "duration_s": record.get("duration_s"), "peak_rss_mb": record.get("peak_rss_mb")})
    return rows


def summarise(steps: list[dict], shape, run: dict, estimate_mb: float) -> dict:
    """The session's numbers: largest step peak, ratios to the data size and to the estimate."""
    size = data_mb(shape)
    peaks = [s for s in steps if s["peak_rss_mb"] is not None]
    top = max(peaks, key=lambda s: s["peak_rss_mb"]) if peaks else {"step": None, "peak_rss_mb": float("nan")}
    peak = top["peak_rss_mb"]
    return {
        "shape": list(shape), "data_mb": round(size, 1),
        "peak_rss_mb": peak, "peak_step": top["step"],
        "peak_over_data": round(peak / size, 2),
        "implied_copies": round((peak - BASE_MB) / size, 2),
        "estimate_mb": round(estimate_mb, 1),
        "estimate_over_measured": round(estimate_mb / peak, 3),
        **run,
    }


def measure(work: Path, voxel_mm: float, volumes: int, options: list[str]) -> dict:
    """Generate one session in ``work/<label>/``, run cstbatch on it, collect its numbers."""
    folder = work / label(voxel_mm, volumes)
    print(f"[{label(voxel_mm, volumes)}] generating the session in {folder} ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    nifti, shape = write_session(folder, voxel_mm, volumes)
    generated_s = round(time.perf_counter() - t, 1)
    manifest = write_manifest(folder, nifti)
    out = folder / "out"
    print(f"[{label(voxel_mm, volumes)}] shape {shape}, generated in {generated_s} s; running cstbatch ...",
          file=sys.stderr, flush=True)
    run = run_pipeline(manifest, out, options)
    spec = session_spec(manifest, out)
    steps = read_steps(spec, out)
    return {"voxel_mm": voxel_mm, "volumes": volumes, "scheme_b0_dirs": list(scheme_for(volumes)),
            "generate_s": generated_s, "options": options,
            **summarise(steps, shape, run, session_memory_mb(spec)), "steps": steps}


# --------------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------------

def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_session(r: dict) -> None:
    n_b0, n_dirs = r["scheme_b0_dirs"]
    print(f"\n== {r['voxel_mm']:g} mm, {r['volumes']} volumes ({n_b0} b0 + {n_dirs} directions): "
          f"shape {tuple(r['shape'])}, 4-D float32 data {r['data_mb']:.1f} MB ==")
    print(f"{'step':<10}{'status':<9}{'duration_s':>11}{'peak_rss_mb':>13}{'peak/data':>11}")
    for s in r["steps"]:
        ratio = None if s["peak_rss_mb"] is None else s["peak_rss_mb"] / r["data_mb"]
        print(f"{s['step']:<10}{s['status']:<9}{_num(s['duration_s'], '11.1f')}"
              f"{_num(s['peak_rss_mb'], '13.1f')}{_num(ratio, '11.1f')}")
    print(f"largest step peak    {r['peak_rss_mb']:8.1f} MB ({r['peak_step']}) = {r['peak_over_data']:.1f} x data")
    print(f"process max RSS      {r['sampled_max_rss_mb']:8.1f} MB (cross-check: the cstbatch process's VmHWM, "
          f"sampled every 50 ms)")
    print(f"rusage ru_maxrss     {r['rusage_max_rss_mb']:8.1f} MB (wait4 / RUSAGE_CHILDREN: only since the last "
          f"step's peak reset, not the whole run)")
    print(f"--mem-gb estimate    {r['estimate_mb']:8.1f} MB (session_memory_mb) = "
          f"{r['estimate_over_measured']:.2f} x measured")
    print(f"copies of the data   (peak - {BASE_MB:g} MB) / data = {r['implied_copies']:.1f} "
          f"(the estimate assumes COPIES_OF_DATA = {COPIES_OF_DATA:g})")
    print(f"cstbatch exit {r['exit_code']}, wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s; "
          f"generating the session took {r['generate_s']:.1f} s")


def print_summary(results: list[dict]) -> None:
    print(f"\n{'session':<14}{'shape':<22}{'data MB':>9}{'peak MB':>9}{'step':>10}{'sampled MB':>12}"
          f"{'estimate MB':>13}{'est/meas':>10}{'copies':>8}")
    for r in results:
        print(f"{label(r['voxel_mm'], r['volumes']):<14}{str(tuple(r['shape'])):<22}{r['data_mb']:9.1f}"
              f"{r['peak_rss_mb']:9.1f}{str(r['peak_step']):>10}{r['sampled_max_rss_mb']:12.1f}"
              f"{r['estimate_mb']:13.1f}{r['estimate_over_measured']:10.2f}{r['implied_copies']:8.1f}")


def header_estimate(shape, folder: Path) -> float:
    """``session_memory_mb`` of an image of ``shape``, from a header-only .nii (no data written)."""
    import nibabel as nib
    from types import SimpleNamespace

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    path = folder / "header_only.nii"
    path.write_bytes(hdr.binaryblock + b"\0" * 4)
    return session_memory_mb(SimpleNamespace(input_type="nifti", input_path=path))


def print_geometry(pairs: list[tuple[float, int]]) -> None:
    print(f"{'session':<14}{'b0+dirs':<9}{'shape':<22}{'data MB':>9}{'estimate MB':>13}")
    with tempfile.TemporaryDirectory(prefix="cstbatch-p5-") as tmp:
        for voxel, volumes in pairs:
            shape = planned_shape(voxel, volumes)
            n_b0, n_dirs = scheme_for(volumes)
            print(f"{label(voxel, volumes):<14}{f'{n_b0}+{n_dirs}':<9}{str(shape):<22}"
                  f"{data_mb(shape):9.1f}{header_estimate(shape, Path(tmp)):13.1f}")


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def sessions_from_args(voxels: list[float], volumes: list[int] | None) -> list[tuple[float, int]]:
    if not volumes:
        return [(v, default_volumes(v)) for v in voxels]
    if len(volumes) == 1:
        return [(v, volumes[0]) for v in voxels]
    if len(volumes) != len(voxels):
        raise SystemExit("--volumes: give one count, or one per --voxel size")
    return list(zip(voxels, volumes))


def measure_all(work: Path, pairs: list[tuple[float, int]], options: list[str]) -> list[dict]:
    """Measure the sessions one after the other, printing each as soon as it is done."""
    taken = [work / label(v, n) for v, n in pairs if (work / label(v, n)).exists()]
    if taken:
        raise SystemExit(f"{taken[0]} exists: remove it or choose another --keep folder")
    results = []
    for voxel, volumes in pairs:
        results.append(measure(work, voxel, volumes, options))
        print_session(results[-1])
        sys.stdout.flush()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voxel", type=float, nargs="+", default=[2.0, 1.25], help="voxel sizes in mm (default 2 1.25)")
    p.add_argument("--volumes", type=int, nargs="+",
                   help="volumes per session: one count, or one per voxel size (default 37 at >= 2 mm, 100 below)")
    p.add_argument("--keep", type=Path, metavar="DIR", help="write sessions and outputs here and keep them")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--option", "-o", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline option, passed to cstbatch (repeatable)")
    p.add_argument("--geometry-only", action="store_true",
                   help="print shapes, data sizes and estimates without generating or running anything")
    args = p.parse_args()
    pairs = sessions_from_args(args.voxel, args.volumes)
    if args.geometry_only:
        print_geometry(pairs)
        return 0
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        results = measure_all(args.keep.resolve(), pairs, args.option)
    else:
        with tempfile.TemporaryDirectory(prefix="cstbatch-p5-") as tmp:
            results = measure_all(Path(tmp), pairs, args.option)
    if len(results) > 1:
        print_summary(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    failed = [r for r in results if r["exit_code"] != 0 or any(s["status"] != "success" for s in r["steps"])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
