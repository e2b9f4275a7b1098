"""Old module paths (before the layers of 0.2) kept importable for one release.

A plugin that did ``from cstbatch.atlas import custom_atlas`` keeps working: the old name is the
same module object as the new one (so patches and ``isinstance`` hold), and importing it warns
once with the new path. Remove in the release after next.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module -> new module
MOVED: dict[str, str] = {f"cstbatch.{old}": f"cstbatch.{new}" for old, new in {
    "spec": "study.spec", "options": "study.options", "discover": "study.discover",
    "manifest": "study.manifest",
    "tasks": "engine.tasks", "chain": "engine.chain", "step_runner": "engine.step_runner",
    "session_steps": "engine.session_steps", "state": "engine.state", "fingerprint": "engine.fingerprint",
    "progress": "engine.progress", "runner": "engine.runner", "memory": "engine.memory",
    "threads": "engine.threads",
    "atlas": "steps.atlas", "gradients": "steps.gradients",
    "layout": "outputs.layout", "records": "outputs.records", "aggregate": "outputs.aggregate",
    "group_report": "outputs.group_report", "figures": "outputs.figures", "tables": "outputs.tables",
    "provenance": "outputs.provenance", "results": "outputs.results",
    "slurm": "cluster.slurm", "status": "cluster.status",
    "sample_phantom": "sample.phantom", "sample_dicom": "sample.dicom", "sample_accuracy": "sample.accuracy",
}.items()}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} has moved to {new}; the old path will be removed in a later release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # the new module is already executed


def install() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
