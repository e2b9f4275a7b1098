"""Running a study on a SLURM cluster: job arrays of the sessions, then the aggregation.

    cstbatch submit --slurm [BIDS_DIR] OUT_DIR [--manifest M] [--participant-label …] [--option …]
                    [--partition P] [--time HH:MM:SS] [--mem-per-job 4G] [--cpus 1] [--throttle K]
                    [--sessions-per-job K] [--array-size N] [--dry-run]

``submit`` loads the study exactly as the BIDS-App front door does, asks doit's ``plan`` (and the
step records) which sessions still need work, leaves out sessions whose jobs are still queued or
running, and submits

* job arrays (``#SBATCH --array=0-(m-1)[%K]``), as many as the cluster's ``MaxArraySize``
  requires (``cluster.arrays``), whose elements each run the chain of one session (or of
  ``--sessions-per-job`` sessions, one after the other), under a lock of their own
  (``.cstbatch/locks/<key>/lock``) instead of the output folder's run lock, so elements run side
  by side on any node; with ``--throttle`` each array waits for the previous one;
* an aggregation job, ``--dependency=afterany:<every array>``, that runs doit's ``aggregate``
  task alone (``doit run -s aggregate``): it refreshes the group outputs from the saved state once
  every element has ended, whether it succeeded or not.

Everything a job needs is saved first under ``<out>/.cstbatch/slurm/<NNNN>/`` (one folder per
submission): the effective study as JSON (sessions with absolute paths and effective options,
plugins folder, plugin allow-list), the list of keys, the scripts, and the job ids. Jobs
therefore never depend on the submitting shell's working folder or environment (they run with
``--chdir=<out>`` and the submitting Python's absolute path). Their logs go to
``<out>/logs/slurm/<NNNN>/array-<j>/<job>_<task>.out`` (one folder per array, so at most
``MaxArraySize`` files each). Resubmitting after failures submits only the sessions that are
still unfinished; doit's up-to-date checks make each element redo only the steps that need it.

The jobs' entry points are ``python -m cstbatch.cluster.slurm run-session SUBMISSION_DIR ELEMENT
[--sessions-per-job K]`` and ``python -m cstbatch.cluster.slurm aggregate SUBMISSION_DIR`` (not
meant to be typed by hand).
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

from cstbatch.cluster.arrays import (
    ArrayPlan,
    aggregate_log_dir,
    array_of_element,
    element_keys,
    log_dir,
    plan_arrays,
    slurm_limits,
)
from cstbatch.engine.threads import THREAD_VARIABLES
from cstbatch.errors import CstBatchError
from cstbatch.outputs.layout import STATE_DIR

SLURM_DIR = "slurm"            # <out>/.cstbatch/slurm/<NNNN>/
LOCKS_DIR = "locks"            # <out>/.cstbatch/locks/<key>/lock (per-session locks of array elements)
STUDY_FILE = "study.json"
KEYS_FILE = "keys.json"
SUBMISSION_FILE = "submission.json"
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
        "skipped": [list(x) for x in study.skipped],  # what discovery left out, for the summary
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
    skipped = [tuple(x) for x in data.get("skipped", [])]
    return Study(specs, config, skipped, data.get("kind", "manifest"), Path(data["plugins_dir"]))


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
    from cstbatch.engine.plan import plan_text

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
    array_job_id: str | None          # the first array's job id (kept for older readers)
    aggregate_job_id: str | None
    keys: list[str]
    submitted: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    arrays: list[ArrayPlan] = field(default_factory=list)
    per_job: int = 1

    def element_of(self, key: str) -> tuple[ArrayPlan, int] | None:
        """(array, task id) running ``key`` in this submission; None when it has no such job."""
        if "_position" not in self.__dict__:  # built once: status asks for every session
            self.__dict__["_position"] = {k: i for i, k in enumerate(self.keys)}
        index = self.__dict__["_position"].get(key)
        return None if index is None else array_of_element(self.arrays, index // self.per_job)

    def keys_of(self, array: ArrayPlan, task: int) -> list[str]:
        return element_keys(self.keys, self.per_job, array.first + task) if 0 <= task < array.count else []

    def log_of(self, out_dir: Path, array: ArrayPlan, task: int) -> Path:
        if self.extra.get("arrays") is None:  # a submission from before arrays were split
            return Path(out_dir) / "logs" / f"slurm-{array.job_id}_{task}.out"
        return log_dir(out_dir, self.folder.name, array) / f"{array.job_id}_{task}.out"


def _submission_from_info(folder: Path, info: dict[str, Any]) -> Submission:
    keys = list(info.get("keys") or [])
    if info.get("arrays") is not None:
        arrays = [ArrayPlan.from_json(a) for a in info["arrays"]]
    elif info.get("array_job_id"):
        arrays = [ArrayPlan(1, 0, len(keys), info["array_job_id"])]
    else:
        arrays = []
    return Submission(folder, info.get("array_job_id"), info.get("aggregate_job_id"), keys, info.get("submitted"),
                      info, arrays, int(info.get("sessions_per_job") or 1))


def submissions(out_dir: Path) -> list[Submission]:
    """Earlier submissions of this output folder, oldest first."""
    found = []
    root = slurm_root(out_dir)
    for folder in sorted(root.glob("[0-9][0-9][0-9][0-9]")) if root.is_dir() else []:
        try:
            info = json.loads((folder / SUBMISSION_FILE).read_text())
        except (OSError, ValueError):
            continue
        found.append(_submission_from_info(folder, info))
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
    subs = [s for s in submissions(out_dir) if s.arrays]
    if not subs:
        return set()
    queue = squeue_jobs() or {}
    busy: set[str] = set()
    for sub in subs:
        for array in sub.arrays:
            for task_id, _state in queue.get(array.job_id or "", []):
                if not task_id.isdigit():
                    continue
                if exclude_job and f"{array.job_id}_{task_id}" == exclude_job:
                    continue
                busy.update(sub.keys_of(array, int(task_id)))
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


def array_script(sub_dir: Path, out_dir: Path, array: ArrayPlan, res: Resources, study_name: str,
                 per_job: int = 1, after: str | None = None) -> str:
    """The script of one array; its element ``i`` runs element ``array.first + i`` of the submission.

    ``after``: the previous array's job id. A throttled submission chains its arrays so that
    ``--throttle`` caps the whole submission, not each array: a 20-array study with ``%20``
    would otherwise run 400 elements at once.
    """
    spec = f"0-{array.count - 1}" + (f"%{res.throttle}" if res.throttle else "")
    logs = log_dir(out_dir, sub_dir.name, array)
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={_job_name(study_name)}",
             f"#SBATCH --array={spec}",
             f"#SBATCH --output={logs}/%A_%a.out"]
    if after:
        lines.append(f"#SBATCH --dependency=afterany:{after}")
    _header(lines, res, out_dir)
    what = "one session" if per_job == 1 else f"{per_job} sessions, one after the other,"
    lines += [f"# cstbatch: {what} per element; element i runs element {array.first} + i of the submission",
              f"# (keys [e*{per_job}, (e+1)*{per_job}) of {sub_dir / KEYS_FILE})",
              *_environment(res),
              f"exec {shlex.quote(sys.executable)} -m cstbatch.cluster.slurm run-session {shlex.quote(str(sub_dir))} "
              f'"$(({array.first} + SLURM_ARRAY_TASK_ID))"' + (f" --sessions-per-job {per_job}" if per_job > 1 else ""),
              ""]
    return "\n".join(lines)


def aggregate_script(sub_dir: Path, out_dir: Path, array_job_ids: list[str], res: Resources, study_name: str) -> str:
    """The aggregation job, after every array has ended (``afterany``: failed elements too)."""
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={_job_name(study_name)}-aggregate"]
    if array_job_ids:
        lines.append(f"#SBATCH --dependency=afterany:{':'.join(array_job_ids)}")
    lines.append(f"#SBATCH --output={aggregate_log_dir(out_dir, sub_dir.name)}/aggregate-%j.out")
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
    p.add_argument("--throttle", type=int, help="at most K array elements running at once (--array=…%%K; "
                   "with several arrays, each waits for the previous one, so K holds for the whole submission)")
    p.add_argument("--sessions-per-job", type=int, default=1, metavar="K",
                   help="sessions run one after the other by each array element (default 1): fewer, longer "
                   "jobs for studies of many small sessions")
    p.add_argument("--array-size", type=int, help="elements per array (default and maximum: the cluster's "
                   "MaxArraySize - 1, read from `scontrol show config`, 1000 when it cannot be read)")
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

    arrays = plan_arrays(len(keys), args.sessions_per_job, slurm_limits(), args.array_size) if keys else []
    if len(arrays) > 1:
        print(f"{len(keys)} session(s) in {len(arrays)} arrays of at most {max(a.count for a in arrays)} elements"
              f" ({args.sessions_per_job} session(s) per element)")
    if args.dry_run:
        _print_dry_run(_next_submission_dir_name(out_dir), out_dir, arrays, res, study.config.name,
                       args.sessions_per_job)
        return 0

    sub_dir = _new_submission_dir(out_dir)
    write_json_file(sub_dir / STUDY_FILE, study_to_saved(study))
    write_json_file(sub_dir / KEYS_FILE, keys)
    info: dict[str, Any] = {"keys": keys, "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "submitted_epoch": time.time(),
                            "host": socket.gethostname(), "array_job_id": None, "aggregate_job_id": None,
                            "sessions_per_job": args.sessions_per_job, "arrays": [],
                            "resources": res.__dict__, "argv": argv}
    try:
        previous = None
        for array in arrays:
            log_dir(out_dir, sub_dir.name, array).mkdir(parents=True, exist_ok=True)  # SLURM opens --output first
            script = sub_dir / f"{array.name}.sh"
            script.write_text(array_script(sub_dir, out_dir, array, res, study.config.name, args.sessions_per_job,
                                           after=previous if res.throttle else None))
            array.job_id = previous = sbatch(script)
            info["arrays"].append(array.to_json())
            info["array_job_id"] = info["array_job_id"] or array.job_id
        aggregate_log_dir(out_dir, sub_dir.name).mkdir(parents=True, exist_ok=True)
        (sub_dir / AGGREGATE_SCRIPT).write_text(aggregate_script(sub_dir, out_dir, [a.job_id for a in arrays], res,
                                                                 study.config.name))
        info["aggregate_job_id"] = sbatch(sub_dir / AGGREGATE_SCRIPT)
    finally:
        if info["arrays"] or info["aggregate_job_id"]:
            write_json_file(sub_dir / SUBMISSION_FILE, info)
        else:
            shutil.rmtree(sub_dir, ignore_errors=True)
    for array in arrays:
        print(f"submitted elements {array.first}-{array.first + array.count - 1} as array job {array.job_id} "
              f"(logs: {log_dir(out_dir, sub_dir.name, array)}/{array.job_id}_<i>.out)")
    print(f"submitted aggregation job {info['aggregate_job_id']}"
          + (f" (after array job{'s' if len(arrays) > 1 else ''} {', '.join(a.job_id for a in arrays)})"
             if arrays else ""))
    print(f"follow with: cstbatch status {out_dir}")
    return 0


def _print_dry_run(sub_dir: Path, out_dir: Path, arrays: list[ArrayPlan], res: Resources, name: str,
                   per_job: int) -> None:
    """The first array's script in full, one line per further array, then the aggregation's."""
    print(f"# would write {sub_dir}/ ({STUDY_FILE}, {KEYS_FILE}) and submit with sbatch --parsable:")
    for i, array in enumerate(arrays):
        after = "<ARRAY_JOB_ID>" if res.throttle and i else None
        text = array_script(sub_dir, out_dir, array, res, name, per_job, after=after)
        if i == 0:
            print(f"# --- {array.name}.sh")
            print(text, end="")
        else:
            spec = next(line for line in text.splitlines() if line.startswith("#SBATCH --array="))
            print(f"# --- {array.name}.sh: the same with {spec.split()[1]}, elements {array.first}-"
                  f"{array.first + array.count - 1}" + (", after the previous array" if after else ""))
    print(f"# --- {AGGREGATE_SCRIPT}")
    print(aggregate_script(sub_dir, out_dir, [ARRAY_ID_PLACEHOLDER] * len(arrays), res, name), end="")


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


def run_session(sub_dir: Path, index: int, per_job: int = 1) -> int:
    """Array element ``index``: run its sessions' chains one after the other (every step task,
    up-to-date ones skipped); a failed session does not stop the next one."""
    from cstbatch.engine.runner import run_doit
    from cstbatch.outputs.results import session_result
    from cstbatch.study.options import STEPS

    sub_dir = Path(sub_dir)
    keys = read_json(sub_dir / KEYS_FILE)
    mine = element_keys(keys, per_job, index) if index >= 0 else []
    if not mine:
        raise CstBatchError(f"array element {index} outside 0..{(len(keys) - 1) // per_job}")
    study = study_from_saved(read_json(sub_dir / STUDY_FILE), only=mine)
    specs = {s.key: s for s in study.subjects}
    missing = [k for k in mine if k not in specs]
    if missing:
        raise CstBatchError(f"{', '.join(missing)}: not in {sub_dir / STUDY_FILE}")
    out_dir = study.config.output_dir
    worst = 0
    for key in mine:
        print(f"cstbatch: session {key} (submission {sub_dir.name}, element {index}) on {socket.gethostname()}",
              flush=True)
        _clear_orphaned_lock(out_dir, key)
        one = study_from_saved_subset(study, [specs[key]])
        # the step tasks, not the group task: a group task's state would go to the study-wide shard
        # that every element shares
        code = run_doit(one, ["run", "--verbosity", "1", *[f"{key}:{step}" for step in STEPS]], lock_name=key)
        result = session_result(specs[key], out_dir)
        print(f"cstbatch: {key}: {result.status}"
              + (f" at {result.failed_step}: {result.error}" if result.status == "failed" else ""), flush=True)
        worst = worst or code or (0 if result.status == "success" else 1)
    return worst


def study_from_saved_subset(study, specs: list):
    """The same study restricted to ``specs`` (one doit run per session, each under its own lock)."""
    from cstbatch.study import Study

    return Study(list(specs), study.config, [], study.kind, study.plugins_dir)


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
    rs.add_argument("index", type=int, help="the element of the submission (not the array's task id)")
    rs.add_argument("--sessions-per-job", type=int, default=1)
    ag = sub.add_parser("aggregate")
    ag.add_argument("submission", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "run-session":
            return run_session(args.submission, args.index, args.sessions_per_job)
        return run_aggregate(args.submission)
    except CstBatchError as exc:
        print(f"cstbatch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
