"""``cstbatch status OUT_DIR``: every session's state, read from the saved state alone.

    cstbatch status OUT_DIR [--json] [--state failed …]

Works at any time, also while a local or cluster run is writing to the folder, because it
only reads what runs leave behind, each of which is written atomically:

* the sessions: the latest SLURM submission's saved study (``.cstbatch/slurm/<NNNN>/study.json``),
  plus every session with step records (``sub-*/[ses-*/]steps/``) or a doit state shard
  (``.cstbatch/state/<key>.json``);
* the step records: success, failed (step, category, message) or how far a session got;
* the lock files: a session lock (``.cstbatch/locks/<key>/lock``, a cluster job) or the output
  folder's lock (a local run) held by a live process means *running*;
* the latest submission: a session it submitted whose records all predate it, and that no job
  holds, is *pending* (queued, not started) — or *failed* when its job's log
  (``logs/slurm/<NNNN>/array-<j>/<array job>_<i>.out``) shows that the job ran and ended without
  writing a record.

States: ``success`` · ``failed`` · ``running`` · ``pending`` (not started, or unfinished and not
running).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cstbatch.cluster.slurm import STUDY_FILE, session_lock_dir, submissions
from cstbatch.engine.state import STUDY_SHARD, RunLock
from cstbatch.errors import CstBatchError
from cstbatch.outputs.layout import STATE_DIR, SessionLayout
from cstbatch.outputs.results import session_result
from cstbatch.study.options import STEPS

STATES = ("success", "failed", "running", "pending")
STALE_JOB_LOG_S = 60


@dataclass
class SessionStatus:
    key: str
    state: str
    last_step: str | None = None      # last successful step
    failed_step: str | None = None
    error: str | None = None
    detail: str = ""
    updated: float | None = None      # mtime of the newest record (epoch seconds)


def _spec(key: str, relative_dir: Path, subject_id: str = "", session_id: str | None = None):
    """What ``session_result`` needs of a session (key, folder, ids), without its inputs."""
    return SimpleNamespace(key=key, relative_dir=Path(relative_dir), subject_id=subject_id or key.split("_")[0],
                           session_id=session_id)


def _relative_dir_of_key(key: str) -> Path:
    parts = key.split("_")
    if len(parts) > 1 and parts[1].startswith("ses-"):
        return Path(parts[0], parts[1])
    return Path(parts[0])


def known_sessions(out_dir: Path) -> dict[str, Any]:
    """key → session (study order of the latest submission first, then what the folder holds)."""
    sessions: dict[str, Any] = {}
    subs = submissions(out_dir)
    if subs:
        try:
            saved = json.loads((subs[-1].folder / STUDY_FILE).read_text())
        except (OSError, ValueError):
            saved = {"sessions": []}
        from cstbatch.study.spec import job_to_spec

        for job in saved.get("sessions", []):
            spec = job_to_spec(job)
            sessions[spec.key] = _spec(spec.key, spec.relative_dir, spec.subject_id, spec.session_id)
    found: dict[str, Any] = {}
    for pattern in ("sub-*/steps/*_step-*.json", "sub-*/ses-*/steps/*_step-*.json"):
        for record in out_dir.glob(pattern):
            key = record.name.rsplit("_step-", 1)[0]
            rel = record.parent.parent.relative_to(out_dir)
            session_id = rel.parts[1] if len(rel.parts) > 1 else None
            found.setdefault(key, _spec(key, rel, rel.parts[0], session_id))
    state = out_dir / STATE_DIR / "state"
    for shard in state.glob("*.json") if state.is_dir() else []:
        key = shard.stem
        if key != STUDY_SHARD and not key.startswith("."):
            rel = _relative_dir_of_key(key)
            found.setdefault(key, _spec(key, rel, rel.parts[0], rel.parts[1] if len(rel.parts) > 1 else None))
    for key in sorted(found):
        sessions.setdefault(key, found[key])
    return sessions


def _newest_record(layout: SessionLayout) -> float | None:
    times = []
    for step in STEPS:
        try:
            times.append(layout.record(step).stat().st_mtime)
        except OSError:
            pass
    return max(times, default=None)


def _submission_time(sub) -> float | None:
    if sub.extra.get("submitted_epoch"):
        return float(sub.extra["submitted_epoch"])
    try:
        return datetime.fromisoformat(sub.submitted).timestamp() if sub.submitted else None
    except ValueError:
        return None


def session_states(out_dir: Path) -> list[SessionStatus]:
    out_dir = Path(out_dir)
    sessions = known_sessions(out_dir)
    folder_holder = RunLock(out_dir / STATE_DIR).live_holder()
    subs = submissions(out_dir)
    latest = subs[-1] if subs else None
    latest_keys = set(latest.keys) if latest else set()
    latest_time = _submission_time(latest) if latest else None
    rows = []
    for key, spec in sessions.items():
        layout = SessionLayout.of(out_dir, spec)
        result = session_result(spec, out_dir)
        row = SessionStatus(key, result.status if result.status in ("success", "failed") else "pending",
                            result.last_step, result.failed_step, result.error,
                            updated=_newest_record(layout))
        if result.status == "failed":
            row.detail = f"{result.failed_step}: {result.error_category}: {result.error}"
        elif result.status != "success" and result.last_step:
            row.detail = f"stopped after {result.last_step}"
        holder = RunLock(session_lock_dir(out_dir, key)).live_holder()
        started_after_submit = row.updated is not None and latest_time is not None and row.updated >= latest_time
        if holder:
            row.state = "running"
            row.detail = f"job on {holder.get('host')} (pid {holder.get('pid')}, since {holder.get('started')})"
        elif key in latest_keys and not started_after_submit and (where := latest.element_of(key)) \
                and where[0].job_id:
            array, task = where
            element = f"{array.job_id}_{task}"
            job_log = latest.log_of(out_dir, array, task)
            log_time = job_log.stat().st_mtime if job_log.exists() else None
            # (a job that just started has a fresh log and takes its lock within seconds)
            if log_time is not None and latest_time <= log_time < time.time() - STALE_JOB_LOG_S:
                row.state = "failed"  # its job started and ended without writing a record
                row.detail = (f"array job {element} ended without updating its records "
                              f"(see {job_log.relative_to(out_dir).as_posix()})")
            else:
                row.state = "pending"
                row.detail = f"queued: array job {element} (submission {latest.folder.name})"
        elif folder_holder and result.status not in ("success", "failed") and result.last_step:
            row.state = "running"
            row.detail = f"local run (pid {folder_holder.get('pid')} on {folder_holder.get('host')})"
        rows.append(row)
    return rows


def format_table(rows: list[SessionStatus], out_dir: Path) -> str:
    width = max([len("SESSION")] + [len(r.key) for r in rows])
    lines = [f"{'SESSION':<{width}}  {'STATE':<8} {'LAST STEP':<9}  {'UPDATED':<19}  DETAIL"]
    for r in rows:
        updated = datetime.fromtimestamp(r.updated).strftime("%Y-%m-%d %H:%M:%S") if r.updated else "-"
        detail = r.detail if len(r.detail) <= 160 else r.detail[:159] + "…"
        lines.append(f"{r.key:<{width}}  {r.state:<8} {r.last_step or '-':<9}  {updated:<19}  {detail}".rstrip())
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    lines.append(f"{len(rows)} sessions: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    holder = RunLock(Path(out_dir) / STATE_DIR).live_holder()
    if holder:
        lines.append(f"a run holds {out_dir} (pid {holder.get('pid')} on {holder.get('host')}, "
                     f"since {holder.get('started')})")
    return "\n".join(lines)


def cmd_status(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="cstbatch status",
                                description="each session's state (success / failed / running / pending) and last "
                                "step, from the output folder's saved state; safe while a run is going on")
    p.add_argument("out", type=Path, help="the output folder of a run or submission")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--state", nargs="+", choices=STATES, help="only sessions in these states")
    args = p.parse_args(argv)
    out_dir = args.out.resolve()
    if not out_dir.is_dir():
        raise CstBatchError(f"{args.out}: no such folder")
    rows = session_states(out_dir)
    if args.state:
        rows = [r for r in rows if r.state in args.state]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
    elif not rows:
        print(f"{out_dir}: no sessions found (no step records, state or submissions yet)")
    else:
        print(format_table(rows, out_dir))
    return 0
