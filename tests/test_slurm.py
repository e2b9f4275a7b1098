"""Cluster runs: ``cstbatch submit --slurm`` on a real single-node SLURM cluster, and ``cstbatch status``.

The cluster is the one named by ``SLURM_CONF`` (``.ci/run`` starts it with ``.ci/start_slurm.sh``),
or one this module starts itself when the SLURM daemons are installed; where neither works the
cluster test skips. The dry-run and status tests need no cluster.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from cstbatch.cli import main as cstbatch
from conftest import write_tiny_dwi

ROOT = Path(__file__).resolve().parents[1]
START_SLURM = ROOT / ".ci" / "start_slurm.sh"
KEYS = ["sub-01_ses-01", "sub-02_ses-01", "sub-03_ses-01"]


# -- helpers ----------------------------------------------------------------------------------

def make_study(root: Path, broken: bool = True, subjects=(1, 2, 3)) -> Path:
    """Sessions of tiny real DWI (sub-0N, ses-01); sub-03's .bval has one value too few when ``broken``."""
    entries = []
    for i in (n - 1 for n in subjects):
        write_tiny_dwi(root / "data" / f"s{i + 1}_dwi", seed=i)
        entries.append({"id": f"sub-0{i + 1}", "session": "ses-01", "nifti": f"data/s{i + 1}_dwi.nii.gz"})
    if broken:
        break_bval(root)
    manifest = root / "study.json"
    manifest.write_text(json.dumps({"name": "tiny cluster", "options": {"denoise_method": "none", "generate_pdf": False},
                                    "subjects": entries}))
    return manifest


def break_bval(root: Path) -> None:
    bval = root / "data" / "s3_dwi.bval"
    values = np.loadtxt(bval)
    np.savetxt(bval, values[:-1][None], fmt="%g")


def fix_bval(root: Path) -> None:
    write_tiny_dwi(root / "data" / "s3_dwi", seed=2)


def cli(*argv: str) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cstbatch([str(a) for a in argv])
    return code, buf.getvalue()


def status_of(out: Path) -> dict[str, dict]:
    code, text = cli("status", out, "--json")
    assert code == 0, text
    return {row["key"]: row for row in json.loads(text)}


def record(out: Path, key: str, step: str) -> dict:
    sub = key.split("_")[0]
    return json.loads((out / sub / "ses-01" / "steps" / f"{key}_step-{step}.json").read_text())


def record_times(out: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in out.glob("sub-*/ses-*/steps/*.json")}


# -- the cluster --------------------------------------------------------------------------------

def _sinfo_ok(env: dict) -> bool:
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return False
    try:
        proc = subprocess.run([sinfo, "-h", "-o", "%t"], capture_output=True, text=True, env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and any(s.startswith(("idle", "mix", "alloc")) for s in proc.stdout.split())


@pytest.fixture(scope="module")
def slurm():
    """SLURM_CONF of a working cluster (the environment's, or one started here and stopped after)."""
    if os.environ.get("SLURM_CONF") and _sinfo_ok(dict(os.environ)):
        yield os.environ["SLURM_CONF"]
        return
    if not (shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists()):
        pytest.skip("SLURM is not installed (.ci/start_slurm.sh installs it)")
    try:
        proc = subprocess.run(["bash", str(START_SLURM), "--no-install"], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("SLURM did not start within 180 s")
    if proc.returncode != 0:
        pytest.skip(f"SLURM cannot start here: {proc.stderr.strip()[-500:]}")
    conf = proc.stdout.strip().splitlines()[-1]
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        subprocess.run(["bash", str(START_SLURM), "--stop", conf], timeout=60)


def wait_for_jobs(job_ids: list[str], out: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"], capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.strip():
            return
        time.sleep(1)
    logs = "\n".join(f"== {p.name}\n{p.read_text()}" for p in sorted((out / "logs" / "slurm").rglob("*.out")))
    pytest.fail(f"jobs {job_ids} still queued/running after {timeout} s:\n{proc.stdout}\n{logs}")


def job_states(job_id: str) -> dict[str, str]:
    """Array task id (or 'job') → JobState, from ``scontrol -o show job`` (kept MinJobAge seconds)."""
    text = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    states = {}
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        states[fields.get("ArrayTaskId", "job")] = fields.get("JobState")
    return states


def submitted_ids(text: str) -> tuple[list[str], str]:
    arrays = re.findall(r"as array job (\d+)", text)
    aggregate = re.search(r"submitted aggregation job (\d+)", text)
    assert aggregate, text
    return arrays, aggregate.group(1)


# -- tests ------------------------------------------------------------------------------------------

def test_dry_run_prints_both_scripts_and_submits_nothing(tmp_path, default_limits):
    manifest = make_study(tmp_path)
    out = tmp_path / "out"
    code, text = cli("submit", "--slurm", out, "--manifest", manifest, "--dry-run", "--partition", "short",
                     "--time", "01:30:00", "--mem-per-job", "2G", "--cpus", "2", "--throttle", "5")
    assert code == 0, text
    assert f"3 of 3 sessions need work: {', '.join(KEYS)}" in text
    array, aggregate = text.split("# --- aggregate.sh")
    assert "# --- array-001.sh" in array and "array-002" not in array
    for line in ("#SBATCH --array=0-2%5", f"#SBATCH --output={out}/logs/slurm/0001/array-001/%A_%a.out",
                 "#SBATCH --partition=short",
                 "#SBATCH --time=01:30:00", "#SBATCH --mem=2G", "#SBATCH --cpus-per-task=2", f"#SBATCH --chdir={out}"):
        assert line in array.splitlines(), line
    assert re.search(r"^export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2", array, re.M)
    assert re.search(r"-m cstbatch\.cluster\.slurm run-session \S+/\.cstbatch/slurm/0001 "
                     r"\"\$\(\(0 \+ SLURM_ARRAY_TASK_ID\)\)\"$", array, re.M)
    assert "#SBATCH --dependency=afterany:<ARRAY_JOB_ID>" in aggregate.splitlines()
    assert f"#SBATCH --output={out}/logs/slurm/0001/aggregate-%j.out" in aggregate.splitlines()
    assert re.search(r"-m cstbatch\.cluster\.slurm aggregate \S+/\.cstbatch/slurm/0001$", aggregate, re.M)
    assert not (out / ".cstbatch" / "slurm").exists() and not (out / "logs").exists()


def test_status_and_resubmission_plan_after_a_local_run(tmp_path, default_limits):
    from cstbatch.engine.runner import run_doit
    from cstbatch.study import load_study

    manifest = make_study(tmp_path, subjects=(1, 3))  # one good session, one broken (keeps the run short)
    out = tmp_path / "out"
    out.mkdir()
    assert "no sessions found" in cli("status", out)[1]
    study = load_study(manifest=manifest, output_dir=out)
    with redirect_stdout(io.StringIO()):
        run_doit(study, ["run"], jobs=2)
    rows = status_of(out)
    assert list(rows) == [KEYS[0], KEYS[2]]
    assert [rows[k]["state"] for k in rows] == ["success", "failed"]
    assert rows[KEYS[0]]["last_step"] == "report"
    assert rows[KEYS[2]]["failed_step"] == "ingest" and "13 b-values" in rows[KEYS[2]]["error"]
    code, table = cli("status", out)
    assert re.search(r"^sub-03_ses-01\s+failed\s+-\s+.*ingest: input: .*s3_dwi.bval", table, re.M), table
    assert table.rstrip().endswith("2 sessions: 1 success, 1 failed, 0 running, 0 pending")

    # a live session lock (as an array element holds it) means running
    lock = out / ".cstbatch" / "locks" / KEYS[2] / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    assert status_of(out)[KEYS[2]]["state"] == "running"
    lock.unlink()

    # submitted and not started: pending; its job's log, old, and no new record: failed
    sub = out / ".cstbatch" / "slurm" / "0001"
    sub.mkdir(parents=True)
    arrays = [{"index": 1, "first": 0, "count": 1, "job_id": "998"}, {"index": 2, "first": 1, "count": 1, "job_id": "999"}]

    def submission(age: float) -> None:  # sub-03 is element 1: array 2's task 0
        (sub / "submission.json").write_text(json.dumps({"keys": [KEYS[0], KEYS[2]], "array_job_id": "998",
                                                         "arrays": arrays, "sessions_per_job": 1,
                                                         "submitted_epoch": time.time() - age}))
    submission(0)
    row = status_of(out)[KEYS[2]]
    assert row["state"] == "pending" and "array job 999_0" in row["detail"]
    job_log = out / "logs" / "slurm" / "0001" / "array-002" / "999_0.out"
    job_log.parent.mkdir(parents=True)
    job_log.write_text("python: not found\n")
    assert status_of(out)[KEYS[2]]["state"] == "pending"  # a fresh log: the job may be starting
    for path in (out / "sub-03").rglob("*_step-*.json"):  # records older than the submission …
        os.utime(path, (time.time() - 1000, time.time() - 1000))
    submission(300)
    os.utime(job_log, (time.time() - 200, time.time() - 200))  # … and a job that ran after it
    row = status_of(out)[KEYS[2]]
    assert row["state"] == "failed" and "ended without updating its records" in row["detail"]
    assert "logs/slurm/0001/array-002/999_0.out" in row["detail"]
    # a submission written before arrays were split: one array, logs/slurm-<job>_<i>.out
    (sub / "submission.json").write_text(json.dumps({"keys": [KEYS[2]], "array_job_id": "997",
                                                     "submitted_epoch": time.time() - 300}))
    old_log = out / "logs" / "slurm-997_0.out"
    old_log.write_text("python: not found\n")
    os.utime(old_log, (time.time() - 200, time.time() - 200))
    assert "see logs/slurm-997_0.out" in status_of(out)[KEYS[2]]["detail"]
    shutil.rmtree(sub.parent)
    shutil.rmtree(out / "logs" / "slurm")

    # only the failed session would be submitted again
    code, text = cli("submit", "--slurm", out, "--manifest", manifest, "--dry-run")
    assert code == 0 and "1 of 2 sessions need work: sub-03_ses-01" in text
    assert "#SBATCH --array=0-0" in text.splitlines()
    assert "-m cstbatch.cluster.slurm run-session" in text and "array-002" not in text
    # a changed option makes the finished session's chain out of date again
    code, text = cli("submit", "--slurm", out, "--manifest", manifest, "--dry-run",
                     "--participant-label", "01", "--option", "track_step_size=0.75")
    assert "1 of 1 sessions need work: sub-01_ses-01" in text


def test_slurm_arrays_failure_aggregation_and_resubmission(tmp_path, slurm):
    from cstbatch.cluster.arrays import slurm_limits

    manifest = make_study(tmp_path, broken=True)
    out = tmp_path / "out"
    # the test cluster's MaxArraySize is 3 (.ci/start_slurm.sh): arrays of at most 2 elements
    limits = slurm_limits()
    assert (limits.max_array_size, limits.source) == (3, "scontrol show config"), limits

    # 1. first submission: three sessions in two arrays (2 + 1), one broken; the aggregation after both
    code, text = cli("submit", "--slurm", out, "--manifest", manifest, "--throttle", "2", "--time", "00:10:00",
                     "--mem-per-job", "2G")
    assert code == 0, text
    arrays, aggregate_id = submitted_ids(text)
    assert len(arrays) == 2 and "3 of 3 sessions need work" in text, text
    sub = out / ".cstbatch" / "slurm" / "0001"
    assert json.loads((sub / "keys.json").read_text()) == KEYS
    assert "#SBATCH --array=0-1%2" in (sub / "array-001.sh").read_text().splitlines()
    assert "#SBATCH --array=0-0%2" in (sub / "array-002.sh").read_text().splitlines()
    assert f"#SBATCH --dependency=afterany:{arrays[0]}" in (sub / "array-002.sh").read_text()  # throttle: chained
    saved = json.loads((sub / "study.json").read_text())
    assert [s["options"]["denoise_method"] for s in saved["sessions"]] == ["none"] * 3
    assert all(Path(s["input_path"]).is_absolute() for s in saved["sessions"])
    assert f"#SBATCH --dependency=afterany:{arrays[0]}:{arrays[1]}" in (sub / "aggregate.sh").read_text()
    # right after submitting, nothing has finished: every session is queued or running
    assert {r["state"] for r in status_of(out).values()} <= {"pending", "running"}

    wait_for_jobs([*arrays, aggregate_id], out)
    assert job_states(arrays[0]) == {"0": "COMPLETED", "1": "COMPLETED"}, job_states(arrays[0])
    assert job_states(arrays[1]) == {"0": "FAILED"}, job_states(arrays[1])
    assert record(out, KEYS[2], "ingest")["status"] == "failed"
    assert "b-values" in record(out, KEYS[2], "ingest")["error"]["message"]
    for key in KEYS[:2]:
        assert record(out, key, "report")["status"] == "success"
    logs = out / "logs" / "slurm" / "0001"
    assert f"cstbatch: {KEYS[2]}: failed at ingest" in (logs / "array-002" / f"{arrays[1]}_0.out").read_text()
    assert f"cstbatch: {KEYS[1]}: success" in (logs / "array-001" / f"{arrays[0]}_1.out").read_text()
    assert len(list(logs.glob("aggregate-*.out"))) == 1
    summary_path = out / "batch_summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["totals"]["success"] == 2 and summary["totals"]["failed"] == 1
    assert summary_path.stat().st_mtime >= max(record_times(out).values())  # aggregated after every element
    rows = status_of(out)
    assert [rows[k]["state"] for k in KEYS] == ["success", "success", "failed"]
    assert not any((out / ".cstbatch" / "locks").glob("*/lock"))  # every element released its lock

    # 2. fix the input and lose sub-02's last record (as a job killed at the end would); resubmit
    # with two sessions per element: one element runs both, then the aggregation again
    fix_bval(tmp_path)
    (out / "sub-02" / "ses-01" / "steps" / f"{KEYS[1]}_step-report.json").unlink()
    before = record_times(out)
    summary_time = summary_path.stat().st_mtime
    code, text = cli("submit", "--slurm", out, "--manifest", manifest, "--sessions-per-job", "2")
    assert code == 0, text
    assert "2 of 3 sessions need work: sub-02_ses-01, sub-03_ses-01" in text
    arrays, aggregate_id = submitted_ids(text)
    sub = out / ".cstbatch" / "slurm" / "0002"
    assert len(arrays) == 1 and json.loads((sub / "keys.json").read_text()) == KEYS[1:]
    assert "#SBATCH --array=0-0" in (sub / "array-001.sh").read_text().splitlines()
    wait_for_jobs([*arrays, aggregate_id], out)
    assert job_states(arrays[0]) == {"0": "COMPLETED"}
    assert job_states(aggregate_id) == {"job": "COMPLETED"}
    element_log = (out / "logs" / "slurm" / "0002" / "array-001" / f"{arrays[0]}_0.out").read_text()
    assert element_log.index(f"{KEYS[1]}: success") < element_log.index(f"{KEYS[2]}: success")
    after = record_times(out)
    changed = {Path(p).name.split("_step-")[0] for p in after if after[p] != before.get(p)}
    assert changed == {KEYS[1], KEYS[2]}
    assert {Path(p).name for p in after if after[p] != before.get(p) and KEYS[1] in p} == \
        {f"{KEYS[1]}_step-report.json"}  # only the lost step reran
    summary = json.loads(summary_path.read_text())
    assert summary_path.stat().st_mtime > summary_time
    assert summary["totals"]["success"] == 3 and summary["totals"]["failed"] == 0
    assert {r["state"] for r in status_of(out).values()} == {"success"}

    # 3. nothing left to do: nothing is submitted
    code, text = cli("submit", "--slurm", out, "--manifest", manifest)
    assert code == 0 and "0 of 3 sessions need work" in text and "nothing to submit" in text


def test_array_element_converts_dicom_without_the_environment_on_path(tmp_path, monkeypatch):
    """The array script runs the venv's python by full path with the job's PATH, where the venv
    is not activated: a DICOM session must still find dcm2niix (from the installation). Runs the
    element's script itself with bash, as SLURM would (no cluster needed); sbatch, the one call
    to SLURM, is a stand-in that prints a job id."""
    from conftest import write_tiny_dicom

    write_tiny_dicom(tmp_path / "dicom" / "sub-04", seed=4, key="slurm4")
    manifest = tmp_path / "study.json"
    manifest.write_text(json.dumps({"name": "dicom on a cluster", "options": {"denoise_method": "none", "generate_pdf": False},
                                    "subjects": [{"id": "sub-04", "session": "ses-01", "dicom": "dicom/sub-04"}]}))
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho 4242\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    out = tmp_path / "out"
    code, text = cli("submit", "--slurm", out, "--manifest", manifest)
    assert code == 0 and "submitted elements 0-0 as array job 4242" in text, text
    script = out / ".cstbatch/slurm/0001/array-001.sh"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": os.environ.get("HOME", "/tmp"),
           "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "4242"}
    proc = subprocess.run(["bash", str(script)], cwd=out, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sub-04_ses-01: success" in proc.stdout, proc.stdout
    ingest = record(out, "sub-04_ses-01", "ingest")
    assert ingest["status"] == "success" and list(ingest["info"]["inputs"]) == ["dicom/sub-04"]
