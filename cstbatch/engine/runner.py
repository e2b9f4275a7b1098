"""Driving doit from Python: the ``cstbatch`` command and ``run_batch`` use the same tasks as
``doit run`` with ``dodo.py``, through doit's own API (``DoitMain`` + ``ModuleTaskLoader``).

Also adds one doit command, ``plan``: which tasks would run and why, without running any.
"""
from __future__ import annotations

import gc
import io
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from doit.cmd_base import DoitCmdBase, ModuleTaskLoader
from doit.doit_cmd import DoitMain

from cstbatch.engine.tasks import doit_namespace
from cstbatch.outputs.results import collect_results
from cstbatch.study import Study
from cstbatch.study.spec import BatchConfig, SubjectResult, SubjectSpec


def _uptodate_name(entry) -> str:
    utd = entry[0] if isinstance(entry, tuple) else entry
    return getattr(utd, "__name__", None) or type(utd).__name__


def explain(reasons: dict[str, Any]) -> str:
    """doit's status reasons as one short phrase."""
    if reasons.get("has_no_dependencies"):
        return "always runs (no dependencies)"
    parts = []
    if reasons.get("missing_target"):
        parts.append(f"missing output {Path(reasons['missing_target'][0]).name}")
    if reasons.get("uptodate_false"):
        names = {_uptodate_name(u) for u in reasons["uptodate_false"]}
        labels = {"config_changed": "options or implementation changed",
                  "step_config": "options or implementation changed",
                  "step_succeeded": "last attempt did not succeed",
                  "inputs_unchanged": "input files changed"}
        parts += [labels.get(n, n) for n in sorted(names)]
    for key, label in (("changed_file_dep", "changed"), ("missing_file_dep", "missing"),
                       ("added_file_dep", "new")):
        if reasons.get(key):
            parts.append(f"{label} input {Path(sorted(reasons[key])[0]).name}")
    return "; ".join(parts) or "never run"


class Plan(DoitCmdBase):
    """doit command ``plan``: list the tasks that would run, with the reason."""

    name = "plan"
    doc_purpose = "show which tasks would run and why (runs nothing)"
    doc_usage = "[TASK ...]"
    doc_description = None
    cmd_options = ()

    def _execute(self, pos_args=None):
        tasks = {t.name: t for t in self.task_list}
        will_run: set[str] = set()
        target_owner = {str(t): task.name for task in self.task_list for t in task.targets}
        lines = []
        for task in self.task_list:
            if not task.actions:
                continue
            status = self.dep_manager.get_status(task, tasks, get_log=True)
            upstream = sorted({target_owner[str(f)] for f in task.file_dep if target_owner.get(str(f)) in will_run}
                              | {d for d in task.task_dep if d in will_run}
                              | {(task.meta or {}).get("upstream_elsewhere")} - {None})
            if status.status == "run" or upstream:
                will_run.add(task.name)
                if status.status != "run":
                    why = f"after {upstream[0]}"
                elif not self.dep_manager.get_values(task.name):
                    why = "not run before"
                else:
                    why = explain(status.reasons)
                lines.append(plan_line(task.name, why))
            elif status.status == "error":
                lines.append(plan_line(task.name, status.get_error_message()))
                will_run.add(task.name)
        lines.append(plan_total(len(will_run), sum(1 for t in self.task_list if t.actions)))
        self.outstream.write("\n".join(lines) + "\n")
        return 0


def plan_line(task_name: str, why: str) -> str:
    return f"run  {task_name:<32} {why}"


def plan_total(will_run: int, tasks: int) -> str:
    return f"{will_run} of {tasks} tasks would run; the rest are up to date."


def run_doit(study: Study, argv: list[str], jobs: int = 1, stop_on_first_crash: bool = False,
             lock_name: str | None = None, aggregate: dict | None = None) -> int:
    """Run a doit command line (``["run"]``, ``["list"]``, ``["plan"]``…) over the study's tasks.

    ``lock_name``: take ``.cstbatch/locks/<lock_name>/lock`` instead of the output folder's lock.
    ``aggregate``: the aggregation task to use instead of the study's own (a plan of some sessions).
    """
    namespace = doit_namespace(study, jobs, stop_on_first_crash, lock_name, aggregate)
    namespace["DOIT_CONFIG"]["outfile"] = sys.stdout  # doit binds sys.stdout at import time
    try:
        return DoitMain(ModuleTaskLoader(namespace), config_filenames=()).run(argv)
    finally:
        gc.unfreeze()  # the tasks frozen while generated (engine.tasks.FREEZE_EVERY) may go now


def run_batch(subjects: list[SubjectSpec], config: BatchConfig, verbose: bool = False, *,
              plugins_dir: Path | None = None, stop_on_first_crash: bool = False,
              study_kind: str = "manifest") -> list[SubjectResult]:
    """Run the study through the doit tasks; one ``SubjectResult`` per session.

    Reruns are incremental: only sessions/steps whose inputs, options or implementation
    changed, or which did not succeed last time, run again.
    """
    from cstbatch.engine.fingerprint import nothing_to_do

    study = Study(list(subjects), config, kind=study_kind, plugins_dir=plugins_dir)
    argv = ["run", "--verbosity", "2" if verbose else "0"]
    sink = io.StringIO()
    with redirect_stdout(sys.stdout if verbose else sink):
        if stop_on_first_crash or not nothing_to_do(study):
            run_doit(study, argv, config.jobs, stop_on_first_crash)
    return collect_results(study.subjects, config.output_dir)


def doit_plan_text(study: Study, aggregate: dict | None = None) -> str:
    """doit's ``plan`` of every task (``cstbatch.engine.plan.plan_text`` spares it the sessions
    that never ran)."""
    from cstbatch.errors import CstBatchError

    sink = io.StringIO()
    with redirect_stdout(sink):
        code = run_doit(study, ["plan"], aggregate=aggregate)
    if code != 0:
        raise CstBatchError(f"doit could not plan the study (exit status {code}; see the messages above)")
    return sink.getvalue()


