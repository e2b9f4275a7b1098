"""The doit reporter of cstbatch runs: progress, one line per failure, the run lock.

On a terminal it keeps one live line (sessions done/failed/total, tasks running, ETA); in a
log file or pipe it prints one line per executed task instead. Up-to-date tasks are counted,
not listed, so a no-op rerun of a large study says so in one line. Failures print one line
naming the session, step, cause and log file; tracebacks stay in the logs.
It also takes the output folder's run lock for the run's duration (or, with ``lock_name``, a lock
of its own under ``.cstbatch/locks/``: a cluster job running one session), and turns SIGTERM into an
orderly stop (doit then saves nothing half-done: the state is committed per task anyway).
Given a ``fingerprint`` (``cstbatch.engine.fingerprint``), it saves the study's fingerprint after a run
that left every task up to date or successful; any run that executes a task deletes it first.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from doit.exceptions import InvalidTask
from doit.reporter import ConsoleReporter

from cstbatch.engine import fingerprint as fingerprints
from cstbatch.engine.state import LockError, RunLock
from cstbatch.outputs.layout import SessionLayout
from cstbatch.outputs.records import read_record


class _Stop(KeyboardInterrupt):
    """Raised by the SIGTERM handler so doit unwinds as on Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Stop()


class ProgressReporter(ConsoleReporter):
    desc = "cstbatch progress"

    def __init__(self, out_dir: Path, layouts: dict[str, SessionLayout], outstream=None, tty: bool | None = None,
                 lock_name: str | None = None, fingerprint: "fingerprints.StudyFingerprint | None" = None):
        super().__init__(outstream or sys.stdout, {})
        self.out_dir = Path(out_dir)
        self.layouts = layouts
        self.tty = self.outstream.isatty() if tty is None else tty
        state_dir = self.out_dir / ".cstbatch"
        self.lock = RunLock(state_dir / "locks" / lock_name if lock_name else state_dir)
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.running: set[str] = set()
        self.executed = 0
        self.uptodate = 0
        self.start = time.monotonic()
        self._previous_sigterm = None
        self.fingerprint = fingerprint
        self._before: dict[str, str] | None = None   # fingerprint parts taken before doit's checks
        self._action_tasks = 0
        self._targets: list[str] = []
        self._unsuccessful = 0                        # executed steps whose record is not a success
        self._forgotten = False

    # -- run lifecycle -------------------------------------------------------------------
    def initialize(self, tasks, selected_tasks):
        try:
            self.lock.acquire()
        except LockError as exc:
            raise InvalidTask(str(exc)) from None
        self.start = time.monotonic()
        # doit's ``actions`` builds Action objects on first use; its list of action specs
        # (``_actions``) says the same without building 9 per session before the first task
        self._action_tasks = sum(1 for task in tasks.values() if getattr(task, "_actions", None) or task.actions)
        self._targets = [target for task in tasks.values() for target in task.targets]
        if self.fingerprint is not None:
            try:
                self._before = self.fingerprint.before()
            except (OSError, ValueError):
                self._before = None
        try:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread
            self._previous_sigterm = None

    def complete_run(self):
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        if self._complete():
            try:
                self.fingerprint.save(self._before, self._action_tasks, self._targets)
            except (OSError, ValueError):
                fingerprints.forget(self.out_dir)
        self.lock.release()
        if self.tty:
            self.write("\r\033[K")
        for result in self.failures:
            self.write(f"FAILED {result['task'].name}: {result['exception'].get_msg().strip()}\n")
        if self.runtime_errors:
            self.write("Execution aborted: " + "\n".join(self.runtime_errors) + "\n")
        total = len(self.layouts)
        elapsed = time.monotonic() - self.start
        if self.executed == 0 and not self.failures and not self.runtime_errors:
            self.write(f"cstbatch: all {self.uptodate} tasks up to date, nothing to do ({elapsed:.1f} s)\n")
        else:
            self.write(f"cstbatch: {self.executed} tasks run, {self.uptodate} up to date; sessions: "
                       f"{len(self.done)} finished this run, {len(self.failed)} failed, {total} in study "
                       f"({elapsed:.1f} s)\n")
        self._write_qc_flags()

    def _write_qc_flags(self) -> None:
        """Successful sessions with QC flags, on screen: a "success" with an empty CST side
        must not pass unnoticed (the flags themselves are in batch_summary.json)."""
        import json

        from cstbatch.outputs.layout import group_paths
        try:
            sessions = json.loads(group_paths(self.out_dir)["batch_summary"].read_text()).get("sessions") or []
        except (OSError, ValueError, AttributeError):
            return
        flagged = [s for s in sessions if s.get("status") == "success" and s.get("qc_flags")]
        if flagged:
            self.write(f"QC flags on {len(flagged)} successful session(s) (batch_summary.json, group_report.html):\n"
                       + "".join(f"  {s['key']}: {', '.join(str(f.get('code')) for f in s['qc_flags'])}\n"
                                 for s in flagged[:20])
                       + (f"  … and {len(flagged) - 20} more\n" if len(flagged) > 20 else ""))

    def _complete(self) -> bool:
        """Every task visited and up to date or successful, every record read a success."""
        return (self.fingerprint is not None and self._before is not None and self.lock.held
                and not self.failures and not self.runtime_errors and self._unsuccessful == 0
                and self.executed + self.uptodate == self._action_tasks)

    # -- task events ---------------------------------------------------------------------
    def execute_task(self, task):
        if not task.actions:
            return
        if not self._forgotten:  # the study is about to change: the saved fingerprint is stale
            fingerprints.forget(self.out_dir)
            self._forgotten = True
        self.running.add(task.name)
        if self.tty:
            self._live()
        else:
            self.write(f".  {task.title()}\n")

    def add_success(self, task):
        if not task.actions:
            return
        self.executed += 1
        self.running.discard(task.name)
        key, sep, step = task.name.partition(":")
        if sep and key in self.layouts:
            record = read_record(self.layouts[key].record(step)) or {}
            if record.get("status") != "success":
                self._unsuccessful += 1
            if record.get("status") == "failed" and key not in self.failed:
                self.failed.add(key)
                err = record.get("error", {})
                self._line(f"FAILED {key} {step} ({err.get('category')}): {err.get('message')} "
                           f"(log: {self.layouts[key].error_log})")
            if step == "report" and record.get("status") == "success":
                self.done.add(key)
        if self.tty:
            self._live()

    def add_failure(self, task, fail):
        self.running.discard(task.name)
        if fail.report:
            self.failures.append({"task": task, "exception": fail})

    def skip_uptodate(self, task):
        if task.actions:
            self.uptodate += 1

    def skip_ignore(self, task):
        pass

    # -- output --------------------------------------------------------------------------
    def _line(self, text: str) -> None:
        self.write(("\r\033[K" if self.tty else "") + text + "\n")

    def _live(self) -> None:
        total = len(self.layouts)
        finished = len(self.done | self.failed)
        elapsed = time.monotonic() - self.start
        eta = ""
        if finished and finished < total:
            eta = f", ETA {elapsed / finished * (total - finished):.0f} s"
        self.write(f"\r\033[Ksessions {len(self.done)} done, {len(self.failed)} failed, {total} total; "
                   f"{len(self.running)} running; {elapsed:.0f} s{eta}")
        self.outstream.flush()
