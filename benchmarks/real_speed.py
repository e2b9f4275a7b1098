"""Issue 19 benchmark: every step of every real scan in ../shared/real-dwi, wall and CPU time and
peak RSS per step, as a table.

    python benchmarks/real_speed.py [--real ../shared/real-dwi] [-n 2] [--out DIR] [--option NAME=VALUE ...]

The scans are processed as a user would (`cstbatch REAL OUT participant -n N`, two sessions side by
side by default, as in the issue's measurements); the numbers come from the step records each step
writes (``duration_s``, ``cpu_s``, ``peak_rss_mb``: the worker process's own peak, reset per step).
Run it on an idle machine: wall time above CPU time means the step waited for a core.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cstbatch.study.options import STEPS  # noqa: E402  (the chain's order, for the table)


def session_rows(out: Path) -> list[dict]:
    """One row per session and step, read from the step records."""
    rows = []
    for record_path in sorted(out.glob("sub-*/**/steps/*_step-*.json")):
        record = json.loads(record_path.read_text())
        rows.append({"session": record["session"], "step": record["step"], "status": record["status"],
                     "wall_s": record.get("duration_s"), "cpu_s": record.get("cpu_s"),
                     "rss_mb": record.get("peak_rss_mb")})
    return rows


def print_table(rows: list[dict]) -> None:
    sessions = sorted({r["session"] for r in rows})
    by = {(r["session"], r["step"]): r for r in rows}
    print(f"{'session':<24} {'step':<9} {'status':<8} {'wall s':>8} {'cpu s':>8} {'peak MB':>8}")
    for session in sessions:
        total_wall = total_cpu = peak = 0.0
        for step in STEPS:
            r = by.get((session, step))
            if r is None:
                continue
            wall, cpu, rss = r["wall_s"] or 0.0, r["cpu_s"] or 0.0, r["rss_mb"] or 0.0
            total_wall, total_cpu, peak = total_wall + wall, total_cpu + cpu, max(peak, rss)
            print(f"{session:<24} {step:<9} {r['status']:<8} {wall:8.1f} {cpu:8.1f} {rss:8.0f}")
        print(f"{session:<24} {'SESSION':<9} {'':<8} {total_wall:8.1f} {total_cpu:8.1f} {peak:8.0f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "real-dwi")
    p.add_argument("-n", "--jobs", type=int, default=2, help="sessions side by side (default 2)")
    p.add_argument("--out", type=Path, help="output folder (default: a new temporary one)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--participant-label", nargs="+")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="cstbatch-real-speed-"))
    cmd = [sys.executable, "-m", "cstbatch", str(args.real), str(out), "participant", "-n", str(args.jobs)]
    for option in args.option:
        cmd += ["--option", option]
    if args.participant_label:
        cmd += ["--participant-label", *args.participant_label]
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT).returncode
    wall = time.perf_counter() - start
    print(f"\n{' '.join(cmd[1:])}\nexit {code}, {wall:.1f} s wall for the whole run ({args.jobs} side by side), "
          f"outputs in {out}\n")
    print_table(session_rows(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
