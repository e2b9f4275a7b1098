"""Crash-safe state: per-task commits, kill -9 recovery, the run lock."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cstbatch.outputs.records import content_digest
from cstbatch.engine.state import RunLock, ShardedJsonDB
from conftest import write_tiny_dwi

ROOT = Path(__file__).resolve().parents[1]


class Codec:
    encode = staticmethod(json.dumps)
    decode = staticmethod(json.loads)


def test_sharded_backend_commits_each_write_per_session(tmp_path):
    db = ShardedJsonDB(str(tmp_path / "state"), Codec())
    db.set("sub-01_ses-01:denoise", "_values_:", {"a": 1})
    db.set("aggregate", "result:", "x")
    # on disk right away, without dump(): a kill now loses nothing
    assert json.loads((tmp_path / "state/sub-01_ses-01.json").read_text()) == {"sub-01_ses-01:denoise": {"_values_:": {"a": 1}}}
    assert "aggregate" in json.loads((tmp_path / "state/_study.json").read_text())
    again = ShardedJsonDB(str(tmp_path / "state"), Codec())
    assert again.get("sub-01_ses-01:denoise", "_values_:") == {"a": 1}
    again.remove("sub-01_ses-01:denoise")
    assert json.loads((tmp_path / "state/sub-01_ses-01.json").read_text()) == {}


def test_unchanged_values_are_not_rewritten_and_file_states_commit_with_deps(tmp_path):
    db = ShardedJsonDB(str(tmp_path / "state"), Codec())
    shard = tmp_path / "state/sub-01.json"
    db.set("sub-01:mask", "_values_:", {})
    db.set("sub-01:mask", "/out/step-ingest.json", (1.5, 10, "abc"))  # a file_dep state: pending
    assert json.loads(shard.read_text()) == {"sub-01:mask": {"_values_:": {}}}
    db.set("sub-01:mask", "deps:", ("/out/step-ingest.json",))          # doit's last key: commits
    assert json.loads(shard.read_text())["sub-01:mask"]["/out/step-ingest.json"] == [1.5, 10, "abc"]
    db.set("sub-01", "deps:", ())  # a session's group task (study shard)
    study = tmp_path / "state/_study.json"
    before = [(p.stat().st_mtime_ns, p.stat().st_ino) for p in (shard, study)]
    # doit stores tuples that read back as lists: the same value again is not a change
    again = ShardedJsonDB(str(tmp_path / "state"), Codec())
    again.set("sub-01:mask", "/out/step-ingest.json", (1.5, 10, "abc"))
    again.set("sub-01:mask", "deps:", ("/out/step-ingest.json",))
    again.set("sub-01", "deps:", ())
    assert [(p.stat().st_mtime_ns, p.stat().st_ino) for p in (shard, study)] == before
    # a state left pending is written by dump()
    again.set("sub-01:mask", "/out/step-ingest.json", (2.5, 10, "abc"))
    again.dump()
    assert json.loads(shard.read_text())["sub-01:mask"]["/out/step-ingest.json"] == [2.5, 10, "abc"]


def test_lock_refuses_second_run_naming_holder_and_clears_stale(tmp_path):
    first = RunLock(tmp_path / ".cstbatch")
    first.acquire()
    holder = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from cstbatch.engine.state import RunLock, LockError
        try:
            RunLock({str(tmp_path / '.cstbatch')!r}).acquire()
        except LockError as exc:
            print(exc)
        """)], capture_output=True, text=True, check=True).stdout
    assert f"pid {os.getpid()} on {socket.gethostname()}" in holder and "another cstbatch run" in holder
    first.release()
    assert not (tmp_path / ".cstbatch/lock").exists()
    # a lock left by a process that is gone is stale and cleared
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".cstbatch/lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                         "started": "2026-01-01T00:00:00+00:00"}))
    lock = RunLock(tmp_path / ".cstbatch")
    lock.acquire()
    assert lock.holder()["pid"] == os.getpid()
    lock.release()


HANG_PLUGIN = """
import os, time
from pathlib import Path
from cstbatch.hookspecs import hookimpl

@hookimpl
def register_denoisers(register):
    def hang_once(data, gtab, options):
        marker = os.environ.get("CSTBATCH_TEST_MARKER")
        if marker and not Path(marker).exists():
            Path(marker).write_text("in flight")
            time.sleep(120)
        return data
    register("hang_once", hang_once, version="1")
"""

RUN = """
import sys
from pathlib import Path
from cstbatch.engine.runner import run_doit
from cstbatch.study import load_study
study = load_study(manifest=Path(sys.argv[1]), output_dir=Path(sys.argv[2]), plugins_dir=Path(sys.argv[3]))
sys.exit(run_doit(study, ["run"] + sys.argv[4:]))
"""


def _study(tmp_path: Path, plugin: str = "hang", code: str = HANG_PLUGIN,
           second_options: dict | None = None) -> Path:
    """Two tiny sessions; sub-02 uses a local plugin file (``plugins/<plugin>.py``)."""
    for i in range(2):
        write_tiny_dwi(tmp_path / "data" / f"s{i}_dwi", seed=i)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / f"{plugin}.py").write_text(code)
    manifest = tmp_path / "study.json"
    manifest.write_text(json.dumps({"options": {"denoise_method": "none", "generate_pdf": False}, "subjects": [
        {"id": "sub-01", "session": None, "nifti": "data/s0_dwi.nii.gz"},
        {"id": "sub-02", "session": None, "nifti": "data/s1_dwi.nii.gz",
         "options": second_options or {"denoise_method": "hang_once"}}]}))
    return manifest


def _outputs(out: Path) -> dict[str, str]:
    """Every output file's content digest (JSON without the documented volatile fields)."""
    return {str(p.relative_to(out)): content_digest(p) for p in sorted(out.rglob("*"))
            if p.is_file() and not str(p.relative_to(out)).startswith((".cstbatch", "logs"))}


def test_kill_9_mid_run_repeats_only_the_in_flight_task(tmp_path):
    manifest = _study(tmp_path)
    targets = ["sub-01:track", "sub-02:track"]
    out = tmp_path / "out"
    env = dict(os.environ, CSTBATCH_TEST_MARKER=str(tmp_path / "marker"))
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(manifest), str(out), str(tmp_path / "plugins"), *targets],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "marker").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)            # kill -9 while sub-02:denoise is in flight
    proc.wait()
    assert (out / ".cstbatch/lock").exists()    # the killed run's lock is left behind (stale)
    rerun = subprocess.run([sys.executable, "-c", RUN, str(manifest), str(out), str(tmp_path / "plugins"), *targets],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    ran = [line[3:].strip() for line in rerun.stdout.splitlines() if line.startswith(".  ")]
    assert ran == ["sub-02:denoise", "sub-02:mask", "sub-02:model", "sub-02:register", "sub-02:track"], rerun.stdout
    assert not list(out.rglob(".tmp-*")) or all(".cstbatch" in str(p) for p in out.rglob(".tmp-*"))

    clean = tmp_path / "clean"
    subprocess.run([sys.executable, "-c", RUN, str(manifest), str(clean), str(tmp_path / "plugins"), *targets],
                   cwd=tmp_path, env=env, check=True, capture_output=True)
    assert _outputs(out) == _outputs(clean)


SLOW_PLUGIN = """
import time
from cstbatch.hookspecs import hookimpl

@hookimpl
def register_denoisers(register):
    def slow(data, gtab, options):
        time.sleep(30)
        return data
    register("slow", slow, version="1")
"""


def test_session_timeout_fails_the_session_with_category_timeout(tmp_path):
    from cstbatch.engine.runner import run_doit
    from cstbatch.study import load_study

    manifest = _study(tmp_path, "slow", SLOW_PLUGIN, {"denoise_method": "slow", "session_timeout": 2})
    study = load_study(manifest=manifest, output_dir=tmp_path / "out", plugins_dir=tmp_path / "plugins")
    start = time.monotonic()
    assert run_doit(study, ["run", "sub-01:denoise", "sub-02:denoise"]) == 0
    assert time.monotonic() - start < 25
    record = json.loads((tmp_path / "out/sub-02/steps/sub-02_step-denoise.json").read_text())
    assert record["status"] == "failed" and record["error"]["category"] == "timeout"
    assert "session_timeout=2" in record["error"]["message"]
    ok = json.loads((tmp_path / "out/sub-01/steps/sub-01_step-denoise.json").read_text())
    assert ok["status"] == "success"
