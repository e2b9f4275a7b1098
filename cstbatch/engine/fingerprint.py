"""The no-op fast path: a study fingerprint that says "nothing to do" without building doit tasks.

doit decides what to run task by task: for a study of N sessions it builds 9N+1 Task objects and
runs every up-to-date check (options digest, step record, input stats, file_dep states,
targets) — seconds for a thousand sessions, to find nothing to do. The fingerprint is a digest of
everything those checks read, taken with ``os.stat`` only (no hashing of file contents, no JSON
parsing of records), in five parts:

* ``code``: cstbatch and doit versions, ``FORMAT_VERSION``, the package's own source files (size
  and mtime: an edited checkout counts as a change) and the plugin registry (kind, name,
  version and source of every implementation);
* ``config``: per session, in study order: its key, folder, raw input paths, effective options
  and the digest of each step's implementation config (what ``signatures.step_config`` compares);
* ``inputs``: the raw inputs' ``signatures.input_stats`` (what ``inputs_unchanged`` compares first);
  and the files that state acquisition times (``study.sessions.time_sources``: the
  aggregation depends on them);
* ``outputs``: size, mtime, ctime and inode of every target of every task (step records and
  outputs, the aggregation's files); the list of paths is saved with the fingerprint (it is a
  function of the ``code`` and ``config`` parts, which are compared first);
* ``state``: the same for every file of doit's state folder (``.cstbatch/state``).

Saving: the progress reporter saves it (``.cstbatch/noop-fingerprint``) at the end of a run that
visited every task and left each one up to date or successful, with every record it read saying
success — the ``code``, ``config`` and ``inputs`` parts as they were *before* doit's checks (an
input edited during the run then shows up as a change), the other parts after the run, and only
if every declared file exists. Any run that executes a task deletes the saved fingerprint first.

Checking: the ``cstbatch`` command (and ``run_batch``) compares, under the output folder's run
lock, before building any doit task, for a plain full ``run`` only; an exact match prints the
line the progress reporter prints for a no-op. Anything else — no saved fingerprint, any
difference, the lock held by another run, a sample study — goes to doit, which stays the only
judge of what to run.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from cstbatch.outputs.layout import STATE_DIR

FORMAT = 1
FILENAME = "noop-fingerprint"


def _sha(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _stat_line(path: str, label: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{label}:missing"
    return f"{label}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def fingerprint_path(out_dir: Path) -> Path:
    return Path(out_dir) / STATE_DIR / FILENAME


def forget(out_dir: Path) -> None:
    """Delete the saved fingerprint (a run is about to change the study)."""
    try:
        os.unlink(fingerprint_path(out_dir))
    except OSError:
        pass


class StudyFingerprint:
    """Computes, saves and compares the fingerprint of one study (see the module docstring)."""

    def __init__(self, study):
        self.study = study
        self.out_dir = Path(study.config.output_dir)
        self.path = fingerprint_path(self.out_dir)
        self.state_dir = self.out_dir / STATE_DIR / "state"
        self._registry = None
        self._configs: dict = {}

    @property
    def registry(self):
        if self._registry is None:
            from cstbatch.plugins import get_registry

            self._registry = get_registry(self.study.plugins_dir)
        return self._registry

    # -- parts ---------------------------------------------------------------------------
    def code(self) -> str:
        import doit

        from cstbatch._version import __version__
        from cstbatch.engine.signatures import FORMAT_VERSION

        lines = [f"cstbatch {__version__}", f"doit {doit.__version__}", f"format {FORMAT_VERSION}",
                 f"fingerprint {FORMAT}"]
        sources = []
        for folder, dirs, files in os.walk(Path(__file__).resolve().parents[1]):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            sources += [os.path.join(folder, name) for name in files if name.endswith(".py")]
        lines += [_stat_line(source, source) for source in sorted(sources)]
        for impl in self.registry.all():
            lines.append(f"{impl.kind} {impl.name} {impl.version} {impl.source}")
        return _sha(lines)

    def config(self) -> str:
        from cstbatch.engine.signatures import options_key, step_configs
        from cstbatch.study.options import STEPS

        study = self.study
        lines = [f"kind {study.kind}", f"out {self.out_dir}"]  # (the plugins folder: in ``code``)
        for spec in study.subjects:
            configs = step_configs(spec.options, self.registry, self._configs)
            lines.append("\t".join([spec.key, str(spec.relative_dir), spec.input_type, str(spec.input_path),
                                    str(spec.bval), str(spec.bvec), options_key(spec.options),
                                    str(spec.session_date)]
                                   + [configs[step][1] for step in STEPS]))
        return _sha(lines)

    def inputs(self) -> str:
        from cstbatch.engine.signatures import input_stats
        from cstbatch.study.sessions import time_sources

        return _sha([json.dumps(input_stats(s.inputs) + input_stats([(str(p), p) for p in time_sources(s)]))
                     for s in self.study.subjects])

    def _output_lines(self, paths: list[str]) -> list[str]:
        prefix = str(self.out_dir) + os.sep
        return [_stat_line(p if os.path.isabs(p) else prefix + p, p) for p in paths]

    def outputs(self, paths: list[str]) -> str:
        return _sha(self._output_lines(paths))

    def state(self) -> str:
        try:
            with os.scandir(self.state_dir) as it:
                names = sorted(entry.name for entry in it)
        except OSError:
            return _sha(["missing"])
        return _sha([_stat_line(os.path.join(self.state_dir, name), name) for name in names])

    def before(self) -> dict[str, str]:
        """The parts taken before doit checks anything."""
        return {"code": self.code(), "config": self.config(), "inputs": self.inputs()}

    # -- saving and comparing --------------------------------------------------------------
    def save(self, before: dict[str, str], tasks: int, targets: list[str]) -> bool:
        """Save ``before`` + the parts after the run; ``targets``: every target of every doit
        task (step records and outputs, the aggregation's files). False (nothing saved) when
        one is missing — then doit has work to do next time."""
        from cstbatch.atomic import write_text

        prefix = str(self.out_dir) + os.sep
        paths = [t[len(prefix):] if t.startswith(prefix) else t for t in map(str, targets)]
        lines = self._output_lines(paths)
        if any(line.endswith(":missing") for line in lines) or any("\n" in p for p in paths):
            forget(self.out_dir)
            return False
        parts = dict(before, outputs=_sha(lines), state=self.state())
        header = {"format": FORMAT, "tasks": tasks, "parts": parts}
        write_text(self.path, json.dumps(header, sort_keys=True) + "\n" + "\n".join(paths) + "\n")
        return True

    def load(self) -> tuple[dict[str, Any], list[str]] | None:
        try:
            with open(self.path, encoding="utf-8", errors="surrogateescape") as fh:
                header = json.loads(fh.readline())
                paths = fh.read().splitlines()
        except (OSError, ValueError):
            return None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            return None
        return header, paths

    def matches(self, header: dict[str, Any], paths: list[str]) -> bool:
        """Compare part by part, cheapest first, stopping at the first difference."""
        saved = header.get("parts") or {}
        checks = (("code", self.code), ("config", self.config), ("inputs", self.inputs),
                  ("state", self.state), ("outputs", lambda: self.outputs(paths)))
        return all(saved.get(name) == compute() for name, compute in checks)


def nothing_to_do(study, out: TextIO | None = None) -> bool:
    """True (after printing the no-op line) when the saved fingerprint matches the study now.

    Only for a plain full run of the whole study: the caller decides that (no task selection,
    no ``--dry-run``, no ``--stop-on-first-crash``, no participant subset).
    """
    from cstbatch.engine.state import LockError, RunLock

    start = time.monotonic()
    if study.kind == "sample" or not study.subjects:
        return False
    fingerprint = StudyFingerprint(study)
    saved = fingerprint.load()
    if saved is None:
        return False
    header, paths = saved
    lock = RunLock(fingerprint.out_dir / STATE_DIR)
    try:
        lock.acquire()
    except (LockError, OSError):
        return False  # another run: doit reports it
    try:
        same = fingerprint.matches(header, paths)
    except (OSError, ValueError):
        same = False
    finally:
        lock.release()
    if same:
        stream = out or sys.stdout
        stream.write(f"cstbatch: all {header.get('tasks')} tasks up to date, nothing to do "
                     f"({time.monotonic() - start:.1f} s)\n")
    return same
