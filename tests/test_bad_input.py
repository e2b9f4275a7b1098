"""The bad-input corpus: each case is one clear line naming the file and the cause, and the
rest of the study is processed. Session-level cases run together in one study through the
doit tasks (ingest), next to a good session; study-level cases refuse the whole manifest.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cstbatch.errors import ManifestError
from cstbatch.study.manifest import load_manifest
from cstbatch.engine.runner import run_doit
from cstbatch.study import load_study
from conftest import tiny_gradients, write_tiny_dwi


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    for ext in (".nii.gz", ".bval", ".bvec"):
        shutil.copy(str(src) + ext, str(dst) + ext)
    return Path(str(dst) + ".nii.gz")


def _dicom(folder: Path, good: Path, *, key: str, description: str = "DTI", strip_diffusion: bool = False):
    import pydicom
    from cstbatch.sample.dicom import write_dicom_series

    img = nib.load(str(good) + ".nii.gz")
    bvals, bvecs = tiny_gradients()
    files = write_dicom_series(folder, np.asarray(img.dataobj), img.affine, bvals, bvecs, key=key,
                               patient_id="P" + key, series_description=description)
    if strip_diffusion:
        for f in files:
            ds = pydicom.dcmread(f)
            for tag in [(0x0018, 0x9087), (0x0018, 0x9089), (0x0018, 0x9075)]:
                if tag in ds:
                    del ds[tag]
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
            ds.save_as(f)


def build_cases(root: Path) -> tuple[list[dict], dict[str, tuple[str, str]]]:
    """Manifest entries and, per session, (file name expected in the message, cause text)."""
    good = root / "src" / "good_dwi"
    write_tiny_dwi(good, seed=1)
    entries, expect = [], {}

    def case(label: str, expected_file: str, cause: str, *, nifti: Path | None = None, dicom: Path | None = None,
             options: dict | None = None):
        entry = {"id": f"sub-{label}", "session": None}
        if nifti is not None:
            entry["nifti"] = str(nifti)
        else:
            entry["dicom"] = str(dicom)
        if options:
            entry["options"] = options
        entries.append(entry)
        expect[f"sub-{label}"] = (expected_file, cause)

    d = root / "cases"
    p = _copy(good, d / "truncated_dwi")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    case("truncated", "truncated_dwi.nii.gz", "truncated", nifti=p)

    p = _copy(good, d / "empty_dwi")
    p.write_bytes(b"")
    case("empty", "empty_dwi.nii.gz", "file is empty (0 bytes)", nifti=p)

    p = _copy(good, d / "threed_dwi")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(p))
    case("threed", "threed_dwi.nii.gz", "not a 4-D image", nifti=p)

    p = _copy(good, d / "count_dwi")
    Path(str(d / "count_dwi") + ".bval").write_text("0 1000 1000\n")
    case("count", "count_dwi.bval", "3 b-values but the image has 14 volumes", nifti=p)

    p = _copy(good, d / "rows_dwi")
    Path(str(d / "rows_dwi") + ".bvec").write_text("0 " * 14 + "\n" + "1 " * 14 + "\n")
    case("rows", "rows_dwi.bvec", "rows", nifti=p)

    p = _copy(good, d / "nob0_dwi")
    Path(str(d / "nob0_dwi") + ".bval").write_text(" ".join(["1000"] * 14) + "\n")
    case("nob0", "nob0_dwi.bval", "no b0", nifti=p)

    for label, bad in (("nan", np.nan), ("inf", np.inf)):
        p = _copy(good, d / f"{label}_dwi")
        img = nib.load(str(p))
        data = np.asarray(img.dataobj).copy()
        data[3, 3, 3, 5] = bad
        nib.save(nib.Nifti1Image(data, img.affine), str(p))
        case(label, f"{label}_dwi.nii.gz", "NaN" if label == "nan" else "Inf", nifti=p)

    p = _copy(good, d / "nobval_dwi")
    Path(str(d / "nobval_dwi") + ".bval").unlink()
    case("nobval", "nobval_dwi.bval", "not found", nifti=p)

    p = _copy(good, d / "nobvec_dwi")
    Path(str(d / "nobvec_dwi") + ".bvec").unlink()
    case("nobvec", "nobvec_dwi.bvec", "not found", nifti=p)

    p = _copy(good, d / "words_dwi")
    Path(str(d / "words_dwi") + ".bval").write_text("0 zero " + "1000 " * 12 + "\n")
    case("words", "words_dwi.bval", "cannot parse", nifti=p)

    p = _copy(good, d / "unit_dwi")
    vec = np.loadtxt(str(d / "unit_dwi") + ".bvec")
    vec[:, 5] *= 3
    np.savetxt(str(d / "unit_dwi") + ".bvec", vec, fmt="%.6f")
    case("unit", "unit_dwi.bvec", "unit", nifti=p)

    p = _copy(good, d / "json_dwi")
    Path(str(d / "json_dwi") + ".json").write_text("{ not json")
    case("json", "json_dwi.json", "unreadable JSON sidecar", nifti=p)

    p = _copy(good, d / "voxel_dwi")
    img = nib.load(str(p))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([40.0, 2, 2, 1])), str(p))
    case("voxel", "voxel_dwi.nii.gz", "absurd voxel size", nifti=p)

    case("missing", "nowhere_dwi.nii.gz", "file not found", nifti=d / "nowhere_dwi.nii.gz")

    (d / "emptydicom").mkdir(parents=True)
    case("emptydicom", "emptydicom", "DICOM folder is empty", dicom=d / "emptydicom")

    _dicom(d / "nodiff", good, key="nodiff", strip_diffusion=True)
    case("nodiffusion", "nodiff", "no diffusion series", dicom=d / "nodiff")

    _dicom(d / "twoseries" / "run1", good, key="a", description="DTI_AP")
    _dicom(d / "twoseries" / "run2", good, key="b", description="DTI_PA")
    case("twoseries", "twoseries", "series", dicom=d / "twoseries")

    entries.append({"id": "sub-good", "session": None, "nifti": str(good) + ".nii.gz"})
    return entries, expect


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    entries, expect = build_cases(root)
    manifest = root / "study.json"
    manifest.write_text(json.dumps({"name": "bad inputs", "options": {"denoise_method": "none", "generate_pdf": False},
                                    "subjects": entries}))
    out = root / "out"
    study = load_study(manifest=manifest, output_dir=out)
    code = run_doit(study, ["run"] + [f"{s.key}:ingest" for s in study.subjects])
    return out, expect, code


def test_every_bad_session_fails_with_one_clear_line_and_the_good_one_runs(corpus_run):
    out, expect, code = corpus_run
    assert code == 0  # only ingest was asked for; failures are recorded, not raised
    good = json.loads((out / "sub-good/steps/sub-good_step-ingest.json").read_text())
    assert good["status"] == "success"
    messages = {}
    for key, (name, cause) in expect.items():
        record = json.loads((out / key / "steps" / f"{key}_step-ingest.json").read_text())
        assert record["status"] == "failed", key
        message = record["error"]["message"]
        messages[key] = message
        assert "\n" not in message
        assert name in message, f"{key}: {message}"
        assert cause.lower() in message.lower(), f"{key}: {message}"
        assert record["error"]["category"] == "input", f"{key}: {record['error']}"
        assert "Traceback" in (out / "logs" / f"{key}_error.log").read_text()
    assert len(messages) >= 18


@pytest.mark.parametrize("content, fragment", [
    ("{ nope", "invalid JSON at line 1"),
    ('{"subjects": [{"id": "sub-1", "session": 1, "nifti": "x"}]}', "subjects[0].session: 1 is not of type"),
    ('{"subjects": [{"id": "sub-1", "session": null, "nifti": "x"}, {"id": "1", "session": null, "nifti": "y"}]}',
     "subjects[1]: duplicate of subjects[0]"),
    ('{"subjects": [{"id": "sub-../x", "session": null, "nifti": "x"}]}', "subjects[0].id: 'sub-../x' is not a BIDS label"),
    ('{"subjects": [{"id": "sub-1", "session": "ses-a/b", "nifti": "x"}]}', "subjects[0].session: 'ses-a/b' is not a BIDS label"),
])
def test_study_level_bad_input_refuses_with_json_path(tmp_path, content, fragment):
    m = tmp_path / "m.json"
    m.write_text(content)
    with pytest.raises(ManifestError) as info:
        load_manifest(m)
    assert fragment in str(info.value) and "m.json" in str(info.value) and "\n" not in str(info.value)


def test_output_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    from cstbatch.cli import main
    good = tmp_path / "d" / "g_dwi"
    write_tiny_dwi(good)
    (tmp_path / "m.json").write_text(json.dumps({"subjects": [{"id": "sub-1", "session": None, "nifti": "d/g_dwi.nii.gz"}]}))
    (tmp_path / "blocked").write_text("a file where the output folder should be")
    code = main(["--manifest", str(tmp_path / "m.json"), str(tmp_path / "blocked"), "participant"])
    assert code == 2
    assert "blocked: output folder cannot be written" in capsys.readouterr().err


def test_disk_full_during_a_step_is_a_system_failure(tmp_path, monkeypatch):
    """Simulate ENOSPC at the file-system boundary: the step fails cleanly, nothing half-written."""
    import errno
    import os

    from cstbatch import atomic
    from cstbatch.engine.step_runner import run_step
    from cstbatch.study.spec import SubjectSpec, spec_to_job

    good = write_tiny_dwi(tmp_path / "g_dwi")
    spec = SubjectSpec("sub-1", None, good, "nifti", bval=tmp_path / "g_dwi.bval", bvec=tmp_path / "g_dwi.bvec")
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith(".nii.gz"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full)
    from cstbatch.steps import ingest as ingest_mod
    monkeypatch.setattr(ingest_mod.os, "replace", full)
    assert run_step("ingest", spec_to_job(spec, tmp_path / "out", None)) is True
    record = json.loads((tmp_path / "out/sub-1/steps/sub-1_step-ingest.json").read_text())
    assert record["status"] == "failed" and record["error"]["category"] == "system"
    assert "No space left on device" in record["error"]["message"] and "desc-preproc_dwi.nii.gz" in record["error"]["message"]
    assert not (tmp_path / "out/sub-1/dwi/sub-1_desc-preproc_dwi.nii.gz").exists()
