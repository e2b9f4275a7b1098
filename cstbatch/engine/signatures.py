"""What decides whether a step's task is up to date: the digest of its implementation config
(options that determine the result, implementation name and version), the raw inputs' size and
mtime, and the step's last record.

Apart from the task generator so that the study fingerprint (``fingerprint``) computes exactly the
same values without importing the tasks.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import stat
from pathlib import Path
from typing import Any

from doit.tools import config_changed

from cstbatch.engine.chain import BUILTIN_STEP_VERSION, STEP_CODE_VERSION, STEP_SELECTOR
from cstbatch.outputs.records import succeeded
from cstbatch.study.options import STEPS, step_options

#: Bump when the meaning of task configuration changes (reruns everything).
FORMAT_VERSION = "1"


#: doit inspects the signature of every uptodate callable of every task on every run; for an
#: instance with ``__call__`` that costs ~20 µs, for a ``__signature__`` given here ~3 µs.
_UPTODATE_SIGNATURE = inspect.Signature([inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                         for name in ("task", "values")])


class step_succeeded:
    """uptodate: False unless the step's last record says success (failed steps always rerun)."""

    __signature__ = _UPTODATE_SIGNATURE

    def __init__(self, record: Path):
        self.record = record

    def __call__(self, task, values):
        return succeeded(self.record)


class inputs_unchanged:
    """uptodate for the raw inputs: size + mtime of each file (or each file of a DICOM folder).

    Raw inputs are not ``file_dep`` because a missing input must become a clean per-session
    failure at ingest, not a doit error that stops scheduling.
    """

    __signature__ = _UPTODATE_SIGNATURE

    def __init__(self, paths: list[Path]):
        self.paths = [Path(p) for p in paths]
        self.digest = None

    def _signature(self) -> str:
        return input_signature(self.paths)

    def configure_task(self, task):
        task.value_savers.append(lambda: {"_inputs": self.digest})

    def __call__(self, task, values):
        self.digest = self._signature()
        return values.get("_inputs") == self.digest


def input_signature(paths: list[Path]) -> str:
    """``path:size:mtime_ns`` of each raw input file (each file under a DICOM folder), or
    ``path:missing`` — what ``inputs_unchanged`` saves and compares (one ``stat`` per file)."""
    parts = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            for f in sorted(Path(path).rglob("*")):
                try:
                    fst = f.stat()
                    parts.append(f"{f}:{fst.st_size}:{fst.st_mtime_ns}")
                except OSError:
                    parts.append(f"{f}:missing")
        elif st is not None:
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
        else:
            parts.append(f"{path}:missing")
    return "|".join(parts)


class step_config(config_changed):
    """doit's ``config_changed`` with the digest computed once per distinct configuration.

    Stores the same value as ``config_changed(config)`` (md5 of the sorted JSON), so states
    saved by either are interchangeable.
    """

    __signature__ = _UPTODATE_SIGNATURE

    def __init__(self, config: dict[str, Any], digest: str):
        super().__init__(config)
        self._digest = digest

    def _calc_digest(self) -> str:
        return self._digest


def config_digest(config: dict[str, Any]) -> str:
    """What ``config_changed`` stores for ``config``."""
    return hashlib.md5(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()


def options_key(options: dict[str, Any]) -> str:
    """A session's effective options as sorted JSON (sessions with equal options share it)."""
    return json.dumps(options, sort_keys=True, default=repr)


def step_configs(options: dict[str, Any], registry, cache: dict | None = None) -> dict[str, tuple[dict, str]]:
    """step -> (``implementation_config``, its digest) for one session's options; ``cache``
    (keyed by ``options_key``) shares the result between sessions with equal options."""
    key = options_key(options) if cache is not None else None
    if key is not None and key in cache:
        return cache[key]
    configs = {}
    for step in STEPS:
        config = implementation_config(step, options, registry)
        configs[step] = (config, config_digest(config))
    if key is not None:
        cache[key] = configs
    return configs


def implementation_config(step: str, options: dict, registry) -> dict[str, Any]:
    """What determines a step's result: its options and implementation name + version."""
    if step in STEP_SELECTOR:
        kind, option = STEP_SELECTOR[step]
        impl = registry.get(kind, options[option])  # unknown name: fails here, at planning time
        implementation = {"name": impl.name, "version": impl.version}
        if step in STEP_CODE_VERSION:
            implementation["step_code"] = STEP_CODE_VERSION[step]
    else:
        implementation = {"name": "builtin", "version": BUILTIN_STEP_VERSION[step]}
    return {"format": FORMAT_VERSION, "step": step, "implementation": implementation,
            "options": step_options(options, step)}


def code_digest(package) -> str:
    """SHA-256 of the ``.py`` files of ``package`` (a module object of a package), in path order.

    The aggregation is cheap and its output (group tables, group report) is entirely the outputs
    layer's code applied to the sessions' records, so any edit of that code reruns it; the per-session
    steps are expensive and use explicit versions (``chain.BUILTIN_STEP_VERSION``) instead.
    """
    root = Path(package.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode("utf-8") + b"\0" + path.read_bytes())
    return digest.hexdigest()
