"""Running a study on a SLURM cluster: one array element per session, then the aggregation.

    cstbatch submit --slurm [BIDS_DIR] OUT_DIR [--manifest M] [--participant-label …] [--option …]
                    [--partition P] [--time HH:MM:SS] [--mem-per-job 4G] [--cpus 1] [--throttle K]
                    [--dry-run]

``submit`` loads the study exactly as the BIDS-App front door does, asks doit's ``plan`` (and the
step records) which sessions still need work, leaves out sessions whose jobs are still queued or
running, and submits

* a job array (``#SBATCH --array=0-(n-1)[%K]``) whose element *i* runs the chain of the *i*-th
  session needing work, under a lock of its own (``.cstbatch/locks/<key>/lock``) instead of the
  output folder's run lock, so elements run side by side on any node;
* an aggregation job, ``--dependency=afterany:<array job>``, that runs doit's ``aggregate`` task
  alone (``doit run -s aggregate``): it refreshes the group outputs from the saved state once
  every element has ended, whether it succeeded or not.

Everything a job needs is saved first under ``<out>/.cstbatch/slurm/<NNNN>/`` (one folder per
submission): the effective study as JSON (sessions with absolute paths and effective options,
plugins folder, plugin allow-list), the list of keys, both scripts, and the job ids. Jobs
therefore never depend on the submitting shell's working folder or environment (they run with
``--chdir=<out>`` and the submitting Python's absolute path). Resubmitting after failures
submits only the sessions that are still unfinished; doit's up-to-date checks make each
element redo only the steps that need it.

The jobs' entry points are ``python -m cstbatch.cluster.slurm run-session SUBMISSION_DIR INDEX`` and
``python -m cstbatch.cluster.slurm aggregate SUBMISSION_DIR`` (not meant to be typed by hand).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cstbatch.engine.threads import THREAD_VARIABLES
from cstbatch.errors import CstBatchError
from cstbatch.outputs.layout import STATE_DIR

SLURM_DIR = "slurm"            # <out>/.cstbatch/slurm/<NNNN>/
LOCKS_DIR = "locks"            # <out>/.cstbatch/locks/<key>/lock (per-session locks of array elements)
STUDY_FILE = "study.json"
KEYS_FILE = "keys.json"
SUBMISSION_FILE = "submission.json"
ARRAY_SCRIPT = "array.sh"
AGGREGATE_SCRIPT = "aggregate.sh"
SAVED_FORMAT = 1
ARRAY_ID_PLACEHOLDER = "<ARRAY_JOB_ID>"


def slurm_root(out_dir: Path) -> Path:
    return Path(out_dir) / STATE_DIR / SLURM_DIR


def session_lock_dir(out_dir: Path, key: str) -> Path:
    """The folder whose ``lock`` file an array element running ``key`` holds."""
    return Path(out_dir) / STATE_DIR / LOCKS_DIR / key


# -- the saved study -------------------------------------------------------------------------

def study_to_saved(study) -> dict[str, Any]:
    """The effective study as plain JSON: enough to rebuild the exact same tasks anywhere."""
    from cstbatch._version import __version__
    from cstbatch.plugins import ALLOW_ENV, default_plugins_dir
    from cstbatch.study.spec import spec_to_job

    cfg = study.config
    plugins_dir = Path(study.plugins_dir if study.plugins_dir is not None else default_plugins_dir()).resolve()
    out_dir = Path(cfg.output_dir).resolve()
    return {
        "format": SAVED_FORMAT,
        "cstbatch_version": __version__,
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kind": "manifest" if study.kind == "sample" else study.kind,  # sample data is made before submitting
        "name": cfg.name,
        "description": cfg.description,
        "options": dict(cfg.options),
        "output_dir": str(out_dir),
        "source_dataset": str(cfg.source_dataset) if cfg.source_dataset else None,
        "participants_tsv": str(cfg.participants_tsv) if cfg.participants_tsv else None,
        "plugins_dir": str(plugins_dir),
        "plugins_allow": os.environ.get(ALLOW_ENV),
        "sessions": [spec_to_job(s, out_dir, plugins_dir) for s in study.subjects],
    }


def study_from_saved(data: dict[str, Any], only: list[str] | None = None):
    """Rebuild the ``Study`` saved by ``study_to_saved`` (optionally only some sessions)."""
    from cstbatch.plugins import ALLOW_ENV
    from cstbatch.study import Study
    from cstbatch.study.spec import BatchConfig, job_to_spec

    if data.get("format") != SAVED_FORMAT:
        raise CstBatchError(f"saved study format {data.get('format')!r} is not {SAVED_FORMAT}: resubmit")
    # the allow-list in force when the study was submitted, not the job's environment's
    if data.get("plugins_allow") is None:
        os.environ.pop(ALLOW_ENV, None)
    else:
        os.environ[ALLOW_ENV] = data["plugins_allow"]
    config = BatchConfig(output_dir=Path(data["output_dir"]), options=dict(data["options"]), name=data["name"],
                         description=data.get("description", ""),
                         source_dataset=Path(data["source_dataset"]) if data.get("source_dataset") else None,
                         participants_tsv=Path(data["participants_tsv"]) if data.get("participants_tsv") else None)
    specs = [job_to_spec(s) for s in data["sessions"]]
    if only is not None:
        wanted = set(only)
        specs = [s for s in specs if s.key in wanted]
    return Study(specs, config, [], data.get("kind", "manifest"), Path(data["plugins_dir"]))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CstBatchError(f"{path}: not found") from None
    except (OSError, ValueError) as exc:
        raise CstBatchError(f"{path}: cannot read ({exc})") from None


def write_json_file(path: Path, data: Any) -> None:
    from cstbatch.atomic import write_json

    write_json(Path(path), data)


# -- which sessions need work -----------------------------------------------------------------

_PLAN_LINE = re.compile(r"^run  ([^\s:]+)(?::(\S+))?\s", re.M)


def planned_work(study) -> tuple[set[str], bool]:
    """(keys of sessions with a task doit would run, whether the aggregation would run)."""
    from cstbatch.engine.runner import plan_text

    keys, aggregate = set(), False
    for match in _PLAN_LINE.finditer(plan_text(study)):
        if match.group(2):
            keys.add(match.group(1))
        elif match.group(1) == "aggregate":
            aggregate = True
    return keys, aggregate


def sessions_needing_work(study) -> tuple[list[str], bool]:
    """Sessions, in study order, whose records are not all successes or that doit would rerun
    (inputs, options or implementation changed); and whether the aggregation is out of date."""
    from cstbatch.outputs.results import session_result

    planned, aggregate = planned_work(study)
    out_dir = study.config.output_dir
    keys = [s.key for s in study.subjects
            if s.key in planned or session_result(s, out_dir).status != "success"]
    return keys, aggregate


@dataclass
class Submission:
    folder: Path
    array_job_id: str | None
    aggregate_job_id: str | None
    keys: list[str]
    submitted: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def submissions(out_dir: Path) -> list[Submission]:
    """Earlier submissions of this output folder, oldest first."""
    found = []
    root = slurm_root(out_dir)
    for folder in sorted(root.glob("[0-9][0-9][0-9][0-9]")) if root.is_dir() else []:
        try:
            info = json.loads((folder / SUBMISSION_FILE).read_text())
        except (OSError, ValueError):
            continue
        found.append(Submission(folder, info.get("array_job_id"), info.get("aggregate_job_id"),
                                list(info.get("keys") or []), info.get("submitted"), info))
    return found


def squeue_jobs() -> dict[str, list[tuple[str, str]]] | None:
    """Queued or running jobs: array job id → [(array task id or 'N/A', state)]; None without squeue."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        proc = subprocess.run([squeue, "-h", "-r", "-o", "%F|%K|%i|%T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    jobs: dict[str, list[tuple[str, str]]] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4:
            continue
        array_id, task_id, job_id, state = parts
        jobs.setdefault(array_id, []).append((task_id, state))
        if job_id != array_id:
            jobs.setdefault(job_id, []).append(("N/A", state))
    return jobs


def keys_in_flight(out_dir: Path, exclude_job: str | None = None) -> set[str]:
    """Sessions of earlier submissions whose array elements are still queued or running."""
    subs = [s for s in submissions(out_dir) if s.array_job_id]
    if not subs:
        return set()
    queue = squeue_jobs() or {}
    busy: set[str] = set()
    for sub in subs:
        for task_id, _state in queue.get(sub.array_job_id, []):
            if task_id.isdigit() and int(task_id) < len(sub.keys):
                if exclude_job and f"{sub.array_job_id}_{task_id}" == exclude_job:
                    continue
                busy.add(sub.keys[int(task_id)])
    return busy


# -- scripts ----------------------------------------------------------------------------------

@dataclass
class Resources:
    partition: str | None = None
    time: str | None = None
    mem: str | None = "4G"
    cpus: int = 1
    throttle: int | None = None


def _job_name(study_name: str) -> str:
    return "cstbatch-" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", study_name).strip("_")[:40] or "study")


def _header(lines: list[str], res: Resources, out_dir: Path) -> list[str]:
    lines.append(f"#SBATCH --chdir={out_dir}")
    if res.partition:
        lines.append(f"#SBATCH --partition={res.partition}")
    if res.time:
        lines.append(f"#SBATCH --time={res.time}")
    if res.mem:
        lines.append(f"#SBATCH --mem={res.mem}")
    lines.append(f"#SBATCH --cpus-per-task={res.cpus}")
    return lines


def _environment(res: Resources) -> list[str]:
    return ["set -u",
            "# numerical libraries use the job's CPUs, not the node's",
            "export " + " ".join(f"{v}={res.cpus}" for v in THREAD_VARIABLES),
            "export PYTHONUNBUFFERED=1"]


def array_script(sub_dir: Path, out_dir: Path, n: int, res: Resources, study_name: str) -> str:
    array = f"0-{n - 1}" + (f"%{res.throttle}" if res.throttle else "")
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={_job_name(study_name)}",
             f"#SBATCH --array={array}",
             f"#SBATCH --output={out_dir}/logs/slurm-%A_%a.out"]
    _header(lines, res, out_dir)
    lines += [f"# cstbatch: one session per element; element i runs the i-th key of {sub_dir / KEYS_FILE}",
              *_environment(res),
              f"exec {shlex.quote(sys.executable)} -m cstbatch.cluster.slurm run-session {shlex.quote(str(sub_dir))} "
              '"$SLURM_ARRAY_TASK_ID"', ""]
    return "\n".join(lines)


def aggregate_script(sub_dir: Path, out_dir: Path, array_job_id: str, res: Resources, study_name: str) -> str:
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={_job_name(study_name)}-aggregate",
             f"#SBATCH --dependency=afterany:{array_job_id}",
             f"#SBATCH --output={out_dir}/logs/slurm-%j-aggregate.out"]
    agg = Resources(res.partition, res.time, res.mem, 1)
    _header(lines, agg, out_dir)
    lines += ["# cstbatch: group outputs from the saved state, once every array element has ended",
              *_environment(agg),
              f"exec {shlex.quote(sys.executable)} -m cstbatch.cluster.slurm aggregate {shlex.quote(str(sub_dir))}", ""]
    return "\n".join(lines)


def sbatch(script: Path) -> str:
    """Submit with ``sbatch --parsable``; the job id."""
    exe = shutil.which("sbatch")
    if exe is None:
        raise CstBatchError("sbatch not found: is this a SLURM login node? (--dry-run prints the scripts)")
    proc = subprocess.run([exe, "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CstBatchError(f"sbatch {script.name} failed: {(proc.stderr or proc.stdout).strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise CstBatchError(f"sbatch {script.name}: unexpected answer {proc.stdout.strip()!r}")
    return job_id


def _new_submission_dir(out_dir: Path) -> Path:
    root = slurm_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    existing = [int(p.name) for p in root.glob("[0-9][0-9][0-9][0-9]") if p.name.isdigit()]
    number = max(existing, default=0) + 1
    while True:
        folder = root / f"{number:04d}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            number += 1


def _next_submission_dir_name(out_dir: Path) -> Path:
    root = slurm_root(out_dir)
    existing = [int(p.name) for p in root.glob("[0-9][0-9][0-9][0-9]")] if root.is_dir() else []
    return root / f"{max(existing, default=0) + 1:04d}"


# -- cstbatch submit --------------------------------------------------------------------------

def _submit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cstbatch submit", description="Submit the sessions that still need work "
                                "to a cluster scheduler (one array element per session), then the aggregation.")
    p.add_argument("paths", nargs="+", metavar="[BIDS_DIR] OUT_DIR [participant]",
                   help="BIDS folder (omit with --manifest) and output folder, as for `cstbatch`")
    p.add_argument("--slurm", action="store_true", help="submit to SLURM (the only scheduler supported; default)")
    from cstbatch.study.arguments import add_study_arguments

    add_study_arguments(p)
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--time", help="time limit of each job (HH:MM:SS or D-HH:MM:SS)")
    p.add_argument("--mem-per-job", default="4G", help="memory of each job (default 4G)")
    p.add_argument("--cpus", type=int, default=1, help="CPUs of each session's job (default 1); also the "
                   "thread count of numerical libraries")
    p.add_argument("--throttle", type=int, help="at most K array elements running at once (--array=…%%K)")
    p.add_argument("--dry-run", action="store_true", help="print the scripts; submit and write nothing")
    return p


def _load_for_submit(args):
    from cstbatch.study.arguments import study_from_args

    paths = list(args.paths)
    if paths and paths[-1] in ("participant", "group"):
        paths.pop()
    expected = 1 if args.manifest else 2
    if len(paths) != expected:
        raise CstBatchError("expected BIDS_DIR OUT_DIR" if not args.manifest else "with --manifest, expected OUT_DIR")
    *inputs, out_dir = paths
    study = study_from_args(args, inputs, out_dir)
    return study


def cmd_submit(argv: list[str]) -> int:
    args = _submit_parser().parse_args(argv)
    if args.cpus < 1 or (args.throttle is not None and args.throttle < 1):
        raise CstBatchError("--cpus and --throttle must be at least 1")
    res = Resources(args.partition, args.time, args.mem_per_job, args.cpus, args.throttle)
    study = _load_for_submit(args)
    out_dir = Path(study.config.output_dir).resolve()
    study.config.output_dir = out_dir

    from cstbatch.engine.state import RunLock

    holder = RunLock(out_dir / STATE_DIR).holder()
    if holder and not args.dry_run and holder.get("host") == socket.gethostname() \
            and RunLock._alive(int(holder.get("pid", -1))):
        raise CstBatchError(f"{out_dir}: a local cstbatch run is using this folder (pid {holder.get('pid')}); "
                            "wait for it before submitting")
    if study.kind == "sample" and not args.dry_run:
        from cstbatch.engine.runner import run_doit
        from cstbatch.engine.tasks import SAMPLE_TASK

        run_doit(study, ["run", "--verbosity", "0", SAMPLE_TASK])

    keys, aggregate_stale = sessions_needing_work(study)
    busy = keys_in_flight(out_dir)
    if busy:
        print(f"{len(busy)} session(s) still queued or running from an earlier submission, left out: "
              f"{', '.join(sorted(busy)[:10])}{' …' if len(busy) > 10 else ''}")
    keys = [k for k in keys if k not in busy]
    total = len(study.subjects)
    print(f"{len(keys)} of {total} sessions need work" + (f": {', '.join(keys[:10])}" if keys else "")
          + (" …" if len(keys) > 10 else ""))
    if not keys and (busy or not aggregate_stale):
        print("nothing to submit")
        return 0

    if args.dry_run:
        sub_dir = _next_submission_dir_name(out_dir)
        print(f"# would write {sub_dir}/ ({STUDY_FILE}, {KEYS_FILE}) and submit with sbatch --parsable:")
        if keys:
            print(f"# --- {ARRAY_SCRIPT}")
            print(array_script(sub_dir, out_dir, len(keys), res, study.config.name), end="")
        print(f"# --- {AGGREGATE_SCRIPT}")
        text = aggregate_script(sub_dir, out_dir, ARRAY_ID_PLACEHOLDER, res, study.config.name)
        if not keys:
            text = "\n".join(l for l in text.splitlines() if "--dependency" not in l) + "\n"
        print(text, end="")
        return 0

    (out_dir / "logs").mkdir(parents=True, exist_ok=True)  # SLURM opens --output before the job starts
    sub_dir = _new_submission_dir(out_dir)
    write_json_file(sub_dir / STUDY_FILE, study_to_saved(study))
    write_json_file(sub_dir / KEYS_FILE, keys)
    info: dict[str, Any] = {"keys": keys, "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "submitted_epoch": time.time(),
                            "host": socket.gethostname(), "array_job_id": None, "aggregate_job_id": None,
                            "resources": res.__dict__, "argv": argv}
    try:
        array_id = None
        if keys:
            (sub_dir / ARRAY_SCRIPT).write_text(array_script(sub_dir, out_dir, len(keys), res, study.config.name))
            array_id = sbatch(sub_dir / ARRAY_SCRIPT)
            info["array_job_id"] = array_id
        agg_text = aggregate_script(sub_dir, out_dir, array_id or "", res, study.config.name)
        if array_id is None:
            agg_text = "\n".join(l for l in agg_text.splitlines() if "--dependency" not in l) + "\n"
        (sub_dir / AGGREGATE_SCRIPT).write_text(agg_text)
        info["aggregate_job_id"] = sbatch(sub_dir / AGGREGATE_SCRIPT)
    finally:
        if info["array_job_id"] or info["aggregate_job_id"]:
            write_json_file(sub_dir / SUBMISSION_FILE, info)
        else:
            shutil.rmtree(sub_dir, ignore_errors=True)
    if array_id:
        print(f"submitted {len(keys)} session(s) as array job {array_id} "
              f"(logs: {out_dir}/logs/slurm-{array_id}_<i>.out)")
    print(f"submitted aggregation job {info['aggregate_job_id']}"
          + (f" (after array job {array_id})" if array_id else ""))
    print(f"follow with: cstbatch status {out_dir}")
    return 0


# -- the jobs' entry points -------------------------------------------------------------------

def _clear_orphaned_lock(out_dir: Path, key: str) -> None:
    """A session lock left by a killed job on another node (whose process we cannot see) is
    cleared when SLURM runs no other element of this session; same-host stale locks are cleared
    by the lock itself."""
    from cstbatch.engine.state import RunLock

    lock = RunLock(session_lock_dir(out_dir, key))
    holder = lock.holder()
    if not holder or holder.get("host") == socket.gethostname():
        return
    me = f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    if key not in keys_in_flight(out_dir, exclude_job=me):
        print(f"cstbatch: clearing the lock of {key} left by pid {holder.get('pid')} on {holder.get('host')} "
              "(no other job of this session is queued or running)")
        lock.path.unlink(missing_ok=True)


def run_session(sub_dir: Path, index: int) -> int:
    """Array element: run one session's chain (every step task, up-to-date ones skipped)."""
    from cstbatch.engine.runner import run_doit
    from cstbatch.outputs.results import session_result
    from cstbatch.study.options import STEPS

    sub_dir = Path(sub_dir)
    keys = read_json(sub_dir / KEYS_FILE)
    if not 0 <= index < len(keys):
        raise CstBatchError(f"array index {index} outside 0..{len(keys) - 1}")
    key = keys[index]
    study = study_from_saved(read_json(sub_dir / STUDY_FILE), only=[key])
    if not study.subjects:
        raise CstBatchError(f"{key}: not in {sub_dir / STUDY_FILE}")
    out_dir = study.config.output_dir
    print(f"cstbatch: session {key} (submission {sub_dir.name}, element {index}) on {socket.gethostname()}",
          flush=True)
    _clear_orphaned_lock(out_dir, key)
    # the step tasks, not the group task: a group task's state would go to the study-wide shard
    # that every element shares
    code = run_doit(study, ["run", "--verbosity", "1", *[f"{key}:{step}" for step in STEPS]], lock_name=key)
    result = session_result(study.subjects[0], out_dir)
    print(f"cstbatch: {key}: {result.status}"
          + (f" at {result.failed_step}: {result.error}" if result.status == "failed" else ""), flush=True)
    return code or (0 if result.status == "success" else 1)


def run_aggregate(sub_dir: Path) -> int:
    """Aggregation job: doit's aggregate task alone (``-s``: its sessions are not rerun here)."""
    from cstbatch.engine.runner import run_doit
    from cstbatch.engine.tasks import AGGREGATE_TASK

    study = study_from_saved(read_json(Path(sub_dir) / STUDY_FILE))
    print(f"cstbatch: aggregation of {len(study.subjects)} sessions (submission {Path(sub_dir).name})", flush=True)
    return run_doit(study, ["run", "--verbosity", "1", "-s", AGGREGATE_TASK])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m cstbatch.cluster.slurm", description="entry points of cstbatch's SLURM jobs")
    sub = p.add_subparsers(dest="command", required=True)
    rs = sub.add_parser("run-session")
    rs.add_argument("submission", type=Path)
    rs.add_argument("index", type=int)
    ag = sub.add_parser("aggregate")
    ag.add_argument("submission", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "run-session":
            return run_session(args.submission, args.index)
        return run_aggregate(args.submission)
    except CstBatchError as exc:
        print(f"cstbatch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
