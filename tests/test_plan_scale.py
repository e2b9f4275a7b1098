"""Planning a large study: sessions that never ran are planned without doit, and the plan is
line for line doit's own (``cstbatch.engine.plan``)."""
from __future__ import annotations

import io
from contextlib import redirect_stdout

from conftest import write_empty_manifest

from cstbatch.engine.plan import never_run, plan_text
from cstbatch.engine.runner import doit_plan_text, run_doit
from cstbatch.study import load_study


def _manifest(root, n, options=None):
    return write_empty_manifest(root, n, options, name="plan")


def test_plan_of_never_run_sessions_is_doits_plan(tmp_path):
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, 3)
    study = load_study(manifest=manifest, output_dir=out)
    assert never_run(study) == {"sub-01_ses-01", "sub-02_ses-01", "sub-03_ses-01"}
    fast = plan_text(study)
    assert fast == doit_plan_text(study)
    assert fast.splitlines()[-1] == "28 of 28 tasks would run; the rest are up to date."

    # two sessions run (and fail at ingest: 0-byte images); two more join the study later
    with redirect_stdout(io.StringIO()):
        run_doit(load_study(manifest=manifest, output_dir=out, participant_label=["01", "02"]), ["run"])
    manifest = _manifest(tmp_path, 5)
    study = load_study(manifest=manifest, output_dir=out)
    assert never_run(study) == {"sub-03_ses-01", "sub-04_ses-01", "sub-05_ses-01"}
    fast = plan_text(study)
    assert fast == doit_plan_text(study)
    ingest = next(line for line in fast.splitlines() if line.startswith("run  sub-01_ses-01:ingest "))
    assert "last attempt did not succeed" in ingest
    assert "run  sub-04_ses-01:ingest             not run before" in fast.splitlines()


def test_plan_of_a_study_that_ran_entirely_is_doits(tmp_path):
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, 2)
    with redirect_stdout(io.StringIO()):
        run_doit(load_study(manifest=manifest, output_dir=out), ["run"])
    study = load_study(manifest=manifest, output_dir=out)
    assert never_run(study) == set()
    assert plan_text(study) == doit_plan_text(study)


def test_submit_dry_run_of_many_never_run_sessions(tmp_path, default_limits):
    from test_slurm import cli

    manifest = _manifest(tmp_path, 40)
    code, text = cli("submit", "--slurm", tmp_path / "out", "--manifest", manifest, "--dry-run", "--array-size", "16")
    assert code == 0, text
    assert "40 of 40 sessions need work" in text
    assert "40 session(s) in 3 arrays of at most 16 elements" in text
    assert "#SBATCH --array=0-15" in text.splitlines()
    assert "# --- array-003.sh: the same with --array=0-7, elements 32-39" in text.splitlines()


def test_manifest_validation_skips_only_plainly_valid_entries():
    """The problems reported are exactly jsonschema's on the whole manifest (paths included)."""
    import jsonschema

    from cstbatch.study.manifest import _json_path, manifest_schema, validate_manifest_schema

    good = {"id": "sub-01", "session": "ses-01", "nifti": "a.nii.gz"}
    entries = [good, {"id": "", "session": None, "dicom": "d"}, dict(good, id="sub-02"), {"id": 3, "session": "s"},
               dict(good, id="sub-03", extra=1), {"session": None, "nifti": "b"}, dict(good, id="sub-04", options=[]),
               dict(good, id="sub-05", bval=""), "not an entry", dict(good, id="sub-06", session=None)]
    for data in ({"subjects": entries, "name": 5}, {"subjects": [good]}, {"subjects": []}, {"subjects": {}}, []):
        full = jsonschema.Draft202012Validator(manifest_schema()).iter_errors(data)
        expected = [f"{_json_path(e.absolute_path)}: {e.message}"
                    for e in sorted(full, key=lambda e: list(map(str, e.absolute_path)))]
        got = validate_manifest_schema(data)
        assert got[:len(expected)] == expected, data  # (then cstbatch's own checks)
    assert any(line.startswith("subjects[7].bval: ") for line in validate_manifest_schema({"subjects": entries}))
