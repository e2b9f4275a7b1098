"""Runs one step of one session: the doit action behind every per-session task.

It is a module-level function taking only plain data, so doit's process pool can pickle it. It
resolves the plugin implementation by name in the worker, writes the step's record last,
and turns any failure into a record plus a log entry instead of an exception that would stop
the other sessions (unless ``stop_on_first_crash``). Tracebacks go to the session's log, the
screen gets one line.
"""
from __future__ import annotations

import logging
import signal
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from cstbatch.engine.chain import BUILTIN_STEP_VERSION, STEP_INPUTS, step_outputs
from cstbatch.engine.context import StepContext, implementation_for
from cstbatch.engine.session_steps import STEP_FUNCTIONS
from cstbatch.errors import CstBatchError, PluginError
from cstbatch.outputs.layout import SessionLayout
from cstbatch.outputs.records import content_digest, read_record, write_record
from cstbatch.study.options import STEPS
from cstbatch.study.spec import job_to_spec


def session_logger(layout: SessionLayout) -> logging.Logger:
    """A logger writing to ``logs/<key>.log`` (one file per session, appended per step)."""
    logger = logging.getLogger(f"cstbatch.session.{layout.key}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    target = str(layout.log)
    if not any(getattr(h, "baseFilename", None) == target for h in logger.handlers):
        for h in list(logger.handlers):
            logger.removeHandler(h)
            h.close()
        layout.log.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(target, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger


def _release_memory() -> None:
    """Hand the memory the last step freed back to the system before the next one starts.

    Why: doit runs many steps (of many sessions) in one long-lived worker; glibc keeps freed
    small-block heap for reuse, so without this a worker's resident size stays at the largest
    step it ever ran and every later step's peak starts from there (measured: the toshiba
    session's 0.2 s ingest at 917 MB after an Elition session in the same worker).
    """
    import gc

    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _reset_peak_rss() -> None:
    _release_memory()
    try:  # Linux ≥ 4.0: writing 5 resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_step(step: str, job: dict[str, Any], stop_on_first_crash: bool = False) -> bool:
    """doit action: run ``step`` for the session in ``job``; always leaves a record."""

    spec = job_to_spec(job)
    layout = SessionLayout.of(job["out_dir"], spec)
    log = session_logger(layout)
    record: dict[str, Any] = {"step": step, "session": spec.key, "started": _now()}
    upstream = [s for s in STEP_INPUTS[step]
                if (read_record(layout.record(s)) or {}).get("status") != "success"]
    start = time.perf_counter()
    cpu_start = time.process_time()
    _reset_peak_rss()
    try:
        if upstream:
            record.update(status="skipped", reason=f"earlier step {upstream[0]} did not succeed")
            log.info("%s: skipped (earlier step %s did not succeed)", step, upstream[0])
            _remove_stale(step, layout, spec.options)
            return _finish(layout, step, record, start, cpu_start, stop_on_first_crash=False)
        impl = implementation_for(step, spec.options, job["plugins_dir"])
        record["implementation"] = ({"name": impl.name, "version": impl.version, "source": impl.source}
                                    if impl else {"name": "builtin", "version": BUILTIN_STEP_VERSION[step],
                                                  "source": "built-in"})
        ctx = StepContext(spec, layout, spec.options, log, impl, job["plugins_dir"])
        log.info("%s: start (%s)", step, record["implementation"]["name"])
        with session_deadline(layout, step, spec.options.get("session_timeout")):
            info = STEP_FUNCTIONS[step](ctx) or {}
        outputs = step_outputs(step, layout, spec.options)
        missing = [p for p in outputs if not p.exists()]
        if missing:
            raise PluginError(f"{step} did not write {missing[0].name}")
        record.update(status="success", info=info,
                      outputs={str(p.relative_to(layout.out_dir)): content_digest(p) for p in outputs})
        log.info("%s: done", step)
    except Exception as exc:  # every failure becomes a record; the other sessions go on
        record.update(status="failed", error=_describe(exc, step, record.get("implementation")))
        log.error("%s failed: %s\n%s", step, record["error"]["message"], traceback.format_exc())
        _write_error_log(layout, step, record["error"], traceback.format_exc())
        _remove_stale(step, layout, spec.options)
        return _finish(layout, step, record, start, cpu_start, stop_on_first_crash)
    return _finish(layout, step, record, start, cpu_start, stop_on_first_crash)


class StepTimeout(CstBatchError):
    category = "timeout"


@contextmanager
def session_deadline(layout: SessionLayout, step: str, timeout: float | None):
    """Stop the step when the session's time budget (``session_timeout`` s) is spent.

    The budget covers the whole chain: the earlier steps' recorded durations are subtracted.
    SIGALRM works here because doit runs each task in the main thread of its (worker)
    process; where it cannot be installed, the step simply runs without a limit.
    """
    if not timeout:
        yield
        return
    spent = sum(float((read_record(layout.record(s)) or {}).get("duration_s") or 0.0)
                for s in STEPS[:STEPS.index(step)])
    left = float(timeout) - spent

    def expire(signum, frame):
        raise StepTimeout(f"session {layout.key} exceeded session_timeout={timeout:g} s during {step}")

    if left <= 0:
        expire(None, None)
    try:
        previous = signal.signal(signal.SIGALRM, expire)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, left)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _describe(exc: BaseException, step: str, impl: dict | None) -> dict[str, Any]:
    if isinstance(exc, CstBatchError):
        category, message = exc.category, str(exc)
    elif isinstance(exc, MemoryError):
        category, message = "system", "out of memory"
    elif isinstance(exc, OSError) and exc.errno is not None and exc.errno in (28, 122):
        category, message = "system", f"{exc.filename or ''}: write failed: {exc.strerror}".lstrip(": ")
    elif isinstance(exc, PermissionError):
        category, message = "system", f"{exc.filename}: permission denied"
    else:
        category, message = "processing", f"{type(exc).__name__}: {exc}"
    error = {"category": category, "message": " ".join(message.split()), "step": step}
    if getattr(exc, "qc_flags", None):
        error["qc_flags"] = exc.qc_flags
    if impl and impl.get("source") != "built-in":
        error["plugin"] = f"{impl['name']} ({impl['source']})"
        if category == "processing":
            error["category"] = "plugin"
            error["message"] = f"plugin {impl['name']} ({impl['source']}) failed: {error['message']}"
    return error


def _write_error_log(layout: SessionLayout, step: str, error: dict, tb: str) -> None:
    layout.error_log.parent.mkdir(parents=True, exist_ok=True)
    with open(layout.error_log, "a", encoding="utf-8") as fh:
        fh.write(f"[{_now()}] step {step} failed ({error['category']}): {error['message']}\n{tb}\n")


def _remove_stale(step: str, layout: SessionLayout, options: dict) -> None:
    """A failed or skipped step must not leave older outputs that look current."""
    for path in step_outputs(step, layout, options):
        if path.exists():
            path.unlink()


def _finish(layout: SessionLayout, step: str, record: dict, start: float, cpu_start: float,
            stop_on_first_crash: bool):
    record["duration_s"] = round(time.perf_counter() - start, 3)
    # CPU time of this process (all its threads): wall above CPU means the step waited (I/O, a
    # busy machine); CPU above wall means BLAS threads ran in parallel
    record["cpu_s"] = round(time.process_time() - cpu_start, 3)
    record["peak_rss_mb"] = _peak_rss_mb()
    record["finished"] = _now()
    write_record(layout.record(step), record)
    if record["status"] == "failed":
        if stop_on_first_crash:
            return False
    return True
