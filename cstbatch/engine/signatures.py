"""What decides whether a step's task is up to date: the digest of its implementation config
(options that determine the result, implementation name and version), the raw inputs (by name
relative to the study root; size and mtime, then content), and the step's last record.

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

from doit.dependency import UptodateCalculator
from doit.tools import config_changed

from cstbatch.engine.chain import BUILTIN_STEP_VERSION, STEP_CODE_VERSION, STEP_SELECTOR
from cstbatch.outputs.records import input_sha256, read_record, succeeded
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


class inputs_unchanged(UptodateCalculator):
    """uptodate for the raw inputs, by name relative to the study root and by content.

    Saved: ``[label, stat]`` per input (label: :meth:`SubjectSpec.input_label`; stat: size and
    mtime, or a digest of those of every file of a DICOM folder). Equal now → up to date (one
    ``stat`` per file). Otherwise the ingest record decides: it lists each input's label and
    SHA-256 (what the step read); same labels and same content → still up to date, and the
    saved stats are refreshed so the next check is a ``stat`` again. So a study copied without
    keeping times (``cp -r``, ``rsync`` without ``-t``) is hashed once, not reprocessed; a
    renamed input (another label) or an edited one reruns ingest.

    Raw inputs are not ``file_dep`` because a missing input must become a clean per-session
    failure at ingest, not a doit error that stops scheduling.
    """

    __signature__ = _UPTODATE_SIGNATURE

    def __init__(self, inputs: list[tuple[str, Path]], record: Path):
        super().__init__()
        self.dep_manager = None
        self.inputs = [(label, Path(p)) for label, p in inputs]
        self.record = Path(record)
        self.digest = None

    def configure_task(self, task):
        task.value_savers.append(lambda: {"_inputs": self.digest})

    def setup(self, dep_manager, tasks_dict):
        """doit calls this before each check (``UptodateCalculator``): the state, to refresh."""
        super().setup(dep_manager, tasks_dict)
        self.dep_manager = dep_manager

    def __call__(self, task, values):
        self.digest = input_stats(self.inputs)
        saved = values.get("_inputs")
        if saved == self.digest:
            return True
        try:
            same = self._same_content(saved)
        except Exception:  # (doit hangs a parallel run on an exception here: rerunning is safe)
            same = False
        if not same:
            return False
        if self.dep_manager is not None:  # remember the new stats: next time a stat suffices
            try:
                self.dep_manager._set(task.name, "_values_:", dict(values, _inputs=self.digest))
            except OSError:  # (a read-only copy: hashed again next time, still up to date)
                pass
        return True

    def _same_content(self, saved) -> bool:
        record = read_record(self.record) or {}
        hashes = (record.get("info") or {}).get("inputs") if record.get("status") == "success" else None
        if not isinstance(hashes, dict):
            return False
        before = {entry[0]: entry[1] for entry in saved or () if isinstance(entry, (list, tuple)) and len(entry) == 2}
        for (label, path), (_, stat_now) in zip(self.inputs, self.digest):
            # (older records named inputs by absolute path: still accepted)
            want = hashes.get(label, hashes.get(str(path)))
            if want is None or stat_now == "missing":
                return False
            if _size(before.get(label)) not in (None, _size(stat_now)):
                return False  # another size: changed, no need to read it
            try:
                if input_sha256(path) != want:
                    return False
            except OSError:
                return False
        return True


def _size(stat_text):
    """The size part of a file's stat text (None for folders and unknown entries)."""
    if isinstance(stat_text, str) and stat_text.startswith("size "):
        return stat_text.split()[1]
    return None


def input_stats(inputs: list[tuple[str, Path]]) -> list[list[str]]:
    """``[label, stat]`` per raw input: ``size S mtime M`` (ns) of a file, ``folder <sha1>``
    of the relative name, size and mtime of every file under a DICOM folder, or ``missing``
    — what ``inputs_unchanged`` saves and compares (one ``stat`` per file, no reading)."""
    out = []
    for label, path in inputs:
        try:
            st = os.stat(path)
        except OSError:
            out.append([label, "missing"])
            continue
        if stat.S_ISDIR(st.st_mode):
            h = hashlib.sha1()
            for f in sorted(Path(path).rglob("*")):
                try:
                    fst = f.stat()
                except OSError:
                    continue
                if stat.S_ISREG(fst.st_mode):
                    h.update(f"{f.relative_to(path).as_posix()}:{fst.st_size}:{fst.st_mtime_ns}\n"
                             .encode("utf-8", "surrogateescape"))
            out.append([label, f"folder {h.hexdigest()}"])
        else:
            out.append([label, f"size {st.st_size} mtime {st.st_mtime_ns}"])
    return out


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
