"""Large submissions: sessions cut into job arrays SLURM accepts, packing, log folders.

No cluster needed: the cluster's limits are a system boundary, replaced here by fixed values
(``tests/test_slurm.py`` submits to a real cluster whose MaxArraySize is set low).
"""
from __future__ import annotations

import json
import re

import pytest
from conftest import write_empty_manifest

from cstbatch.cluster import arrays as arrays_mod
from cstbatch.cluster import slurm
from cstbatch.cluster.arrays import SlurmLimits, array_of_element, element_keys, parse_config, plan_arrays
from cstbatch.errors import CstBatchError
from test_slurm import cli

SCONTROL = """Configuration data as of 2026-12-02T12:00:00
AccountingStorageType   = (null)
MaxArraySize            = 3
MaxJobCount             = 10000
MaxStepCount            = 40000
SLURM_VERSION           = 22.05.8
"""


def test_scontrol_config_is_parsed():
    config = parse_config(SCONTROL)
    assert config["MaxArraySize"] == "3" and config["MaxJobCount"] == "10000"
    assert config["SLURM_VERSION"] == "22.05.8"


def test_limits_fall_back_to_slurm_defaults_without_scontrol(monkeypatch):
    monkeypatch.setattr(arrays_mod.shutil, "which", lambda name: None)
    assert arrays_mod.slurm_limits() == SlurmLimits(1001, 10000, "SLURM defaults")


def test_twenty_thousand_sessions_make_twenty_arrays_of_1000():
    arrays = plan_arrays(20000, 1, SlurmLimits())
    assert [a.count for a in arrays] == [1000] * 20
    assert [a.first for a in arrays] == list(range(0, 20000, 1000))
    assert [a.name for a in arrays[:2]] == ["array-001", "array-002"]
    # packing 8 sessions per element: 2500 elements
    packed = plan_arrays(20000, 8, SlurmLimits())
    assert [a.count for a in packed] == [1000, 1000, 500]
    keys = [f"k{i}" for i in range(20003)]
    assert element_keys(keys, 8, 2500) == ["k20000", "k20001", "k20002"]
    assert array_of_element(packed, 2499) == (packed[2], 499)
    assert array_of_element(packed, 2500) is None


def test_limits_that_cannot_be_met_are_refused():
    with pytest.raises(CstBatchError, match="MaxJobCount .*--sessions-per-job 3 or more"):
        plan_arrays(20000, 1, SlurmLimits(1001, 10))
    assert len(plan_arrays(20000, 3, SlurmLimits(1001, 10))) == 7
    with pytest.raises(CstBatchError, match="--array-size 2000 is above .*MaxArraySize 1001"):
        plan_arrays(10, 1, SlurmLimits(), array_size=2000)
    with pytest.raises(CstBatchError, match="--sessions-per-job must be at least 1"):
        plan_arrays(10, 0, SlurmLimits())


def _manifest(root, n):
    return write_empty_manifest(root, n)


def test_dry_run_splits_into_arrays_packs_sessions_and_chains_throttled_arrays(tmp_path, default_limits):
    manifest = _manifest(tmp_path, 7)
    out = tmp_path / "out"
    code, text = cli("submit", "--slurm", out, "--manifest", manifest, "--dry-run", "--array-size", "2",
                     "--sessions-per-job", "2", "--throttle", "3")
    assert code == 0, text
    assert "7 of 7 sessions need work" in text
    assert "7 session(s) in 2 arrays of at most 2 elements (2 session(s) per element)" in text
    first, rest = text.split("# --- array-002.sh")
    assert "#SBATCH --array=0-1%3" in first.splitlines()
    assert f"#SBATCH --output={out}/logs/slurm/0001/array-001/%A_%a.out" in first.splitlines()
    assert "--dependency" not in first
    assert re.search(r'run-session \S+/0001 "\$\(\(0 \+ SLURM_ARRAY_TASK_ID\)\)" --sessions-per-job 2$', first, re.M)
    # elements 0-1 hold sessions 1-4, elements 2-3 sessions 5-7; the second array waits for the first
    assert rest.startswith(": the same with --array=0-1%3, elements 2-3, after the previous array")
    aggregate = rest.split("# --- aggregate.sh")[1]
    assert "#SBATCH --dependency=afterany:<ARRAY_JOB_ID>:<ARRAY_JOB_ID>" in aggregate.splitlines()
    assert not out.exists() or not (out / ".cstbatch" / "slurm").exists()

    # the cluster's limit applies when --array-size is not given: 1000 per array by default
    code, text = cli("submit", "--slurm", out, "--manifest", manifest, "--dry-run")
    assert "#SBATCH --array=0-6" in text.splitlines() and "array-002" not in text


def test_an_element_runs_its_sessions_in_order_and_reports_the_worst(tmp_path, capsys):
    """``run-session`` of a packed element runs each of its sessions (here: 0-byte inputs, so
    ingest fails them cleanly) and no other, and exits non-zero."""
    from cstbatch.study import load_study

    manifest = _manifest(tmp_path, 5)
    out = tmp_path / "out"
    study = load_study(manifest=manifest, output_dir=out)
    sub = out / ".cstbatch" / "slurm" / "0001"
    sub.mkdir(parents=True)
    (sub / "study.json").write_text(json.dumps(slurm.study_to_saved(study)))
    (sub / "keys.json").write_text(json.dumps([s.key for s in study.subjects]))
    assert slurm.main(["run-session", str(sub), "1", "--sessions-per-job", "2"]) == 1
    said = capsys.readouterr().out
    assert re.findall(r"^cstbatch: (sub-\S+): failed at ingest", said, re.M) == ["sub-03_ses-01", "sub-04_ses-01"]
    ingested = sorted(p.name.split("_step-")[0] for p in out.glob("sub-*/ses-*/steps/*_step-ingest.json"))
    assert ingested == ["sub-03_ses-01", "sub-04_ses-01"]
    assert not any((out / ".cstbatch" / "locks").glob("*/lock"))
    assert slurm.main(["run-session", str(sub), "3", "--sessions-per-job", "2"]) == 2  # no such element
    assert "array element 3 outside 0..2" in capsys.readouterr().err


def test_the_saved_study_keeps_what_discovery_left_out(tmp_path):
    """The aggregation job rebuilds the study from the saved JSON: its summary must list the
    same left-out inputs as a local run, and its task must not look changed because of them."""
    from cstbatch.study import load_study

    dwi = tmp_path / "bids" / "sub-01" / "dwi"
    dwi.mkdir(parents=True)
    for stem, bvals in (("sub-01_dir-AP_dwi", "0 1000"), ("sub-01_dir-PA_dwi", "0 0")):
        for ext in (".nii.gz", ".bvec"):
            (dwi / f"{stem}{ext}").write_bytes(b"")
        (dwi / f"{stem}.bval").write_text(bvals + "\n")
    study = load_study(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out")
    again = slurm.study_from_saved(json.loads(json.dumps(slurm.study_to_saved(study))))
    assert again.skipped == study.skipped and study.skipped[0][0] == "sub-01/dwi/sub-01_dir-PA_dwi.nii.gz"
