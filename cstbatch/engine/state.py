"""Crash-safe doit state, sharded per session, and the output folder's run lock.

doit's stock backends keep everything in memory and write it when the run ends, so a SIGKILL
(or a cluster job hitting its time limit) loses the record of every task that finished. This
backend writes a task's entry as soon as doit stores it, into one small JSON file per
session (``<out>/.cstbatch/state/<session>.json``; study-level tasks in ``_study.json``), by
write-then-rename. A killed run therefore repeats only the task that was in flight, and
cluster jobs that each process one session never write the same file.

Relocatable: doit keys a task's file_dep states by the path it was given, and our file_dep are
absolute paths inside the output folder (step records), so a copied or moved output folder
would look like a study with no state. The backend stores every path under the output folder
as ``<out>/`` + its path relative to the folder (file states, and the ``deps:`` list) and gives
doit back the absolute path under wherever the folder is now. doit's MD5 checker then compares
the saved (mtime, size, md5): a copy that changed mtimes but not contents is still up to date.
The alternative — relative file_dep with doit's working folder set to the output folder —
would change the working folder of every action, plugin and ``doit run`` invocation; the
translation touches nothing outside this class. States written before (absolute keys) are
translated when read, so upgrading reruns nothing.
"""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cstbatch.errors import CstBatchError
from cstbatch.outputs.layout import STATE_DIR as STATE_DIR_NAME

STUDY_SHARD = "_study"
#: how a path inside the output folder is written in the state files
OUT_MARK = "<out>/"


def shard_of(task_id: str) -> str:
    """``sub-01_ses-01:denoise`` → ``sub-01_ses-01``; study-level tasks share one shard."""
    head, sep, _ = task_id.partition(":")
    return head if sep else STUDY_SHARD


class ShardedJsonDB:
    """doit DB backend (``backend = "cstbatch"``): one JSON file per session, committed per write."""

    desc = "cstbatch: per-session JSON shards, committed per task (crash-safe)"

    def __init__(self, name, codec, *, module_name=None):
        self.name = name
        self.folder = Path(name)
        self.codec = codec
        self.folder.mkdir(parents=True, exist_ok=True)
        self._db: dict[str, dict[str, Any]] = {}
        self._shards: dict[str, set[str]] = {}
        self._dirty: set[str] = set()  # shards with changes not yet written
        self._out = self._out_dirs(name)
        for path in sorted(self.folder.glob("*.json")):
            try:
                content = self.codec.decode(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a damaged shard only makes its tasks run again
            for task_id, deps in content.items():
                if self._out and isinstance(deps, dict):
                    deps = self._stored_entry(deps)
                self._db[task_id] = deps
                self._shards.setdefault(path.stem, set()).add(task_id)

    # -- paths inside the output folder, stored relative to it ------------------------------
    @staticmethod
    def _out_dirs(name) -> str:
        """``<out>/`` (absolute) of the output folder this state belongs to (``name`` is
        ``<out>/.cstbatch/state``); empty for a state folder elsewhere (keys stored as given)."""
        folder = Path(os.path.abspath(name))
        if folder.parent.name != STATE_DIR_NAME:
            return ""
        return str(folder.parent.parent).rstrip(os.sep) + os.sep

    def _to_stored(self, key):
        """A path inside the output folder → ``<out>/relative/path``; anything else as is."""
        # (a key already stored as <out>/… stays as it is: read as a relative path from a process
        # whose working folder is the output folder — a SLURM element's --chdir — it would
        # otherwise become <out>/<out>/…, and every task after the first would rerun)
        if self._out and isinstance(key, str) and not key.endswith(":") and not key.startswith(OUT_MARK):
            path = key if os.path.isabs(key) else os.path.abspath(key)
            if path.startswith(self._out):
                return OUT_MARK + path[len(self._out):].replace(os.sep, "/")
        return key

    def _to_doit(self, key):
        if self._out and isinstance(key, str) and key.startswith(OUT_MARK):
            return self._out + key[len(OUT_MARK):].replace("/", os.sep)
        return key

    def _stored_entry(self, deps: dict) -> dict:
        """One task's entry as stored: absolute keys of an older state file translated."""
        entry = {}
        for key, value in deps.items():
            if key == "deps:" and isinstance(value, (list, tuple)):
                value = [self._to_stored(v) for v in value]
            entry[self._to_stored(key)] = value
        return entry

    def _commit(self, shard: str) -> None:
        ids = self._shards.get(shard, set())
        content = {t: self._db[t] for t in sorted(ids) if t in self._db}
        target = self.folder / f"{shard}.json"
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        tmp.write_text(self.codec.encode(content), encoding="utf-8")
        os.replace(tmp, target)
        self._dirty.discard(shard)

    def _as_stored(self, value):
        """``value`` as it reads back from a shard: doit stores tuples (``deps:``, file states)
        that come back as lists, so comparing the raw value would see a change every time."""
        try:
            return self.codec.decode(self.codec.encode(value))
        except (TypeError, ValueError):
            return value

    def dump(self) -> None:
        """Write what is still pending (normally nothing: see ``set``)."""
        for shard in sorted(self._dirty):
            self._commit(shard)

    def set(self, task_id, dependency, value):
        """Store one value; commit its shard unless ``dependency`` is a file_dep state.

        doit's own keys end with ``:`` (``_values_:``, ``result:``, ``checker:``, ``ignore:``,
        and ``deps:``, which ``save_success`` writes after the task's file_dep states). A
        file_dep state (key = the file's path) is committed with the next such key, so saving
        the aggregation (one state per step record of the study) writes its shard once, not
        once per record. A crash in between loses only file states: the task reruns.
        """
        entry = self._db.setdefault(task_id, {})
        shard = shard_of(task_id)
        if dependency == "deps:" and isinstance(value, (list, tuple)):
            value = [self._to_stored(v) for v in value]
            keep = set(value)
            # file states of paths no longer among the task's file_dep (e.g. of the folder's
            # old location) would only accumulate
            for key in [k for k in entry if not k.endswith(":") and k not in keep]:
                del entry[key]
                self._dirty.add(shard)
        dependency = self._to_stored(dependency)
        if not (dependency in entry and entry[dependency] == self._as_stored(value)):
            # (a no-op rerun stores the same values again: nothing to commit)
            entry[dependency] = value
            self._shards.setdefault(shard, set()).add(task_id)
            self._dirty.add(shard)
        if shard in self._dirty and str(dependency).endswith(":"):
            self._commit(shard)

    def get(self, task_id, dependency):
        value = self._db.get(task_id, {}).get(self._to_stored(dependency))
        if dependency == "deps:" and isinstance(value, list):
            return [self._to_doit(v) for v in value]
        return value

    def in_(self, task_id):
        return task_id in self._db

    def remove(self, task_id):
        if task_id in self._db:
            del self._db[task_id]
            self._commit(shard_of(task_id))

    def remove_all(self):
        self._db = {}
        self._dirty.clear()
        for shard in list(self._shards):
            self._commit(shard)


class LockError(CstBatchError):
    category = "system"


class RunLock:
    """One run per output folder: ``<out>/.cstbatch/lock`` holds pid, host and start time.

    Taking it is atomic (O_EXCL). A lock left by a process that no longer exists on this
    host is stale and is cleared; a lock held by a live process (or by another host, whose
    processes we cannot see) refuses the new run, naming the holder.
    """

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / "lock"
        self.held = False

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def live_holder(self) -> dict[str, Any] | None:
        """The holder if it may still be running: a live pid on this host, or any other host
        (whose processes we cannot see). None when unlocked or stale."""
        holder = self.holder()
        if not holder:
            return None
        if holder.get("host") != socket.gethostname():
            return holder
        try:
            return holder if self._alive(int(holder.get("pid", -1))) else None
        except (TypeError, ValueError):
            return None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:  # being written right now, or garbage: look again
                    time.sleep(0.05)
                    if self.holder() is None and self.path.exists():
                        self.path.unlink(missing_ok=True)
                    continue
                if self.live_holder() is None:
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise LockError(f"{self.path.parent.parent}: another cstbatch run is using this output folder "
                                f"(pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}); "
                                f"wait for it, or remove {self.path} if that process is gone")
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return
        raise LockError(f"{self.path}: could not take the run lock")

    def release(self) -> None:
        if self.held:
            holder = self.holder()
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
