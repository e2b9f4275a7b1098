"""The derivative dataset of a whole run: every group file parses, a failed session shows up
everywhere, pybids indexes it, bids-validator accepts it, and two clean runs are identical."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from cstbatch.outputs.records import content_digest
from cstbatch.engine.runner import run_doit
from cstbatch.study import load_study
from conftest import bids_errors, bids_validate, write_tiny_dwi



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


def test_bids_validator_accepts_the_output_and_bidsignore_hides_only_what_the_spec_lacks(two_runs, tmp_path):
    out = two_runs[0] / "a"  # two sessions and a failed one
    report = bids_validate(out)
    assert bids_errors(report) == []
    assert sorted(report["summary"]["subjects"]) == ["01", "02", "03"]
    # the same dataset without .bidsignore: every error is about a file the specification has
    # no rule for (NOT_INCLUDED, or a JSON beside nothing the spec knows), and the ignore file
    # hides exactly those, no spec-covered file
    bare = tmp_path / "bare"
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns(".cstbatch"))
    (bare / ".bidsignore").unlink()
    full = bids_validate(bare)
    # (ALL_FILENAME_RULES_HAVE_ISSUES: the checked b-vectors, a desc- gradient file with no image)
    no_rule = {"NOT_INCLUDED", "ALL_FILENAME_RULES_HAVE_ISSUES"}
    uncovered = {loc for code, loc in bids_errors(full) if code in no_rule and not loc.endswith("/")}
    assert {code for code, _ in bids_errors(full)} <= no_rule | {"SIDECAR_WITHOUT_DATAFILE"}
    assert {loc for _, loc in bids_errors(full)} <= uncovered | {loc for code, loc in bids_errors(full) if loc.endswith("/")}
    assert report["summary"]["totalFiles"] == full["summary"]["totalFiles"] - len(uncovered)
    checked_by_spec = ["sub-02/dwi/sub-02_desc-preproc_dwi.nii.gz", "sub-02/dwi/sub-02_dwi.bval",
                       "sub-02/dwi/sub-02_desc-brain_mask.nii.gz", "sub-02/dwi/sub-02_label-brainstem_mask.nii.gz",
                       "sub-01/ses-01/dwi/sub-01_ses-01_desc-preproc_dwi.json"]
    for rel in checked_by_spec:
        assert (out / rel).exists() and "/" + rel not in uncovered, rel
    assert "/sub-02/xfm/sub-02_from-MNI152NLin2009aSym_to-dwi_mode-image_xfm.txt" in uncovered  # BEP014


def test_denoiser_none_stores_no_second_dwi_and_the_transform_is_itk(two_runs):
    out = two_runs[0] / "a"
    dwi = out / "sub-02" / "dwi"
    assert sorted(p.name for p in dwi.glob("*_dwi.nii.gz")) == ["sub-02_desc-preproc_dwi.nii.gz"]
    record = json.loads((out / "sub-02/steps/sub-02_step-denoise.json").read_text())
    assert record["status"] == "success" and record["outputs"] == {}
    assert record["info"]["dwi"] == "sub-02/dwi/sub-02_desc-preproc_dwi.nii.gz"
    register = json.loads((out / "sub-02/steps/sub-02_step-register.json").read_text())
    xfm = out / register["info"]["transform"]
    assert xfm.parent.name == "xfm" and xfm.read_text().startswith("#Insight Transform File V1.0")
    assert register["outputs"][register["info"]["transform"]]


def test_pybids_indexes_maps_sessions_and_inherited_gradients(two_runs):
    bids = pytest.importorskip("bids")
    layout = bids.BIDSLayout(two_runs[0] / "a", validate=False)
    preproc = layout.get(subject="01", session="01", desc="preproc", suffix="dwi", extension=".nii.gz")
    assert len(preproc) == 1
    assert Path(layout.get_bval(preproc[0].path)).name == "sub-01_ses-01_dwi.bval"
    rois = layout.get(subject="02", suffix="mask", label="brainstem", extension=".nii.gz")
    assert len(rois) == 1 and rois[0].get_metadata()["Type"] == "ROI"


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


def test_what_discovery_left_out_is_in_the_summary_and_the_group_report(tmp_path):
    """Nothing the user had goes unaccounted for: a series discovery skips is listed with why."""
    bids = tmp_path / "bids"
    dwi = bids / "sub-01" / "dwi"
    dwi.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    for stem, bvals in (("sub-01_dir-AP_dwi", "0 1000 1000"), ("sub-01_dir-PA_dwi", "0 0")):
        (dwi / f"{stem}.nii.gz").write_bytes(b"")  # a placeholder: processing fails cleanly
        (dwi / f"{stem}.bval").write_text(bvals + "\n")
        (dwi / f"{stem}.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n"[: 6 * len(bvals.split())])
    out = tmp_path / "out"
    study = load_study(bids_dir=bids, output_dir=out, options={"generate_pdf": False})
    assert [s.key for s in study.subjects] == ["sub-01_dir-AP"]
    assert run_doit(study, ["run"]) == 1  # the placeholder fails; the aggregation still runs
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["skipped_inputs"] == [{"path": "sub-01/dwi/sub-01_dir-PA_dwi.nii.gz", "reason":
                                          "only b0 volumes in sub-01_dir-PA_dwi.bval (a reverse phase-encoding "
                                          "reference, not a DWI series to process)"}]
    assert "1 input(s) left out by discovery: sub-01/dwi/sub-01_dir-PA_dwi.nii.gz" in (out / "group_report.html").read_text()
    assert "Inputs left out by discovery: 1 " in (out / "README").read_text()
