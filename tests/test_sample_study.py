"""The whole sample study through the real pipeline, checked against its ground truth.

One module-scoped run (about 3 minutes on a current 2-core machine, 6.5 on an older one,
generation included) of the shipped sample study plus one deliberately broken session, with the
sample manifest's own options. It carries the bars of the CST extraction issue (Dice, swaps,
FA, lesion, distractor on every session, via ``cstbatch.sample.accuracy``) and of the reports
issue (every output exists and parses; the failed session shows up in the summary, the metrics
table and the group report), and checks that a rerun redoes only the failed session.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cstbatch import sample
from cstbatch.outputs.layout import STATE_DIR
from cstbatch.engine.runner import run_doit
from cstbatch.sample.accuracy import check_study, failures
from cstbatch.study import SAMPLE_MANIFEST, load_study
from conftest import bids_errors, bids_validate

BROKEN = "sub-05_ses-01"


def _manifest_with_broken_session(root: Path) -> Path:
    manifest = json.loads(SAMPLE_MANIFEST.read_text())
    broken = root / "broken" / f"{BROKEN}_dwi"
    good = root / "generated" / "bids" / "sub-02" / "dwi" / "sub-02_dwi"
    broken.parent.mkdir()
    # a transfer cut short: the first 20 kB of a real image, with intact gradient files
    broken.with_suffix(".nii.gz").write_bytes(good.with_suffix(".nii.gz").read_bytes()[:20_000])
    for ext in (".bval", ".bvec"):
        shutil.copyfile(good.with_suffix(ext), broken.with_suffix(ext))
    manifest["subjects"].append({"id": "sub-05", "session": "ses-01", "nifti": f"broken/{BROKEN}_dwi.nii.gz"})
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def _records(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.rglob("*_step-*.json")}


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_study")
    sample.generate_sample_study(root / "generated", log=lambda msg: None)
    manifest = _manifest_with_broken_session(root)
    out = root / "derivatives"
    study = load_study(manifest=manifest, output_dir=out)
    jobs = os.cpu_count() or 1  # sessions side by side, as `doit run` does
    first = run_doit(study, ["run"], jobs=jobs)
    before = _records(out)
    second = run_doit(load_study(manifest=manifest, output_dir=out), ["run"], jobs=jobs)
    after = _records(out)
    return {"root": root, "out": out, "study": study, "codes": (first, second),
            "rewritten": sorted(p.name for p in after if after[p] != before.get(p))}


def test_cst_bars_hold_on_every_sample_session(sample_run):
    rows = check_study(sample_run["out"], sample_run["root"] / "generated")
    assert [r["key"] for r in rows] == [s.key for s in sample.SESSIONS]
    problems = {r["key"]: failures(r) for r in rows if failures(r)}
    assert not problems, problems
    lesioned = [r for r in rows if "lesion_side" in r]
    assert len(lesioned) == 1 and lesioned[0]["lesion_min_in_segment"] and lesioned[0]["fa_laterality_sign_ok"]
    assert {r["orientation"] for r in rows} == {"LAS", "RAS"}


def test_every_output_exists_and_parses(sample_run):
    out, study = sample_run["out"], sample_run["study"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "cstbatch"
    participants = list(csv.DictReader(open(out / "participants.tsv"), delimiter="\t"))
    assert [p["participant_id"] for p in participants] == ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05"]
    json.loads((out / "participants.json").read_text())
    assert (out / "README").read_text().strip()
    for spec in study.subjects:
        assert (out / "logs" / f"{spec.key}.log").stat().st_size > 0
        if spec.key == BROKEN:
            continue
        base = out / spec.relative_dir
        metrics = json.loads((base / "metrics" / f"{spec.key}_metrics.json").read_text())
        prov = metrics["provenance"]
        assert {"cstbatch_version", "libraries", "options", "steps", "input_sha256"} <= set(prov)
        assert set(prov["steps"]) >= {"ingest", "denoise", "track", "extract"}
        assert all(step["duration_s"] >= 0 for step in prov["steps"].values())
        rows = list(csv.DictReader(open(base / "metrics" / f"{spec.key}_metrics.csv")))
        assert [r["side"] for r in rows][:2] == ["left", "right"]
        profiles = list(csv.DictReader(open(base / "metrics" / f"{spec.key}_profiles.csv")))
        assert {"side", "node", "metric", "value"} <= set(profiles[0])
        assert len(profiles) == 2 * 4 * 100 and all(p["value"] != "" for p in profiles)
        report = (base / "metrics" / f"{spec.key}_report.html").read_text()
        assert "data:image/png;base64," in report and 'src="http' not in report
        pdf = (base / "metrics" / f"{spec.key}_report.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF") and len(pdf) > 20_000
        for path in sorted(base.rglob("*.nii.gz")):
            assert np.isfinite(np.asarray(nib.load(str(path)).dataobj)).all(), path
        for side in ("L", "R"):
            trk = nib.streamlines.load(str(base / "tractography" / f"{spec.key}_desc-cst{side}_tractogram.trk"))
            assert len(trk.streamlines) >= 20
        assert (base / "figures" / f"{spec.key}_desc-registration_qc.png").stat().st_size > 0


def test_bids_validator_finds_no_error_in_the_sample_output(sample_run):
    report = bids_validate(sample_run["out"])
    assert bids_errors(report) == []
    assert sorted(report["summary"]["subjects"]) == ["01", "02", "03", "04", "05"]


def test_failed_session_is_reported_everywhere(sample_run):
    out = sample_run["out"]
    assert sample_run["codes"] == (1, 1)  # a session failed: non-zero exit, aggregation still ran
    summary = json.loads((out / "batch_summary.json").read_text())
    status = {s["key"]: s for s in summary["sessions"]}
    assert status[BROKEN]["status"] == "failed" and status[BROKEN]["failed_step"] == "ingest"
    assert status[BROKEN]["error_category"] == "input" and f"{BROKEN}_dwi.nii.gz" in status[BROKEN]["error"]
    assert (out / status[BROKEN]["log"]).exists() and "Traceback" in (out / status[BROKEN]["log"]).read_text()
    assert summary["totals"]["success"] == 5 and summary["totals"]["failed"] == 1
    rows = {r["key"]: r for r in csv.DictReader(open(out / "batch_metrics.csv"))}
    assert rows[BROKEN]["status"] == "failed"
    metric_columns = [c for c in rows["sub-02"] if c.startswith(("left_", "right_", "laterality_"))]
    assert len(metric_columns) >= 20
    for key, row in rows.items():
        if key != BROKEN:  # a non-empty value for every metric of every successful session
            assert row["status"] == "success" and all(row[c] != "" for c in metric_columns), key
    group = (out / "group_report.html").read_text()
    assert BROKEN in group and "failed" in group.lower()


def test_rerun_redoes_only_the_failed_session(sample_run):
    rewritten = sample_run["rewritten"]
    assert rewritten and all(name.startswith(BROKEN) for name in rewritten), rewritten
    assert (sample_run["out"] / STATE_DIR).is_dir()
