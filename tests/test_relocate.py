"""Runs as people really run them: through the installed command without an activated
environment (PATH without the interpreter's bin folder), and after moving or copying the output
folder, the study, or both (``shutil.copytree`` without keeping times, as ``cp -r`` does)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cstbatch.engine.signatures import input_stats, inputs_unchanged
from cstbatch.engine.state import ShardedJsonDB
from cstbatch.outputs.records import content_digest, input_sha256, write_record
from conftest import write_tiny_dicom, write_tiny_dwi

ROOT = Path(__file__).resolve().parents[1]
#: no venv/pyenv bin folder: dcm2niix must be found from the installation itself
BARE_PATH = "/usr/bin:/bin"
DICOM_KEY = "sub-02_ses-01"
ALL_TASKS = 19  # 2 sessions × 9 steps + aggregation


def make_study(root: Path) -> Path:
    """One NIfTI session and one DICOM session; the manifest names them relative to itself."""
    write_tiny_dwi(root / "data" / "s1_dwi", seed=1)
    write_tiny_dicom(root / "dicom" / "sub-02", seed=2, key="reloc2")
    manifest = root / "study.json"
    manifest.write_text(json.dumps({"name": "relocate", "options": {"denoise_method": "none", "generate_pdf": False},
                                    "subjects": [{"id": "sub-01", "session": None, "nifti": "data/s1_dwi.nii.gz"},
                                                 {"id": "sub-02", "session": "ses-01", "dicom": "dicom/sub-02"}]}))
    return manifest


def cstbatch(manifest: Path, out: Path) -> tuple[int, list[str], str]:
    """``python -m cstbatch`` by the interpreter's full path with a bare PATH (exit code, tasks run, output)."""
    env = dict(os.environ, PATH=BARE_PATH, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "cstbatch", "--manifest", str(manifest), str(out), "participant"],
                          capture_output=True, text=True, env=env, cwd=manifest.parent)
    return proc.returncode, re.findall(r"^\.  (\S+)", proc.stdout, re.M), proc.stdout + proc.stderr


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy)  # new mtimes, as cp -r
    return dst


def outputs(out: Path) -> dict[str, str]:
    """Content digest of every file of the derivative dataset (JSON without volatile fields)."""
    return {p.relative_to(out).as_posix(): content_digest(p) for p in sorted(out.rglob("*"))
            if p.is_file() and not p.relative_to(out).as_posix().startswith((".cstbatch/", "logs/"))}


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """The study processed once (bare PATH: the DICOM session must convert)."""
    base = tmp_path_factory.mktemp("reloc")
    manifest = make_study(base / "A" / "study")
    code, ran, text = cstbatch(manifest, base / "A" / "out")
    assert code == 0 and len(ran) == ALL_TASKS, text
    return base


def test_dicom_session_converts_without_the_environment_on_path(processed):
    record = json.loads((processed / "A/out/sub-02/ses-01/steps/sub-02_ses-01_step-ingest.json").read_text())
    assert record["status"] == "success" and record["info"]["input_type"] == "dicom"


def test_moved_and_copied_output_and_study_rerun_nothing(processed):
    base = processed
    out = copy(base / "A/out", base / "B/out")                      # the output copied elsewhere
    code, ran, text = cstbatch(base / "A/study/study.json", out)
    assert code == 0 and ran == [], text
    assert re.search(rf"all {ALL_TASKS} tasks up to date", text), text
    study = copy(base / "A/study", base / "C/renamed-study")        # the study copied and renamed
    code, ran, text = cstbatch(study / "study.json", out)
    assert code == 0 and ran == [], text
    shutil.move(str(base / "B"), str(base / "D"))                    # both moved
    code, ran, text = cstbatch(study / "study.json", base / "D/out")
    assert code == 0 and ran == [], text

    # the bar: a copy in a new folder, one DICOM ingest record deleted → that session and the
    # aggregation run, nothing else, and nothing fails
    out = copy(base / "D/out", base / "E/out")
    (out / f"sub-02/ses-01/steps/{DICOM_KEY}_step-ingest.json").unlink()
    code, ran, text = cstbatch(study / "study.json", out)
    assert code == 0, text
    assert sorted(ran) == sorted([f"{DICOM_KEY}:{s}" for s in ("ingest", "denoise", "mask", "model", "track",
                                                                "register", "extract", "metrics", "report")]
                                 + ["aggregate"]), text
    code, ran, text = cstbatch(study / "study.json", out)
    assert code == 0 and ran == [], text


def test_edited_input_still_reruns_after_a_copy(processed):
    base = processed
    study = copy(base / "A/study", base / "F/study")
    out = copy(base / "A/out", base / "F/out")
    bval = study / "data/s1_dwi.bval"
    bval.write_text(bval.read_text().replace("1000", "1001", 1))   # same size, other content
    code, ran, text = cstbatch(study / "study.json", out)
    assert code == 0 and "sub-01:ingest" in ran and not any(t.startswith(DICOM_KEY) for t in ran), text


def test_two_clean_runs_into_two_folders_give_identical_files(processed):
    base = processed
    study = copy(base / "A/study", base / "G/elsewhere/study")
    code, ran, text = cstbatch(study / "study.json", base / "G/out")
    assert code == 0 and len(ran) == ALL_TASKS, text
    first, second = outputs(base / "A/out"), outputs(base / "G/out")
    assert first == second
    for out in (base / "A/out", base / "G/out"):
        for path in out.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".html", ".csv", ".tsv") and "/logs/" not in str(path):
                text = path.read_text(encoding="utf-8", errors="replace")
                assert str(base) not in text and ".cstbatch/work" not in text, path
    ingest = json.loads((base / f"G/out/sub-02/ses-01/steps/{DICOM_KEY}_step-ingest.json").read_text())
    assert list(ingest["info"]["inputs"]) == ["dicom/sub-02"]
    assert ingest["info"]["inputs"]["dicom/sub-02"] == input_sha256(study / "dicom/sub-02")
    metrics = json.loads((base / "G/out/sub-01/metrics/sub-01_metrics.json").read_text())
    assert metrics["provenance"]["input_sha256"] == {
        f"data/s1_dwi{ext}": input_sha256(study / f"data/s1_dwi{ext}") for ext in (".nii.gz", ".bval", ".bvec")}


# -- the pieces, without processing --------------------------------------------------------------

class Codec:
    encode = staticmethod(json.dumps)
    decode = staticmethod(json.loads)


def test_state_keys_are_relative_to_the_output_folder(tmp_path):
    old = tmp_path / "old/out"
    db = ShardedJsonDB(str(old / ".cstbatch/state"), Codec())
    record = str(old / "sub-01/steps/sub-01_step-ingest.json")
    db.set("sub-01:mask", "_values_:", {})
    db.set("sub-01:mask", record, (1.5, 10, "abc"))
    db.set("sub-01:mask", "/elsewhere/x.json", (2.5, 3, "def"))      # outside the folder: as given
    db.set("sub-01:mask", "deps:", (record, "/elsewhere/x.json"))
    stored = json.loads((old / ".cstbatch/state/sub-01.json").read_text())["sub-01:mask"]
    assert stored["<out>/sub-01/steps/sub-01_step-ingest.json"] == [1.5, 10, "abc"]
    assert stored["deps:"] == ["<out>/sub-01/steps/sub-01_step-ingest.json", "/elsewhere/x.json"]
    assert str(tmp_path) not in json.dumps(stored)

    new = tmp_path / "new/place"
    shutil.copytree(old, new)
    moved = ShardedJsonDB(str(new / ".cstbatch/state"), Codec())
    here = str(new / "sub-01/steps/sub-01_step-ingest.json")
    assert moved.get("sub-01:mask", here) == [1.5, 10, "abc"]
    assert moved.get("sub-01:mask", "deps:") == [here, "/elsewhere/x.json"]
    assert moved.get("sub-01:mask", record) is None                  # the old location means nothing here
    # a file_dep dropped from the task: its state goes with the next save
    moved.set("sub-01:mask", "deps:", (here,))
    assert "/elsewhere/x.json" not in json.loads((new / ".cstbatch/state/sub-01.json").read_text())["sub-01:mask"]


def test_state_written_with_absolute_keys_is_read_as_relative(tmp_path):
    out = tmp_path / "out"
    record = str(out / "sub-01/steps/sub-01_step-ingest.json")
    (out / ".cstbatch/state").mkdir(parents=True)
    (out / ".cstbatch/state/sub-01.json").write_text(json.dumps(
        {"sub-01:mask": {"_values_:": {}, record: [1.5, 10, "abc"], "deps:": [record]}}))  # (before issue 20)
    db = ShardedJsonDB(str(out / ".cstbatch/state"), Codec())
    assert db.get("sub-01:mask", record) == [1.5, 10, "abc"] and db.get("sub-01:mask", "deps:") == [record]


def test_state_read_from_inside_the_output_folder_keeps_its_keys(tmp_path, monkeypatch):
    """A SLURM element runs with the output folder as its working folder (--chdir): keys stored
    as <out>/… must not be taken for relative paths there (they became <out>/<out>/…, and every
    task after the first reran)."""
    out = tmp_path / "out"
    record = str(out / "sub-01/steps/sub-01_step-ingest.json")
    (out / ".cstbatch/state").mkdir(parents=True)
    db = ShardedJsonDB(str(out / ".cstbatch/state"), Codec())
    db.set("sub-01:mask", record, [1.5, 10, "abc"])
    db.set("sub-01:mask", "deps:", [record])
    db.dump()
    monkeypatch.chdir(out)
    again = ShardedJsonDB(str(out / ".cstbatch/state"), Codec())
    assert again.get("sub-01:mask", record) == [1.5, 10, "abc"] and again.get("sub-01:mask", "deps:") == [record]


class _Task:
    name = "sub-01:ingest"


class _DepManager:
    def __init__(self):
        self.saved = {}

    _get = None

    def _set(self, task_id, key, value):
        self.saved[(task_id, key)] = value


def test_inputs_checked_by_name_and_content_when_times_change(tmp_path, monkeypatch):
    from cstbatch.engine import signatures

    image = write_tiny_dwi(tmp_path / "study/data/s1_dwi", seed=1)
    inputs = [(f"data/s1_dwi{e}", tmp_path / f"study/data/s1_dwi{e}") for e in (".nii.gz", ".bval", ".bvec")]
    record = tmp_path / "out/step-ingest.json"
    write_record(record, {"status": "success", "info": {"inputs": {label: input_sha256(p) for label, p in inputs}}})
    values = {"_inputs": input_stats(inputs)}
    hashed = []
    monkeypatch.setattr(signatures, "input_sha256", lambda p: hashed.append(Path(p).name) or input_sha256(p))

    def check(values):
        check = inputs_unchanged(inputs, record)
        check.setup(_DepManager(), {})                                # as doit does before calling
        return check(_Task(), values), check.dep_manager.saved

    assert check(values) == (True, {}) and hashed == []              # same stats: no reading
    os.utime(image, ns=(0, 10**18))                                   # touched (or copied without times)
    ok, saved = check(values)
    assert ok and hashed == ["s1_dwi.nii.gz", "s1_dwi.bval", "s1_dwi.bvec"]
    assert saved[(_Task.name, "_values_:")]["_inputs"] == input_stats(inputs)  # refreshed: a stat next time
    hashed.clear()
    assert check({"_inputs": input_stats(inputs)}) == (True, {}) and hashed == []
    bvec = inputs[2][1]
    bvec.write_text(bvec.read_text().replace("0.", "1.", 1))          # same size, new content
    assert check(values)[0] is False
    renamed = [("data/renamed_dwi.nii.gz", inputs[0][1])] + inputs[1:]  # another name: rerun
    assert inputs_unchanged(renamed, record)(_Task(), values) is False


def test_state_and_record_from_before_still_count_as_up_to_date(tmp_path):
    """Upgrading reruns nothing: an ingest record naming inputs by absolute path and the old
    ``path:size:mtime`` text are matched by content (once)."""
    write_tiny_dwi(tmp_path / "study/data/s1_dwi", seed=1)
    inputs = [(f"data/s1_dwi{e}", tmp_path / f"study/data/s1_dwi{e}") for e in (".nii.gz", ".bval", ".bvec")]
    record = tmp_path / "out/step-ingest.json"
    write_record(record, {"status": "success", "info": {"inputs": {str(p): input_sha256(p) for _, p in inputs}}})
    old = {"_inputs": "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for _, p in inputs)}
    assert inputs_unchanged(inputs, record)(_Task(), old) is True
