"""A linear-time replacement for one quadratic step of doit's run setup.

Before running anything, doit's ``TaskControl`` gives every task an implicit ``task_dep`` on the
task that makes each of its ``file_dep`` files (``TaskControl.add_implicit_task_dep``). It
checks ``owner not in task.task_dep`` on a list, once per file: for the aggregation, whose
``file_dep`` is every step record of every session (9 per session), that is quadratic in the
study size. Measured before this module (cProfile, 5000 sessions): 650 of the 800 s spent before
the first task started; at 20 000 sessions it would be hours.

``install`` replaces that static method with one that keeps a set beside the list: the same
dependencies, appended in the same order, in linear time. It is installed when
``cstbatch.engine.tasks`` is imported, so both front doors (``cstbatch`` and ``doit`` with
``dodo.py``) get it; doit 0.36/0.37 call the method only through ``TaskControl``.
"""
from __future__ import annotations

from doit.control import TaskControl


def add_implicit_task_dep(targets, task, deps_list):
    """doit's ``TaskControl.add_implicit_task_dep``, with a set for the membership test."""
    present = set(task.task_dep)
    for dep in deps_list:
        owner = targets.get(dep)
        if owner is not None and owner not in present:
            task.task_dep.append(owner)
            present.add(owner)


def install() -> None:
    if TaskControl.__dict__.get("add_implicit_task_dep") is not _PATCHED:
        TaskControl.add_implicit_task_dep = _PATCHED


_PATCHED = staticmethod(add_implicit_task_dep)
