"""BIDS discovery against the real example layouts and synthetic edge cases."""
from __future__ import annotations

from pathlib import Path

import pytest

from cstbatch import discover_subjects, validate_subject_inputs
from cstbatch.study.discover import discover_study, parse_bids_name
from cstbatch.errors import InputError


def touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_ds114_ten_subjects_two_sessions_with_inherited_gradients(bids_examples):
    root = bids_examples / "ds114"
    entries = discover_subjects(root)
    expected = [f"sub-{i:02d}_ses-{s}" for i in range(1, 11) for s in ("retest", "test")]
    assert [e.key for e in entries] == expected
    for e in entries:
        assert e.input_path == root / e.subject_id / e.session_id / "dwi" / f"{e.key}_dwi.nii.gz"
        assert e.bval == root / "dwi.bval" and e.bvec == root / "dwi.bvec"  # top-level inheritance
        assert e.input_type == "nifti"
    assert validate_subject_inputs(entries) == []


def test_genetics_ukbb_no_sessions(bids_examples):
    root = bids_examples / "genetics_ukbb"
    entries = discover_subjects(root)
    assert [e.key for e in entries] == [f"sub-{i:02d}" for i in range(1, 15)]
    assert all(e.session_id is None for e in entries)
    assert all(e.bval == root / "dwi.bval" for e in entries)
    assert entries[0].relative_dir == Path("sub-01")


def test_patterns_and_labels_use_glob_semantics(bids_examples):
    root = bids_examples / "ds114"
    keys = [e.key for e in discover_subjects(root, "sub-0[1-3]", "ses-test")]
    assert keys == ["sub-01_ses-test", "sub-02_ses-test", "sub-03_ses-test"]
    keys = [e.key for e in discover_subjects(root, participant_label=["01", "sub-10"])]
    assert keys == ["sub-01_ses-retest", "sub-01_ses-test", "sub-10_ses-retest", "sub-10_ses-test"]
    keys = [e.key for e in discover_subjects(root, exclude_participant_label=[f"{i:02d}" for i in range(2, 11)])]
    assert keys == ["sub-01_ses-retest", "sub-01_ses-test"]
    # "." is a literal under fnmatch, not "any character" as in a regex
    assert discover_subjects(root, subject_pattern="sub-0.") == []


def test_several_series_maps_and_skips(tmp_path):
    touch(tmp_path,
          "sub-a/ses-1/dwi/sub-a_ses-1_acq-hi_dir-AP_run-1_dwi.nii.gz",
          "sub-a/ses-1/dwi/sub-a_ses-1_acq-hi_dir-AP_run-1_dwi.bval",
          "sub-a/ses-1/dwi/sub-a_ses-1_acq-hi_dir-AP_run-1_dwi.bvec",
          "sub-a/ses-1/dwi/sub-a_ses-1_acq-hi_dir-PA_run-1_dwi.nii",
          "sub-a/ses-1/dwi/sub-a_ses-1_acq-ADC_dwi.nii.gz",         # scanner map, not a series
          "sub-a/ses-1/dwi/sub-a_ses-1_dwi_FA.nii.gz",               # dcm2niix-style map
          "sub-a/ses-1/anat/sub-a_ses-1_T1w.nii.gz",
          "sub-a/ses-2/anat/sub-a_ses-2_T1w.nii.gz",                 # no DWI: skipped, listed
          "sub-a/ses-1/sub-a_ses-1_dwi.bval",                        # session-level inheritance
          "sub-a/ses-1/sub-a_ses-1_dwi.bvec",
          "sub-b/anat/sub-b_T1w.nii.gz")
    found = discover_study(tmp_path)
    keys = [e.key for e in found.entries]
    assert keys == ["sub-a_ses-1_acq-hi_dir-AP_run-1", "sub-a_ses-1_acq-hi_dir-PA_run-1"]
    ap, pa = found.entries
    assert ap.bval.name == "sub-a_ses-1_acq-hi_dir-AP_run-1_dwi.bval"       # same stem wins
    assert pa.bval == tmp_path / "sub-a/ses-1/sub-a_ses-1_dwi.bval"         # inherited
    assert pa.input_path.name.endswith(".nii")
    assert sorted(found.skipped) == [("sub-a/ses-2", "no DWI series"), ("sub-b", "no DWI series")]


def test_missing_gradients_are_reported_not_raised(tmp_path):
    touch(tmp_path, "sub-1/dwi/sub-1_dwi.nii.gz")
    entries = discover_subjects(tmp_path)
    assert entries[0].bval is None
    problems = validate_subject_inputs(entries)
    assert problems and "no .bval found" in problems[0] and "sub-1_dwi.nii.gz" in problems[0]


def test_missing_bids_folder_is_one_line(tmp_path):
    with pytest.raises(InputError, match="BIDS folder not found"):
        discover_subjects(tmp_path / "nope")


def test_parse_bids_name():
    assert parse_bids_name("sub-01_ses-a_run-2_dwi.nii.gz") == ({"sub": "01", "ses": "a", "run": "2"}, "dwi", ".nii.gz")
    assert parse_bids_name("dwi.bval") == ({}, "dwi", ".bval")


def test_b0_only_series_is_skipped_with_its_reason(tmp_path):
    """A reverse phase-encoding reference kept in dwi/ is not a session: it would only fail."""
    touch(tmp_path, "sub-1/dwi/sub-1_dir-AP_dwi.nii.gz", "sub-1/dwi/sub-1_dir-PA_dwi.nii.gz",
          "sub-1/dwi/sub-1_dir-AP_dwi.bvec", "sub-1/dwi/sub-1_dir-PA_dwi.bvec",
          "sub-2/dwi/sub-2_dwi.nii.gz", "sub-2/dwi/sub-2_dwi.bval")
    dwi = tmp_path / "sub-1" / "dwi"
    (dwi / "sub-1_dir-AP_dwi.bval").write_text("0 1000 1000 1000 1000 1000 1000\n")
    (dwi / "sub-1_dir-PA_dwi.bval").write_text("0 5 0\n")  # b 5: a b0 as Philips stores one
    found = discover_study(tmp_path)
    assert [e.key for e in found.entries] == ["sub-1_dir-AP", "sub-2"]  # sub-2's 0-byte .bval: ingest's business
    assert found.skipped == [("sub-1/dwi/sub-1_dir-PA_dwi.nii.gz",
                              "only b0 volumes in sub-1_dir-PA_dwi.bval (a reverse phase-encoding "
                              "reference, not a DWI series to process)")]


def test_phase_part_of_a_complex_series_is_skipped(tmp_path):
    """BIDS stores complex DWI as part-mag / part-phase: the phase is not a series to fit."""
    touch(tmp_path, *(f"sub-1/dwi/sub-1_part-{p}_dwi{e}" for p in ("mag", "phase") for e in (".nii.gz", ".bval", ".bvec")))
    found = discover_study(tmp_path)
    assert [e.key for e in found.entries] == ["sub-1"]
    assert found.skipped == [("sub-1/dwi/sub-1_part-phase_dwi.nii.gz",
                              "part-phase: only magnitude images are diffusion data")]
