"""P7: planning cost of a very large study — what a user waits for before anything runs.

Builds a manifest of N sessions (default 20 000) whose inputs are 0-byte files (planning reads
no image data; ingest would fail them), then times, each as a fresh process (interpreter start
and imports included), with its peak resident memory (``wait4`` rusage of that process alone):

* ``dry-run``: ``cstbatch --manifest M OUT participant --dry-run`` (doit's plan of every task);
* ``submit``: ``cstbatch submit --slurm OUT --manifest M --dry-run`` (the sessions needing work,
  the array scripts);
* ``first task``: ``cstbatch --manifest M OUT participant`` until the first session's ingest
  record appears (tasks built, doit's dependency graph, the first up-to-date check), then the
  run is stopped with SIGTERM (the clean stop) and its output folder removed.

Wall time depends on what else the machine runs; the CPU time (user + system of that process)
much less, so both are printed, and the goal is judged on CPU time (on an idle machine the
two differ by the file-system time, well under a second here).

Findings (issue 17; 2 cores shared with other engineers' work at load average 11-15, so wall
times were 4-5× the CPU times; HEAD before issue 17 → now, CPU seconds / peak RSS):

* 20 000 sessions: ``dry-run`` 91.7 s / 1409 MB → 5.6 s / 174 MB; ``submit`` 93.0 s /
  1409 MB → 6.3 s / 174 MB (sessions that never ran are planned without doit tasks:
  ``cstbatch.engine.plan``; manifest entries validated without jsonschema when plainly
  valid); ``first`` task of a real run: before, 2000 sessions 21.4 s, 5000 sessions 156.8 s
  (quadratic: doit's implicit task_dep setup, 650 of 800 profiled seconds at 5000 sessions;
  20 000 not measured, hours by extrapolation) → 20 000 sessions 51.9 s / 1375 MB
  (``cstbatch.engine.doit_speed``, ``gc.freeze`` during task generation). The real run still
  builds all 180 001 doit tasks before starting: that is what remains of the 52 s.
* 100 000 sessions (now): ``dry-run`` 21.9 s / 558 MB, ``submit`` 25.0 s / 557 MB (``first``
  not run: ~5 × the 20 000 figure, ~7 GB, more than this shared machine could spare).

Goal (issue 17): 20 000 sessions plan in ≤ 15 s and ≤ 1 GB; ``submit`` ≤ 15 s.

Usage::

    python benchmarks/plan_scale.py [--sessions 20000 100000] [--root DIR] [--only dry-run submit first]
                                    [--json result.json] [--profile dry-run]

``--profile NAME`` runs that command under cProfile (in this process) and prints the top
functions by cumulative time instead of timing.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_SECONDS = 15.0
GOAL_MB = 1024.0


def build_study(root: Path, n: int) -> Path:
    """The manifest of n sessions with 0-byte inputs (reused when this script already wrote it)."""
    manifest = root / "study.json"
    marker = root / ".plan-scale"
    if marker.exists() and marker.read_text() == str(n) and manifest.exists():
        return manifest
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(1, n + 1):
        stem = data / f"sub-{i:06d}_dwi"
        for ext in (".nii.gz", ".bval", ".bvec"):
            Path(f"{stem}{ext}").touch()
        entries.append({"id": f"sub-{i:06d}", "session": "ses-01", "nifti": f"data/sub-{i:06d}_dwi.nii.gz"})
    manifest.write_text(json.dumps({"name": "plan scale", "options": {"generate_pdf": False}, "subjects": entries}))
    marker.write_text(str(n))
    return manifest


def commands(manifest: Path, out: Path) -> dict[str, list[str]]:
    return {"dry-run": ["--manifest", str(manifest), str(out), "participant", "--dry-run"],
            "submit": ["submit", "--slurm", str(out), "--manifest", str(manifest), "--dry-run"],
            "first": ["--manifest", str(manifest), str(out), "participant"]}


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def timed(argv: list[str], first_record: Path | None = None, timeout: float = 1800) -> dict:
    """Run ``python -m cstbatch argv``; seconds (to exit, or to ``first_record``) and peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cstbatch", *argv], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = None
    if first_record is not None:
        while proc.poll() is None and time.perf_counter() - start < timeout:
            if first_record.exists():
                seconds = time.perf_counter() - start
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
    _pid, status, usage = os.wait4(proc.pid, 0)
    if seconds is None:
        seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if first_record is None and code != 0:
        raise SystemExit(f"cstbatch {' '.join(argv)} failed ({code}):\n{err[-2000:]}")
    if first_record is not None and not first_record.exists():
        raise SystemExit(f"no first record {first_record} (exit {code}):\n{err[-2000:]}")
    return {"seconds": round(seconds, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_mb": round(usage.ru_maxrss / 1024, 1)}


def profile(argv: list[str], top: int = 35) -> None:
    from cstbatch.cli import main

    prof = cProfile.Profile()
    with redirect_stdout(io.StringIO()):
        prof.enable()
        main(argv)
        prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, nargs="+", default=[20000])
    p.add_argument("--root", type=Path, help="where the synthetic studies live (kept; default a temp folder)")
    p.add_argument("--only", nargs="+", choices=("dry-run", "submit", "first"), default=["dry-run", "submit", "first"])
    p.add_argument("--profile", choices=("dry-run", "submit", "first"))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="cstbatch-plan-scale-"))
    results = []
    for n in args.sessions:
        study = root / f"n{n}"
        t0 = time.perf_counter()
        manifest = build_study(study, n)
        print(f"{n} sessions: study at {study} ({time.perf_counter() - t0:.1f} s to build)", flush=True)
        out = study / "out"
        cmds = commands(manifest, out)
        if args.profile:
            shutil.rmtree(out, ignore_errors=True)
            profile(cmds[args.profile])
            shutil.rmtree(out, ignore_errors=True)
            continue
        row = {"sessions": n}
        for name in args.only:
            shutil.rmtree(out, ignore_errors=True)
            first = out / "sub-000001" / "ses-01" / "steps" / "sub-000001_ses-01_step-ingest.json"
            row[name] = timed(cmds[name], first if name == "first" else None)
            ok = row[name]["cpu_s"] <= GOAL_SECONDS and row[name]["peak_mb"] <= GOAL_MB
            print(f"  {name:<8} {row[name]['seconds']:7.2f} s wall  {row[name]['cpu_s']:7.2f} s CPU  "
                  f"{row[name]['peak_mb']:7.1f} MB"
                  + ("" if n > 20000 else ("  (goal met)" if ok else "  (goal NOT met)")), flush=True)
        shutil.rmtree(out, ignore_errors=True)
        results.append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
