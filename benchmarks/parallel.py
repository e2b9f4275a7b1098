"""P2: sessions side by side — the same 4 sample sessions with ``-n 2`` and with ``-n 1``.

Why. cstbatch gets its parallelism from running sessions side by side (doit ``-n``; every task
is limited to one BLAS thread, ``cstbatch.engine.threads``), not from threads inside a step. On a
2-core machine ``-n 2`` should therefore nearly double the throughput: goal
t(-n 1) / t(-n 2) ≥ 1.8 for 4 sessions.

How. The first sessions of the sample study (``sample_data/manifest.json``; 4 by default) go
into a manifest written to a work folder, with absolute paths to the generated data and the
sample manifest's options. The sample study in ``--sample`` (default
``sample_data/generated``) is reused when its ``sample_info.json`` matches the current
generator (version, seed, voxel size, SNR) and every file is there, as the ``sample_study``
task decides; otherwise it is (re)generated. Each ``-n`` then processes those sessions into a
fresh output folder, through ``python -m cstbatch --manifest … participant -n N`` in a fresh
process, so interpreter start, imports, task generation and the aggregation count alike::

    python benchmarks/parallel.py                        # -n 1 then -n 2, the default sample
    python benchmarks/parallel.py --jobs 2 1 --repeat 2  # other order, best of 2 each
    python benchmarks/parallel.py --voxel 4              # quick check on a tiny sample study
    python benchmarks/parallel.py --json p2.json         # also write the numbers

On an idle 2-core machine the default run takes about 12 minutes (-n 1 ≈ 7, -n 2 ≈ 4, and
about 1 to generate the sample study when it is not current). ``--voxel V`` other than the
sample's default voxel size generates a separate study into a temporary folder (unless
``--sample`` is given). Printed per ``-n``: wall seconds (best of
``--repeat``), sessions/hour, CPU utilisation (user+sys of all child processes / wall; 2.0 is
both cores busy), the sum of the step durations from the step records (``duration_s``) and
the largest step peak RSS; then the throughput ratio and the sum of durations per step at
each ``-n`` against ``-n 1`` (how much each step slows down when it shares the machine).

What limits the ratio.

* The tail: sessions do not all take the same time, and when they do not divide evenly over
  the workers (or one is slower) one core idles while the last session finishes. The
  serial parts — interpreter start, imports, task generation, the aggregation — run on one
  core in both runs.
* Contention: two sessions share memory bandwidth and the last-level cache, so each step runs
  slower at ``-n 2`` than alone; the sum of step durations shows by how much.
* The machine itself: other load on the cores. At ``-n 1`` the single-threaded run should
  keep one core busy (CPU utilisation ≈ 1.0); well below that, something else shared the
  cores and the script says so.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cstbatch import sample  # noqa: E402
from cstbatch.outputs.layout import SessionLayout  # noqa: E402
from cstbatch.study.manifest import load_manifest, read_manifest_file  # noqa: E402
from cstbatch.study.options import STEPS  # noqa: E402
from cstbatch.outputs.records import read_record  # noqa: E402
from cstbatch.study import SAMPLE_MANIFEST  # noqa: E402

GOAL_RATIO = 1.8
SHARED_BELOW = 0.9   # CPU utilisation at -n 1 below this: something else was using the cores
PATH_KEYS = ("nifti", "dicom", "bval", "bvec")


# --------------------------------------------------------------------------------------------
# the sample study
# --------------------------------------------------------------------------------------------

def sample_defaults() -> dict:
    """seed, voxel_mm and snr as ``generate_sample_study`` defaults them (never hard-coded)."""
    params = inspect.signature(sample.generate_sample_study).parameters
    return {name: params[name].default for name in ("seed", "voxel_mm", "snr")}


def sample_is_current(sample_dir: Path, parameters: dict) -> bool:
    """True when ``sample_dir`` holds every file of the current generator for ``parameters``."""
    try:
        info = json.loads((sample_dir / "sample_info.json").read_text())
    except (OSError, ValueError):
        return False
    if info.get("sample_version") != sample.SAMPLE_VERSION:
        return False
    if any(float(info.get(k, "nan")) != float(v) for k, v in parameters.items()):
        return False
    outputs = sample.sample_outputs(sample_dir, seed=parameters["seed"], voxel_mm=parameters["voxel_mm"])
    return all(path.exists() for path in outputs)


def ensure_sample(sample_dir: Path, parameters: dict) -> float:
    """Generate the sample study into ``sample_dir`` unless it is current; seconds spent."""
    if sample_is_current(sample_dir, parameters):
        print(f"sample study: reusing {sample_dir} ({parameters['voxel_mm']:g} mm)")
        return 0.0
    print(f"sample study: generating into {sample_dir} ({parameters['voxel_mm']:g} mm) …")
    start = time.perf_counter()
    sample.generate_sample_study(sample_dir, **parameters, log=lambda line: print("  " + line))
    return time.perf_counter() - start


def write_manifest(sample_dir: Path, dest: Path, sessions: int) -> Path:
    """The sample manifest's first ``sessions`` entries, pointing into ``sample_dir``."""
    data = read_manifest_file(SAMPLE_MANIFEST)
    generated = SAMPLE_MANIFEST.parent / "generated"   # where the sample manifest's paths point
    if not 1 <= sessions <= len(data["subjects"]):
        raise SystemExit(f"--sessions must be 1..{len(data['subjects'])}")
    subjects = []
    for entry in data["subjects"][:sessions]:
        entry = dict(entry)
        for key in PATH_KEYS:
            if key in entry:
                relative = (SAMPLE_MANIFEST.parent / entry[key]).relative_to(generated)
                entry[key] = str(sample_dir.resolve() / relative)
        subjects.append(entry)
    manifest = {"name": f"P2 benchmark: {sessions} sample sessions",
                "options": data.get("options") or {}, "subjects": subjects}
    dest.write_text(json.dumps(manifest, indent=1))
    return dest


# --------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------

def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_study(manifest: Path, out: Path, jobs: int, log: Path) -> dict:
    """Process the manifest into ``out`` with ``-n jobs`` in a fresh process: wall, CPU, exit."""
    command = [sys.executable, "-m", "cstbatch", "--manifest", str(manifest), str(out),
               "participant", "-n", str(jobs)]
    load = os.getloadavg()[0]
    cpu = children_cpu()
    start = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.run(command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    cpu = children_cpu() - cpu
    if code != 0:
        raise SystemExit(f"-n {jobs} failed (exit {code}); its output: {log}\n"
                         + "\n".join(log.read_text().splitlines()[-20:]))
    return {"jobs": jobs, "wall_s": wall, "cpu_s": cpu, "cpu_utilisation": cpu / wall, "load_before": load}


def step_records(manifest: Path, out: Path) -> list[dict]:
    """Every step record of the run (one per session and step); missing ones are an error."""
    specs, _ = load_manifest(manifest, output_dir=out)
    records = []
    for spec in specs:
        layout = SessionLayout.of(out, spec)
        for step in STEPS:
            record = read_record(layout.record(step))
            if record is None or record.get("status") != "success":
                raise SystemExit(f"{layout.record(step)}: missing or not a success")
            records.append(record)
    return records


def step_summary(records: list[dict]) -> dict:
    per_step = {step: 0.0 for step in STEPS}
    for record in records:
        per_step[record["step"]] += record["duration_s"]
    return {"steps_s": sum(per_step.values()), "per_step_s": per_step,
            "max_step_peak_rss_mb": max(r.get("peak_rss_mb") or 0.0 for r in records)}


def measure(manifest: Path, work: Path, jobs: int, index: int, keep: bool) -> dict:
    out = work / f"out-{index}-n{jobs}"
    result = run_study(manifest, out, jobs, work / f"run-{index}-n{jobs}.log")
    result.update(step_summary(step_records(manifest, out)))
    if not keep:
        shutil.rmtree(out)
    print(f"  run {index}: -n {jobs}: {result['wall_s']:7.1f} s wall, CPU {result['cpu_utilisation']:.2f}, "
          f"steps {result['steps_s']:7.1f} s (load average before: {result['load_before']:.2f})")
    return result


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------

def best_by_jobs(runs: list[dict]) -> dict[int, dict]:
    """Per ``-n``, the run with the shortest wall time."""
    best: dict[int, dict] = {}
    for run in runs:
        if run["jobs"] not in best or run["wall_s"] < best[run["jobs"]]["wall_s"]:
            best[run["jobs"]] = run
    return best


def print_summary(best: dict[int, dict], sessions: int) -> dict:
    print(f"\n{'':6}{'wall s':>9}{'sessions/h':>12}{'CPU util':>10}{'Σ steps s':>11}{'max step RSS MB':>17}")
    for jobs, run in sorted(best.items()):
        print(f"-n {jobs:<3}{run['wall_s']:9.1f}{sessions * 3600 / run['wall_s']:12.1f}"
              f"{run['cpu_utilisation']:10.2f}{run['steps_s']:11.1f}{run['max_step_peak_rss_mb']:17.0f}")
    summary = {str(j): {**r, "sessions_per_hour": sessions * 3600 / r["wall_s"]} for j, r in best.items()}
    if 1 not in best:
        return {"runs": summary}
    base = best[1]
    others = [j for j in sorted(best) if j != 1]
    if others:
        print(f"\n{'step':10}{'Σ -n 1 s':>10}" + "".join(f"{f'Σ -n {j} s':>11}{'×':>7}" for j in others))
        for step in STEPS:
            row = f"{step:10}{base['per_step_s'][step]:10.1f}"
            for j in others:
                value = best[j]["per_step_s"][step]
                row += f"{value:11.1f}{value / base['per_step_s'][step]:7.2f}" if base["per_step_s"][step] else \
                       f"{value:11.1f}{'-':>7}"
            print(row)
    if base["cpu_utilisation"] < SHARED_BELOW:
        print(f"\nWARNING: CPU utilisation {base['cpu_utilisation']:.2f} at -n 1 (one thread, ~1.0 on an idle "
              "machine): other load shared the cores, the numbers below understate what cstbatch can do")
    ratios = {str(j): base["wall_s"] / best[j]["wall_s"] for j in others}
    for j in others:
        print(f"\nthroughput ratio t(-n 1)/t(-n {j}): {ratios[str(j)]:.2f}"
              + (f"  (goal ≥ {GOAL_RATIO} on 2 cores: {'met' if ratios[str(j)] >= GOAL_RATIO else 'NOT met'})"
                 if j == 2 else "")
              + f";  Σ step durations ×{best[j]['steps_s'] / base['steps_s']:.2f}")
    return {"runs": summary, "throughput_ratio": ratios}


# --------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=4, help="first N sessions of the sample manifest (default 4)")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="the -n values, run in this order "
                   "(default 1 2)")
    p.add_argument("--repeat", type=int, default=1, help="runs per -n, alternating; the best is reported")
    p.add_argument("--voxel", type=float, help="voxel size of the sample study in mm (default: the sample's)")
    p.add_argument("--sample", type=Path, help="sample study folder (default sample_data/generated, or a "
                   "temporary one when --voxel differs from the sample's default)")
    p.add_argument("--work", type=Path, help="folder for the manifest, logs and outputs (default: temporary, "
                   "removed)")
    p.add_argument("--keep", action="store_true", help="keep the output folders")
    p.add_argument("--json", type=Path, help="write the numbers here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parameters = sample_defaults()
    default_voxel = parameters["voxel_mm"]
    if args.voxel is not None:
        parameters["voxel_mm"] = args.voxel
    cleanup: list[Path] = []
    work = args.work or Path(tempfile.mkdtemp(prefix="cstbatch-p2-"))
    if args.work is None:
        cleanup.append(work)
    work.mkdir(parents=True, exist_ok=True)
    sample_dir = args.sample
    if sample_dir is None:
        sample_dir = (SAMPLE_MANIFEST.parent / "generated" if parameters["voxel_mm"] == default_voxel
                      else work / f"sample-{parameters['voxel_mm']:g}mm")
    try:
        generate_s = ensure_sample(sample_dir.resolve(), parameters)
        manifest = write_manifest(sample_dir, work / "study.json", args.sessions)
        print(f"{args.sessions} sessions, {os.cpu_count()} cores, -n {' '.join(map(str, args.jobs))}, "
              f"repeat {args.repeat}; work folder {work}")
        runs = [measure(manifest, work, jobs, r * len(args.jobs) + i + 1, args.keep)
                for r in range(args.repeat) for i, jobs in enumerate(args.jobs)]
        result = print_summary(best_by_jobs(runs), args.sessions)
        result.update(sessions=args.sessions, cores=os.cpu_count(), voxel_mm=parameters["voxel_mm"],
                      sample_dir=str(sample_dir), sample_generate_s=generate_s, all_runs=runs)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return 0
    finally:
        if not args.keep:
            for path in cleanup:
                shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
