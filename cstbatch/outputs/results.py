"""Reading sessions' outcomes back from their step records (the saved state is the truth).

Used by ``run_batch`` to return ``SubjectResult``s, by the aggregation, and by
``cstbatch status`` while a run (local or on a cluster) is still going on.
"""
from __future__ import annotations

from cstbatch.outputs.layout import SessionLayout
from cstbatch.outputs.records import read_record
from cstbatch.study.options import STEPS
from cstbatch.study.spec import SubjectResult


def session_result(spec, out_dir) -> SubjectResult:
    layout = SessionLayout.of(out_dir, spec)
    result = SubjectResult(spec.subject_id, spec.session_id, success=False, duration_seconds=0.0,
                           key=spec.key, log_path=str(layout.log), outputs={})
    for step in STEPS:
        record = read_record(layout.record(step))
        if record is None:
            break
        result.duration_seconds += float(record.get("duration_s") or 0.0)
        status = record.get("status")
        if status == "success":
            result.last_step = step
            result.outputs.update(record.get("outputs") or {})
        elif status == "failed":
            error = record.get("error") or {}
            result.status, result.failed_step = "failed", step
            result.error, result.error_category = error.get("message"), error.get("category")
            result.log_path = str(layout.error_log)
            break
        else:
            break
    else:
        result.status, result.success = "success", True
    result.duration_seconds = round(result.duration_seconds, 3)
    return result


def collect_results(subjects, out_dir) -> list[SubjectResult]:
    return [session_result(spec, out_dir) for spec in subjects]
