"""The plan of a large study without building doit tasks for sessions that never ran here.

``--dry-run`` and ``cstbatch submit`` ask doit which tasks would run. doit answers only after
building every task object of the study (9 per session) and checking each one: for 20 000
sessions that took 41 s and 1.4 GB. A session with no doit state (no shard
``.cstbatch/state/<key>.json``) and no step records has never run in this output folder; doit's
answer for it is known without asking: every step runs, the first one "not run before", each
other one "after" the alphabetically first of the steps it reads (doit's ``plan`` names the
first of a task's upstream tasks that will run). Only the other sessions go through doit,
with the whole study's aggregation task (its up-to-date check is the study's), told which of
the never-run sessions' tasks comes first among its upstream tasks.

The output is line for line what doit's ``plan`` prints for the whole study (a test compares
both); the sample study, whose sessions depend on generation tasks, always goes through doit.
"""
from __future__ import annotations

import os
import re

from cstbatch.engine.chain import STEP_INPUTS
from cstbatch.engine.runner import doit_plan_text, plan_line, plan_total
from cstbatch.engine.tasks import AGGREGATE_TASK, aggregate_task, largest_first
from cstbatch.outputs.layout import STATE_DIR, SessionLayout
from cstbatch.study import Study
from cstbatch.study.options import STEPS

_LINE = re.compile(r"^run  (\S+)")
_TOTAL = re.compile(r"^(\d+) of (\d+) tasks would run")


def never_run(study: Study) -> set[str]:
    """Keys of sessions with neither doit state nor a step-record folder in the output folder."""
    out_dir = study.config.output_dir
    try:
        shards = {name[:-5] for name in os.listdir(out_dir / STATE_DIR / "state") if name.endswith(".json")}
    except OSError:
        shards = set()
    fresh = set()
    for spec in study.subjects:
        if spec.key not in shards and not os.path.isdir(SessionLayout.of(out_dir, spec).record(STEPS[0]).parent):
            fresh.add(spec.key)
    return fresh


def fresh_session_lines(key: str) -> list[str]:
    """doit's plan lines for a session that never ran (every step runs)."""
    lines = []
    for step in STEPS:
        inputs = STEP_INPUTS[step]
        why = f"after {min(f'{key}:{s}' for s in inputs)}" if inputs else "not run before"
        lines.append(plan_line(f"{key}:{step}", why))
    return lines


def plan_text(study: Study) -> str:
    """What ``doit plan`` prints for the study; doit plans only the sessions that ran before."""
    fresh = never_run(study) if study.kind != "sample" else set()
    if not fresh:
        return doit_plan_text(study)
    ran = [s for s in study.subjects if s.key not in fresh]
    first_fresh = min(f"{key}:{step}" for key in fresh for step in STEPS)
    sub = Study(ran, study.config, study.skipped, study.kind, study.plugins_dir, study.sample_dir)
    aggregate = aggregate_task(study, present={s.key for s in ran}, upstream_elsewhere=first_fresh) if ran else None
    doit_lines: dict[str, str] = {}
    doit_will_run = 0
    # nothing ran: every input of the aggregation is missing, which doit reports as "after" its
    # first upstream task (a check of 9 stats per session that the plan does not need)
    text = doit_plan_text(sub, aggregate=aggregate) if ran else \
        plan_line(AGGREGATE_TASK, f"after {first_fresh}") + "\n" + plan_total(1, 1)
    for line in text.splitlines():
        if (m := _LINE.match(line)):
            doit_lines[m.group(1)] = line
        elif (m := _TOTAL.match(line)):
            doit_will_run = int(m.group(1))
    lines = []
    for spec in largest_first(study.subjects):
        if spec.key in fresh:
            lines += fresh_session_lines(spec.key)
        else:
            lines += [doit_lines[f"{spec.key}:{step}"] for step in STEPS if f"{spec.key}:{step}" in doit_lines]
    lines.append(doit_lines[AGGREGATE_TASK])
    lines.append(plan_total(doit_will_run + len(STEPS) * len(fresh), len(STEPS) * len(study.subjects) + 1))
    return "\n".join(lines) + "\n"
