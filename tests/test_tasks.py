"""The doit task graph: names, incremental reruns, failure isolation, the plan."""
from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from cstbatch.engine.runner import run_doit
from cstbatch.study import load_study
from conftest import write_tiny_dwi


def make_study(tmp_path: Path, entries: list[dict], options=None) -> Path:
    for i in range(2):
        write_tiny_dwi(tmp_path / "data" / f"s{i + 1}_dwi", seed=i)
    manifest = tmp_path / "study.json"
    manifest.write_text(json.dumps({"name": "tiny", "options": options or {}, "subjects": entries}))
    return manifest


def doit(manifest: Path, out: Path, *argv: str) -> tuple[int, str]:
    study = load_study(manifest=manifest, output_dir=out)
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = run_doit(study, list(argv))
    return code, buf.getvalue()


def executed(output: str) -> list[str]:
    """Tasks doit actually ran (lines ``.  name``; ``-- name`` means up to date)."""
    return re.findall(r"^\.  (\S+)", output, flags=re.M)


ENTRIES = [{"id": "sub-01", "session": "ses-01", "nifti": "data/s1_dwi.nii.gz"},
           {"id": "sub-02", "session": None, "nifti": "data/s2_dwi.nii.gz"}]
UP_TO_TRACK = ["sub-01_ses-01:track", "sub-02:track"]


def test_doit_list_shows_readable_session_names(tmp_path):
    manifest = make_study(tmp_path, ENTRIES)
    code, out = doit(manifest, tmp_path / "out", "list")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names == ["aggregate", "sub-01_ses-01", "sub-02"]
    code, out = doit(manifest, tmp_path / "out", "list", "--all")
    assert "sub-01_ses-01:denoise" in out and "sub-02:report" in out


def test_changing_one_sessions_denoiser_reruns_only_that_chain(tmp_path):
    manifest = make_study(tmp_path, ENTRIES, options={"denoise_method": "none"})
    out = tmp_path / "out"
    code, first = doit(manifest, out, "run", *UP_TO_TRACK)
    assert code == 0
    steps = ["ingest", "denoise", "mask", "model", "register", "track"]
    assert sorted(executed(first)) == sorted(f"{k}:{s}" for k in ("sub-01_ses-01", "sub-02") for s in steps)
    for key, rel in (("sub-01_ses-01", "sub-01/ses-01"), ("sub-02", "sub-02")):
        record = json.loads((out / rel / "steps" / f"{key}_step-track.json").read_text())
        assert record["status"] == "success", record
        assert record["duration_s"] >= 0 and record["peak_rss_mb"] > 0

    code, second = doit(manifest, out, "run", *UP_TO_TRACK)
    assert code == 0 and executed(second) == []

    data = json.loads(manifest.read_text())
    data["subjects"][1]["options"] = {"denoise_method": "nlmeans"}
    manifest.write_text(json.dumps(data))
    denoised = out / "sub-02/dwi/sub-02_desc-denoised_dwi.nii.gz"
    assert not denoised.exists()  # denoiser none: the later steps read desc-preproc, no copy
    code, third = doit(manifest, out, "run", *UP_TO_TRACK)
    assert code == 0
    assert executed(third) == ["sub-02:denoise", "sub-02:mask", "sub-02:model", "sub-02:register", "sub-02:track"]
    assert denoised.exists() and denoised.with_name("sub-02_desc-denoised_dwi.json").exists()
    record = json.loads((out / "sub-02/steps/sub-02_step-denoise.json").read_text())
    assert set(record["outputs"]) == {"sub-02/dwi/sub-02_desc-denoised_dwi.nii.gz",
                                      "sub-02/dwi/sub-02_desc-denoised_dwi.json"}
    # and back: the denoised files go, and mask/model/track read the preprocessed DWI again
    data["subjects"][1]["options"] = {"denoise_method": "none"}
    manifest.write_text(json.dumps(data))
    code, fourth = doit(manifest, out, "run", *UP_TO_TRACK)
    assert code == 0 and executed(fourth) == executed(third)
    assert not denoised.exists() and not denoised.with_name("sub-02_desc-denoised_dwi.json").exists()


def test_failed_session_does_not_stop_others_and_reruns(tmp_path):
    entries = ENTRIES + [{"id": "sub-03", "session": None, "nifti": "data/missing_dwi.nii.gz"}]
    manifest = make_study(tmp_path, entries, options={"denoise_method": "none"})
    out = tmp_path / "out"
    code, first = doit(manifest, out, "run", *UP_TO_TRACK, "sub-03:track")
    assert code == 0
    ingest = json.loads((out / "sub-03/steps/sub-03_step-ingest.json").read_text())
    assert ingest["status"] == "failed" and ingest["error"]["category"] == "input"
    assert ingest["error"]["message"].endswith("missing_dwi.nii.gz: file not found")
    track = json.loads((out / "sub-03/steps/sub-03_step-track.json").read_text())
    assert track["status"] == "skipped"
    assert "Traceback" in (out / "logs/sub-03_error.log").read_text()
    assert "sub-02:track" in executed(first)
    # rerun: only the failed session's chain runs again
    code, second = doit(manifest, out, "run", *UP_TO_TRACK, "sub-03:track")
    assert executed(second) == [f"sub-03:{s}" for s in ("ingest", "denoise", "mask", "model", "register", "track")]


def test_plan_says_what_would_run_and_why(tmp_path):
    manifest = make_study(tmp_path, ENTRIES, options={"denoise_method": "none"})
    out = tmp_path / "out"
    code, text = doit(manifest, out, "plan")
    assert code == 0
    assert re.search(r"run  sub-02:ingest\s+not run before", text)
    assert re.search(r"run  sub-02:denoise\s+after sub-02:ingest", text)
    assert "28 of 19" not in text and "19 of 19 tasks would run" in text
    doit(manifest, out, "run", *UP_TO_TRACK)
    data = json.loads(manifest.read_text())
    data["options"]["track_step_size"] = 0.75
    manifest.write_text(json.dumps(data))
    code, text = doit(manifest, out, "plan")
    assert re.search(r"run  sub-02:track\s+options or implementation changed", text)
    assert "sub-02:model" not in text and "sub-02:ingest" not in text


def test_unknown_implementation_fails_at_planning_time(tmp_path):
    from cstbatch.errors import OptionError
    manifest = make_study(tmp_path, ENTRIES, options={"denoise_method": "bm4d"})
    with pytest.raises(OptionError, match="'bm4d' is not a known denoise implementation .known: .*patch2self"):
        load_study(manifest=manifest, output_dir=tmp_path / "out")


def test_sessions_are_scheduled_largest_first_reports_keep_study_order(tmp_path):
    """doit starts tasks in definition order: the largest session first, so a small one is
    left for the tail; a missing input counts as small, the study order is kept otherwise."""
    from cstbatch.engine.tasks import generate_tasks

    write_tiny_dwi(tmp_path / "small_dwi", shape=(8, 8, 8), seed=1)
    write_tiny_dwi(tmp_path / "big_dwi", shape=(14, 14, 12), seed=2)
    (tmp_path / "study.json").write_text(json.dumps({"name": "t", "subjects": [
        {"id": "sub-01", "session": None, "nifti": "small_dwi.nii.gz"},
        {"id": "sub-02", "session": None, "nifti": "absent_dwi.nii.gz"},
        {"id": "sub-03", "session": None, "nifti": "big_dwi.nii.gz"}]}))
    study = load_study(manifest=tmp_path / "study.json", output_dir=tmp_path / "out")
    order = [t["basename"] for t in generate_tasks(study) if t.get("name") == "ingest"]
    assert order == ["sub-03", "sub-01", "sub-02"]
    assert [s.key for s in study.subjects] == ["sub-01", "sub-02", "sub-03"]


def test_register_code_version_is_part_of_its_up_to_date_check(tmp_path, monkeypatch):
    """The register step's result comes from cstbatch's registration code as much as from its
    atlas plugin: bumping that code's version reruns register (and only register)."""
    from cstbatch.engine.chain import STEP_CODE_VERSION

    manifest = make_study(tmp_path, ENTRIES[1:], options={"denoise_method": "none", "generate_pdf": False})
    out = tmp_path / "out"
    code, first = doit(manifest, out, "run", "sub-02:register")
    record = json.loads((out / "sub-02" / "steps" / "sub-02_step-register.json").read_text())
    assert code == 0 and record["status"] == "success", record
    assert "sub-02:register" in executed(first)
    code, again = doit(manifest, out, "run", "sub-02:register")
    assert code == 0 and executed(again) == []
    monkeypatch.setitem(STEP_CODE_VERSION, "register", STEP_CODE_VERSION["register"] + "-next")
    code, bumped = doit(manifest, out, "run", "sub-02:register")
    assert code == 0 and executed(bumped) == ["sub-02:register"]


def test_aggregation_reruns_when_the_outputs_code_changes(tmp_path):
    """The group report and tables are the outputs layer's code applied to the records: an edit
    of that code must refresh them (the per-session steps use explicit versions instead)."""
    import shutil
    import types

    from cstbatch.engine.signatures import code_digest

    pkg = tmp_path / "pkg"
    shutil.copytree(Path(__file__).resolve().parents[1] / "cstbatch" / "outputs", pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    module = types.SimpleNamespace(__file__=str(pkg / "__init__.py"))
    before = code_digest(module)
    assert code_digest(module) == before
    report = pkg / "group_report.py"
    report.write_text(report.read_text() + "\n# an edit\n")
    assert code_digest(module) != before
