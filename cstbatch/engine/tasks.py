"""The doit task generator: one task per step per session, then one aggregation task.

Declarative only — it states files, dependencies and what determines each result; the work is
in ``step_runner``/``session_steps``. Chaining is by step records (``file_dep`` on the earlier
steps' records, ``targets`` = outputs + own record): a record is always written, so a failed
session never blocks doit's scheduling of the others or of the aggregation, while a step whose
record is not a success is never up to date and reruns next time.
"""
from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any, Iterator

from doit.tools import config_changed

from cstbatch.engine import doit_speed
from cstbatch.engine.chain import STEP_INPUTS, step_outputs
from cstbatch.engine.signatures import (
    FORMAT_VERSION,
    inputs_unchanged,
    step_config,
    step_configs,
    step_succeeded,
)
from cstbatch.engine.step_runner import run_step
from cstbatch.outputs.layout import STATE_DIR, SessionLayout, group_paths
from cstbatch.plugins import get_registry
from cstbatch.study import Study
from cstbatch.study.options import STEPS
from cstbatch.study.spec import spec_to_job

doit_speed.install()

#: Sessions between two ``gc.freeze()`` calls while tasks are generated. Each session leaves
#: ~300 long-lived objects (task dicts, doit Task objects, paths); without freezing, Python's
#: cyclic collector rescans all of them at every full collection, which made generation
#: superlinear (a 5000-session run: 17.5 s CPU to its first task, 9.9 s with the collector
#: off). Frozen objects are still freed by reference counting; ``run_doit`` unfreezes them
#: after the run.
FREEZE_EVERY = 500

SAMPLE_TASK = "sample_study"
AGGREGATE_TASK = "aggregate"


def session_tasks(spec, study: Study, registry, stop_on_first_crash: bool = False,
                  config_cache: dict | None = None) -> Iterator[dict]:
    out_dir = study.config.output_dir
    key = spec.key
    layout = SessionLayout.of(out_dir, spec)
    job = spec_to_job(spec, out_dir, study.plugins_dir)
    records = {step: layout.record(step) for step in STEPS}
    configs = step_configs(spec.options, registry, {} if config_cache is None else config_cache)
    for step in STEPS:
        record = records[step]
        uptodate = [step_config(*configs[step]), step_succeeded(record)]
        task = {
            "basename": key,
            "name": step,
            "doc": f"{step} for {key}",
            "actions": [(run_step, [step, job, stop_on_first_crash])],
            "file_dep": [records[s] for s in STEP_INPUTS[step]],
            "targets": step_outputs(step, layout, spec.options) + [record],
            "uptodate": uptodate,
            "clean": True,
        }
        if step == "ingest":
            uptodate.append(inputs_unchanged(spec.inputs, record))
            if study.kind == "sample":
                task["task_dep"] = [_sample_dep(key)]
        yield task
    yield {"basename": key, "name": None, "doc": f"every step of {key} ({spec.origin})"}


def generate_sample(out_dir: str, key: str | None) -> None:
    """doit action: write one session of the sample study, or (key None) its study files."""
    from cstbatch import sample

    if key is None:
        sample.write_study_files(Path(out_dir))
    else:
        sample.generate_sample_session(Path(out_dir), key)


def sample_tasks(study: Study) -> Iterator[dict]:
    """One task per sample session plus one for the study files, so that processing of the
    first sessions starts while the others are still being simulated."""
    from cstbatch import sample

    def uptodate():
        return [config_changed({"sample_version": sample.SAMPLE_VERSION})]

    yield {"basename": SAMPLE_TASK, "name": None,
           "doc": "generate the synthetic sample study (when missing or outdated)"}
    yield {"basename": SAMPLE_TASK, "name": "study", "doc": "sample study: BIDS top-level files",
           "actions": [(generate_sample, [str(study.sample_dir), None])],
           "targets": sample.study_outputs(study.sample_dir), "uptodate": uptodate(), "clean": True}
    for spec in sample.SESSIONS:
        yield {"basename": SAMPLE_TASK, "name": spec.key, "doc": f"sample study: simulate {spec.key}",
               "actions": [(generate_sample, [str(study.sample_dir), spec.key])],
               "targets": sample.session_outputs(study.sample_dir, spec), "uptodate": uptodate(), "clean": True}


def _sample_dep(key: str) -> str:
    """The sample task that writes a session's input (the whole sample study for other keys)."""
    from cstbatch import sample

    return f"{SAMPLE_TASK}:{key}" if key in {s.key for s in sample.SESSIONS} else SAMPLE_TASK


def aggregate_task(study: Study, present: set[str] | None = None, upstream_elsewhere: str | None = None) -> dict:
    """The aggregation of ``study``. A plan of some sessions only (``cstbatch.engine.plan``)
    passes ``present``, the keys whose tasks exist (the others' report tasks are left out of
    ``task_dep``), and ``upstream_elsewhere``, the first task of the others that will run."""
    import cstbatch.outputs
    from cstbatch.engine.signatures import code_digest
    from cstbatch.outputs.aggregate import aggregate_action, study_to_job
    from cstbatch.outputs.records import sha256
    from cstbatch.study.options import merge_options
    from cstbatch.study.sessions import time_sources

    out_dir = study.config.output_dir
    layouts = [SessionLayout.of(out_dir, s) for s in study.subjects]
    # what orders sessions (longitudinal.tsv): the files stating acquisition times (by content,
    # named relative to the study root, so that moving or copying the study reruns nothing),
    # manifest dates, and the reference repeatability coefficient
    # (not for the sample study: its files are made by tasks of this run, and its sessions are
    # ordered by label)
    sources = {} if study.kind == "sample" else {s.input_label(p): p for s in study.subjects
                                                 for p in time_sources(s)}
    longitudinal = {"time_sources": {label: sha256(path) for label, path in sorted(sources.items())},
                    "session_dates": {s.key: s.session_date for s in study.subjects if s.session_date},
                    "reference_rc_fa": merge_options(study.config.options)["reference_rc_fa"]}
    reports = [f"{s.key}:report" for s in study.subjects if present is None or s.key in present]
    job = study_to_job(study)
    return {
        "basename": AGGREGATE_TASK,
        "doc": "group outputs: dataset_description, participants, batch summary/metrics, group report",
        "actions": [(aggregate_action, [job])],
        "task_dep": reports + ([SAMPLE_TASK] if study.kind == "sample" else []),
        "file_dep": [lay.record(step) for lay in layouts for step in STEPS],
        "targets": [p for name, p in group_paths(out_dir).items()],
        "uptodate": [config_changed({"format": FORMAT_VERSION, "sessions": [s.key for s in study.subjects],
                                     "skipped_inputs": job["skipped_inputs"],
                                     "longitudinal": longitudinal,
                                     "code": code_digest(cstbatch.outputs)})],
        "clean": True,
        "meta": {"upstream_elsewhere": upstream_elsewhere} if upstream_elsewhere else None,
    }


def largest_first(subjects: list) -> list:
    """Sessions ordered by estimated size, largest first (stable: ties keep study order).

    Why: doit starts tasks in definition order as workers free up. With more sessions than
    workers, the run ends with one session's chain while the other workers idle; starting the
    largest sessions first leaves a small one for that tail (longest-processing-time-first
    scheduling). On the 2 mm sample study, 2 workers, the DICOM session (the largest) went
    last and its tracking ran alone for ~60 s. The size is the ``--mem-gb`` estimate
    (:func:`cstbatch.engine.memory.session_memory_mb`, image header only); reports keep study order.
    """
    if len(subjects) < 2:
        return list(subjects)
    from cstbatch.engine.memory import session_memory_mb

    size = {id(s): session_memory_mb(s) for s in subjects}
    return sorted(subjects, key=lambda s: -size[id(s)])


def generate_tasks(study: Study, stop_on_first_crash: bool = False, aggregate: dict | None = None) -> Iterator[dict]:
    """Every task of the study, in a deterministic order (sessions largest first); ``aggregate``:
    the aggregation task to use instead of the study's own."""
    registry = get_registry(study.plugins_dir)
    if study.kind == "sample":
        yield from sample_tasks(study)
    cache: dict = {}
    for i, spec in enumerate(largest_first(study.subjects)):
        yield from session_tasks(spec, study, registry, stop_on_first_crash, cache)
        if i % FREEZE_EVERY == FREEZE_EVERY - 1:
            gc.freeze()
    yield aggregate or aggregate_task(study)
    gc.freeze()


def doit_config(study: Study, jobs: int = 1, lock_name: str | None = None) -> dict[str, Any]:
    """doit settings; ``lock_name`` replaces the output folder's run lock by a named one (one
    cluster job per session: ``.cstbatch/locks/<lock_name>/lock``)."""
    from cstbatch.engine.fingerprint import StudyFingerprint
    from cstbatch.engine.progress import ProgressReporter

    out_dir = study.config.output_dir
    layouts = {s.key: SessionLayout.of(out_dir, s) for s in study.subjects}
    # the no-op fingerprint is saved by runs over the whole output folder (not by a cluster
    # job's one session), and not for the sample study (its inputs are tasks too)
    fingerprint = StudyFingerprint(study) if lock_name is None and study.kind != "sample" else None
    config = {
        "dep_file": str(out_dir / STATE_DIR / "state"),
        "backend": "cstbatch",
        "verbosity": 1,
        "reporter": ProgressReporter(out_dir, layouts, sys.stdout, lock_name=lock_name, fingerprint=fingerprint),
    }
    if jobs > 1:
        config.update(num_process=jobs, par_type="process")
    return config


def doit_namespace(study: Study, jobs: int = 1, stop_on_first_crash: bool = False,
                   lock_name: str | None = None, aggregate: dict | None = None) -> dict[str, Any]:
    """A module-like namespace for doit's ``ModuleTaskLoader`` (also what ``dodo.py`` exports)."""
    def task_cstbatch():
        yield from generate_tasks(study, stop_on_first_crash, aggregate)
    return {"task_cstbatch": task_cstbatch, "DOIT_CONFIG": doit_config(study, jobs, lock_name)}
