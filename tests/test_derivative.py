"""The derivative dataset of a whole run: every group file parses, a failed session shows up
everywhere, pybids indexes it, bids-validator accepts it, and two clean runs are identical."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cstbatch.outputs.records import content_digest
from cstbatch.engine.runner import run_doit
from cstbatch.study import load_study
from conftest import write_tiny_dwi



def _run(root: Path, out: Path) -> int:
    study = load_study(manifest=root / "study.json", output_dir=out)
    return run_doit(study, ["run"])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deriv")
    for i in range(2):
        write_tiny_dwi(root / "data" / f"s{i}_dwi", seed=i)
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\n")
    (root / "study.json").write_text(json.dumps({"name": "tiny", "options": {"denoise_method": "none", "generate_pdf": False}, "subjects": [
        {"id": "sub-01", "session": "ses-01", "nifti": "data/s0_dwi.nii.gz"},
        {"id": "sub-02", "session": None, "nifti": "data/s1_dwi.nii.gz"},
        {"id": "sub-03", "session": "ses-01", "nifti": "data/absent_dwi.nii.gz"}]}))
    codes = [_run(root, root / "a"), _run(root, root / "b")]
    return root, codes


def test_group_files_exist_parse_and_show_the_failed_session(two_runs):
    root, codes = two_runs
    out = root / "a"
    assert codes == [1, 1]  # a session failed: non-zero exit, aggregation still ran
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "cstbatch"
    summary = json.loads((out / "batch_summary.json").read_text())
    status = {s["key"]: s for s in summary["sessions"]}
    assert status["sub-01_ses-01"]["status"] == "success" and status["sub-02"]["status"] == "success"
    failed = status["sub-03_ses-01"]
    assert failed["status"] == "failed" and failed["failed_step"] == "ingest" and failed["error_category"] == "input"
    assert failed["log"] == "logs/sub-03_ses-01_error.log" and (out / failed["log"]).exists()
    # the tiny 20 mm cubes hold no CST: "success", but flagged (issue 15), never a plain result
    assert summary["totals"] == {"sessions": 3, "success": 2, "failed": 1, "skipped": 0, "pending": 0, "flagged": 2}
    codes = [f["code"] for f in status["sub-02"]["qc_flags"]]
    assert "cst_not_found" in codes and "fov_truncated" in codes and "few_directions" in codes
    rows = {r["key"]: r for r in csv.DictReader(open(out / "batch_metrics.csv"))}
    assert rows["sub-03_ses-01"]["status"] == "failed" and rows["sub-02"]["status"] == "success"
    assert rows["sub-02"]["left_streamline_count"] != ""
    assert rows["sub-02"]["qc_flags"] == ";".join(codes) and rows["sub-03_ses-01"]["qc_flags"] == ""
    participants = (out / "participants.tsv").read_text().splitlines()
    assert participants[0].split("\t")[0] == "participant_id"
    group = (out / "group_report.html").read_text()
    assert "sub-03_ses-01" in group and "sub-01/ses-01/metrics/sub-01_ses-01_report.html" in group
    assert "cst_not_found: CST not found" in group and "success + QC flags" in group
    assert "[cst_not_found]" in (out / "sub-02/metrics/sub-02_report.html").read_text()
    metrics = json.loads((out / "sub-02/metrics/sub-02_metrics.json").read_text())
    assert [f["code"] for f in metrics["qc_flags"]] == codes
    prov = metrics["provenance"]
    assert prov["options"]["denoise_method"] == "none" and prov["steps"]["track"]["implementation"]["name"]
    assert any(p.endswith("s1_dwi.nii.gz") for p in prov["input_sha256"])


def test_pybids_indexes_maps_and_sessions(two_runs):
    bids = pytest.importorskip("bids")
    layout = bids.BIDSLayout(two_runs[0] / "a", validate=False)
    assert layout.get_subjects() == ["01", "02", "03"] and layout.get_sessions() == ["01"]
    fa = layout.get(suffix="dwimap", extension=".nii.gz", subject="02")
    assert len(fa) == 4 and {f.get_entities()["model"] for f in fa} == {"tensor"}


def test_bids_validator_accepts_the_output(two_runs):
    validator = shutil.which("bids-validator")
    if validator is None:
        if os.environ.get("CI"):
            pytest.fail("bids-validator must be installed in CI (.ci/run installs it)")
        pytest.skip("bids-validator (npm bids-validator@1) not installed")
    result = subprocess.run([validator, str(two_runs[0] / "a"), "--json"], capture_output=True, text=True)
    issues = json.loads(result.stdout)["issues"]["errors"]
    assert result.returncode == 0, [(i["key"], i["reason"]) for i in issues]


def test_two_clean_runs_are_identical_except_documented_volatile_fields(two_runs):
    root = two_runs[0]
    files = {}
    for run in ("a", "b"):
        base = root / run
        # JSON files are compared without the documented volatile fields (times, durations,
        # memory: records.VOLATILE_FIELDS); every other file byte for byte
        files[run] = {str(p.relative_to(base)): content_digest(p) for p in sorted(base.rglob("*"))
                      if p.is_file() and not str(p.relative_to(base)).startswith((".cstbatch", "logs"))}
    assert files["a"].keys() == files["b"].keys()
    differ = [f for f in files["a"] if files["a"][f] != files["b"][f]]
    assert differ == []
    assert any(f.endswith("_report.html") for f in files["a"]) and any(f.endswith(".trk") for f in files["a"])
