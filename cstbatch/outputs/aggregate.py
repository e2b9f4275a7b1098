"""Group outputs of the derivative dataset, written after every session (also failed ones).

Reads only the sessions' step records and metrics files, so it can be rerun at any time (and
by a cluster's dependent job) to refresh the summary from the saved state.
"""
from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cstbatch._version import __version__
from cstbatch.atomic import write_json, write_text
from cstbatch.outputs.layout import BIDSIGNORE, SessionLayout, group_paths, template_id
from cstbatch.outputs.results import collect_results
from cstbatch.outputs.tables import write_csv
from cstbatch.study.options import merge_options, option_value
from cstbatch.study.spec import BatchConfig, SubjectResult, job_to_spec, spec_to_job

BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/cstbatch/cstbatch"


def create_bids_derivative_metadata(output_dir: Path, source_dataset: str | Path | None = None,
                                    name: str = "cstbatch") -> Path:
    """Write ``dataset_description.json`` of the derivative dataset (BIDS 1.10 derivative)."""
    description: dict[str, Any] = {
        "Name": f"{name} — cstbatch CST derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "cstbatch", "Version": __version__, "CodeURL": CODE_URL}],
    }
    if source_dataset:
        description["SourceDatasets"] = [{"URL": Path(source_dataset).resolve().as_uri()}]
    return write_json(group_paths(output_dir)["dataset_description"], description)


def _flatten(prefix: str, value: Any, row: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}_{k}" if prefix else str(k), v, row)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        row[prefix] = value


def _session_metrics(out_dir: Path, spec) -> dict[str, Any]:
    layout = SessionLayout.of(out_dir, spec)
    try:
        data = json.loads(layout.metrics_json.read_text())
    except (OSError, ValueError):
        return {}
    row: dict[str, Any] = {}
    _flatten("", data.get("metrics", data), row)
    return row


def session_qc_flags(out_dir: Path, spec) -> list[dict[str, str]]:
    """The session's QC flags: metrics.json's, or those a ``qc_fail`` failure recorded."""
    from cstbatch.outputs.records import read_record

    layout = SessionLayout.of(out_dir, spec)
    try:
        return list(json.loads(layout.metrics_json.read_text()).get("qc_flags") or [])
    except (OSError, ValueError, AttributeError):
        pass
    record = read_record(layout.record("metrics")) or {}
    return list((record.get("error") or {}).get("qc_flags") or [])


def generate_batch_summary(results: list[SubjectResult], output_dir: Path, config: BatchConfig,
                           subjects=None, started: str | None = None, rows: list[dict] | None = None,
                           longitudinal: dict[str, dict] | None = None,
                           skipped_inputs: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Write ``batch_summary.json`` and ``batch_metrics.csv`` (``rows``, else built from
    ``results``); return the summary. ``longitudinal``: key → the repeated session's entry
    (:func:`cstbatch.outputs.longitudinal.session_flags`), stored as its ``longitudinal``
    field, with ``change_beyond_rc`` also at the session's top level. ``skipped_inputs``: what
    discovery left out (``path``, ``reason``), kept in the summary so that nothing the user had
    goes unaccounted for."""
    longitudinal = longitudinal or {}
    output_dir = Path(output_dir)
    totals = {s: sum(r.status == s for r in results) for s in ("success", "failed", "skipped", "pending")}
    flags = [session_qc_flags(output_dir, s) for s in subjects] if subjects is not None else [[] for _ in results]
    totals["flagged"] = sum(bool(f) and r.status == "success" for r, f in zip(results, flags))
    summary = {
        "cstbatch_version": __version__,
        "study": config.name,
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "totals": {"sessions": len(results), **totals},
        "options": merge_options(config.options),
        "sessions": [{
            "key": r.key, "subject": r.subject_id, "session": r.session_id, "status": r.status,
            "last_step": r.last_step, "failed_step": r.failed_step, "duration_s": r.duration_seconds,
            "error_category": r.error_category, "error": r.error,
            "log": str(Path(r.log_path).relative_to(output_dir)) if r.log_path else None,
            "change_beyond_rc": (longitudinal.get(r.key) or {}).get("change_beyond_rc"),
            "longitudinal": longitudinal.get(r.key),
            "qc_flags": f,
        } for r, f in zip(results, flags)],
        "skipped_inputs": list(skipped_inputs or []),
    }
    paths = group_paths(output_dir)
    write_json(paths["batch_summary"], summary)
    write_csv(paths["batch_metrics"], rows if rows is not None else batch_metric_rows(results, output_dir, subjects))
    return summary


def batch_metric_rows(results: list[SubjectResult], output_dir: Path, subjects=None) -> list[dict[str, Any]]:
    """One row per session: identity, status, and (successful sessions) the flattened metrics."""
    rows = []
    for i, r in enumerate(results):
        row = {"participant_id": r.subject_id, "session_id": r.session_id or "n/a", "key": r.key,
               "status": r.status, "failed_step": r.failed_step or "", "error_category": r.error_category or "",
               "qc_flags": ";".join(f["code"] for f in session_qc_flags(Path(output_dir), subjects[i]))
               if subjects is not None else ""}
        if subjects is not None and r.status == "success":
            row.update(_session_metrics(Path(output_dir), subjects[i]))
        rows.append(row)
    return rows


def write_participants(output_dir: Path, results: list[SubjectResult], source_tsv: Path | None) -> None:
    """participants.tsv with ``participant_id`` first, carrying the source dataset's columns."""
    source_rows: dict[str, dict[str, str]] = {}
    columns = ["participant_id"]
    if source_tsv and Path(source_tsv).exists():
        with open(source_tsv, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            columns += [c for c in reader.fieldnames or [] if c != "participant_id"]
            for row in reader:
                source_rows[row.get("participant_id", "")] = row
    rows = [{"participant_id": subject, **{c: source_rows.get(subject, {}).get(c) or "n/a" for c in columns[1:]}}
            for subject in sorted({r.subject_id for r in results})]
    paths = group_paths(output_dir)
    write_csv(paths["participants_tsv"], rows, delimiter="\t", columns=columns)
    sidecar = {"participant_id": {"Description": "Participant label, as in the source dataset"}}
    if source_tsv:
        source_json = Path(source_tsv).with_suffix(".json")
        if source_json.exists():
            try:
                sidecar.update(json.loads(source_json.read_text()))
            except ValueError:
                pass
    write_json(paths["participants_json"], sidecar)


def study_to_job(study) -> dict[str, Any]:
    cfg = study.config
    return {
        "out_dir": str(cfg.output_dir), "name": cfg.name, "options": dict(cfg.options),
        "source_dataset": str(cfg.source_dataset) if cfg.source_dataset else None,
        "participants_tsv": str(cfg.participants_tsv) if cfg.participants_tsv else None,
        "sessions": [spec_to_job(s, cfg.output_dir, study.plugins_dir) for s in study.subjects],
        "skipped_inputs": [{"path": where, "reason": why} for where, why in study.skipped],
    }


def aggregate(job: dict[str, Any]) -> dict[str, Any]:
    out_dir = Path(job["out_dir"])
    config = BatchConfig(output_dir=out_dir, options=job["options"], name=job["name"],
                         source_dataset=Path(job["source_dataset"]) if job["source_dataset"] else None)
    subjects = [job_to_spec(s) for s in job["sessions"]]
    results = collect_results(subjects, out_dir)
    create_bids_derivative_metadata(out_dir, config.source_dataset, config.name)
    write_participants(out_dir, results, Path(job["participants_tsv"]) if job["participants_tsv"] else None)
    write_text(group_paths(out_dir)["bidsignore"], BIDSIGNORE)
    write_session_scans(out_dir, subjects)
    rows = batch_metric_rows(results, out_dir, subjects)
    flags, repeated = write_longitudinal(out_dir, subjects, rows, config.effective_options.get("reference_rc_fa"))
    summary = generate_batch_summary(results, out_dir, config, subjects, rows=rows, longitudinal=flags,
                                     skipped_inputs=job.get("skipped_inputs"))
    write_readme(out_dir, summary)
    from cstbatch.outputs.group_report import (
        write_group_report,  # numpy/matplotlib: keep them off start-up
    )

    write_group_report(out_dir, summary, rows, repeated)
    return summary


def write_longitudinal(out_dir: Path, subjects, rows: list[dict], reference_rc_fa: float | None):
    """Write ``reliability.tsv`` and ``longitudinal.tsv``; return (key → the session's
    longitudinal entry for batch_summary.json, the tables and session times for the report)."""
    from cstbatch.outputs import (  # numpy: keep it off start-up
        longitudinal,
        reliability,
    )
    from cstbatch.study.sessions import SessionTime, acquisition_time

    def when(spec):
        try:
            return acquisition_time(spec)
        except OSError:  # an unreadable input folder: the session is ordered by its label
            return SessionTime(None, None)

    times = {s.key: when(s) for s in subjects}
    rel = reliability.reliability_rows(rows)
    long_rows = longitudinal.longitudinal_rows(rows, times, rel, reference_rc_fa)
    dice_rows = longitudinal.overlap_rows(rows, times, _tract_dice(out_dir, subjects))
    long_rows += dice_rows
    rel += longitudinal.overlap_reliability(dice_rows)
    paths = group_paths(out_dir)
    write_csv(paths["reliability"], [_tsv_row(r) for r in rel], delimiter="\t", columns=reliability.COLUMNS)
    write_csv(paths["longitudinal"], [_tsv_row(r) for r in long_rows], delimiter="\t",
              columns=longitudinal.COLUMNS)
    repeated = {"reliability": rel, "longitudinal": long_rows, "times": times,
                "reference_rc_fa": reference_rc_fa}
    return longitudinal.session_flags(long_rows), repeated


def _tract_dice(out_dir: Path, subjects):
    """(key, other key, side) → Dice of the two sessions' template-space CST masks (the metrics
    step's, in the template each session's ``atlas`` names), or None when either is missing or
    the two lie in different templates."""
    from functools import cache

    import nibabel as nib
    import numpy as np

    specs = {s.key: s for s in subjects}

    def atlas(key: str) -> str:
        return option_value(specs[key].options, "atlas")

    @cache
    def mask(key: str, side: str):
        path = SessionLayout.of(out_dir, specs[key]).cst_template_mask(side, atlas(key))
        return np.asarray(nib.load(str(path)).dataobj) > 0 if path.exists() else None

    def dice(a: str, b: str, side: str) -> float | None:
        if template_id(atlas(a)) != template_id(atlas(b)):
            return None
        ma, mb = mask(a, side), mask(b, side)
        if ma is None or mb is None or ma.shape != mb.shape:
            return None
        total = int(ma.sum()) + int(mb.sum())
        return 2.0 * int((ma & mb).sum()) / total if total else None

    return dice


def _tsv_row(row: dict[str, Any]) -> dict[str, Any]:
    """BIDS tabular convention: ``n/a`` for a missing value; floats at full precision."""
    return {k: "n/a" if v is None else (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()}


def write_session_scans(out_dir: Path, subjects) -> None:
    """One ``scans.tsv`` per subject/session folder: it makes the folder a BIDS session for the
    validator. It lists no files (the optional acq_time would be the scan's, which a manifest
    does not give); each session's files are listed in its step records."""
    for rel in sorted({s.relative_dir for s in subjects}):
        folder = out_dir / rel
        if folder.is_dir():
            write_text(folder / f"{'_'.join(rel.parts)}_scans.tsv", "filename\tacq_time\n")


def write_readme(out_dir: Path, summary: dict[str, Any]) -> None:
    t = summary["totals"]
    write_text(group_paths(out_dir)["readme"], f"""# {summary['study']}: cstbatch CST derivatives

Generated by cstbatch {__version__} ({CODE_URL}).
{t['sessions']} sessions: {t['success']} succeeded ({t.get('flagged', 0)} with QC flags), {t['failed']} failed, {t['pending']} pending.
Inputs left out by discovery: {len(summary.get('skipped_inputs') or [])} (batch_summary.json, skipped_inputs: path and reason).

- batch_summary.json: every session's status, last step, error and log
- batch_metrics.csv: one row per session with per-side CST metrics, laterality indices and qc_flags
  (codes joined by ";"; what each means: batch_summary.json and the reports)
- longitudinal.tsv: subjects with two or more successful sessions, in acquisition order: value,
  change and % change from baseline per metric and side; change_beyond_rc flags FA changes
  larger than the repeatability coefficient; tract_dice, the overlap of each CST side with the
  baseline's in the template
- reliability.tsv: test-retest reliability per metric and side (wCV, ICC(1,1), SEM,
  repeatability coefficient) over the subjects with repeated sessions
- group_report.html: cohort table, distributions, outliers, failures
- sub-*/[ses-*/]: dwi/ (preprocessed DWI, gradients, brain mask, atlas ROIs, tensor maps, CST
  masks in the template's space),
  tractography/ (whole brain, CST L/R), xfm/ (template-to-DWI transform, ITK text),
  metrics/ (metrics.json/csv, profiles, report), steps/ (step records)
- logs/: one log per session, <session>_error.log for failures
""")


def aggregate_action(job: dict[str, Any]):
    """doit action: write the group outputs; fail the run (non-zero exit) if a session failed."""
    from doit.exceptions import TaskFailed

    summary = aggregate(job)
    failed = [s for s in summary["sessions"] if s["status"] == "failed"]
    if failed:
        lines = [f"  {s['key']}: {s['failed_step']}: {s['error']} (log: {s['log']})" for s in failed]
        return TaskFailed(f"{len(failed)} of {len(summary['sessions'])} sessions failed:\n" + "\n".join(lines))
    return True
