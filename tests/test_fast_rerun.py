"""The no-op fast path (cstbatch.engine.fingerprint): a complete study's rerun says "nothing to do"
without doit, and every change doit would act on falls through to doit, which does the work."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from cstbatch.engine import fingerprint, runner
from cstbatch.cli import main
from cstbatch.engine.state import RunLock, ShardedJsonDB
from cstbatch.study import load_study
from conftest import write_tiny_dwi

ROOT = Path(__file__).resolve().parents[1]
NOTHING = re.compile(r"^cstbatch: all 19 tasks up to date, nothing to do \(\d+\.\d s\)$", re.M)

LOCAL_PLUGIN = """
from cstbatch.hookspecs import hookimpl

@hookimpl
def register_denoisers(register):
    register("unused_denoiser", lambda data, gtab, options: data, version="{version}")
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A two-session study (real steps) run to completion once for the whole module."""
    root = tmp_path_factory.mktemp("fast")
    for i in range(2):
        write_tiny_dwi(root / "data" / f"s{i}_dwi", seed=i)
    (root / "plugins").mkdir()
    (root / "plugins" / "local.py").write_text(LOCAL_PLUGIN.format(version="1"))
    (root / "study.json").write_text(json.dumps({"name": "tiny", "options": {"denoise_method": "none", "generate_pdf": False}, "subjects": [
        {"id": "sub-01", "session": "ses-01", "nifti": "data/s0_dwi.nii.gz"},
        {"id": "sub-02", "session": None, "nifti": "data/s1_dwi.nii.gz"}]}))
    return root


class Runs:
    """Runs ``cstbatch --manifest study.json out participant`` in-process, noting whether doit ran."""

    def __init__(self, root: Path, capsys, monkeypatch):
        self.root, self.capsys = root, capsys
        self.doit_calls: list[list[str]] = []
        real = runner.run_doit

        def spy(study, argv, *args, **kwargs):
            self.doit_calls.append(list(argv))
            return real(study, argv, *args, **kwargs)

        monkeypatch.setattr(runner, "run_doit", spy)
        monkeypatch.chdir(root)

    def __call__(self, *extra: str) -> tuple[int, str, bool]:
        """(exit code, stdout, whether doit was called)."""
        self.capsys.readouterr()
        before = len(self.doit_calls)
        code = main(["--manifest", str(self.root / "study.json"), str(self.root / "out"), "participant",
                     "--plugins-dir", str(self.root / "plugins"), *extra])
        return code, self.capsys.readouterr().out, len(self.doit_calls) > before


@pytest.fixture
def run(root, capsys, monkeypatch) -> Runs:
    runs = Runs(root, capsys, monkeypatch)
    code, out, _ = runs()  # complete (fast when the previous test left it so)
    assert code == 0, out
    return runs


def executed(output: str) -> list[str]:
    return re.findall(r"^\.  (\S+)", output, flags=re.M)


def records(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_ino)
            for p in sorted((root / "out").rglob("*_step-*.json"))}


def fast(run: Runs) -> str:
    """Run again and assert the fast path answered (no doit, no record touched)."""
    before = records(run.root)
    code, out, doit = run()
    assert code == 0 and not doit, out
    assert NOTHING.search(out), out
    assert records(run.root) == before
    return out


def test_complete_run_then_fast_path_and_doit_agrees(run):
    assert (run.root / "out/.cstbatch/noop-fingerprint").exists()
    out = fast(run)
    assert out.strip().splitlines()[-1].startswith("cstbatch: all 19 tasks up to date, nothing to do")
    # doit itself, asked directly, finds the same: nothing to do, 19 tasks
    study = load_study(manifest=run.root / "study.json", output_dir=run.root / "out", plugins_dir=run.root / "plugins")
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert runner.run_doit(study, ["run"]) == 0
    assert NOTHING.search(buf.getvalue()) and executed(buf.getvalue()) == [], buf.getvalue()


def test_touched_input_falls_through_and_doit_checks_its_content(run):
    data = run.root / "data/s1_dwi.bvec"
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    code, out, doit = run()
    assert code == 0 and doit and executed(out) == [], out  # same content: nothing to redo
    fast(run)
    data.write_text(data.read_text().replace("0.", "1.", 1))  # same size, new content
    code, out, doit = run()
    assert code == 0 and doit
    ran = executed(out)
    assert "sub-02:ingest" in ran and not any(t.startswith("sub-01_ses-01") for t in ran), out
    fast(run)


def test_changed_option_falls_through_and_reruns_only_what_it_determines(run):
    manifest = run.root / "study.json"
    original = manifest.read_text()
    data = json.loads(original)
    data["subjects"][0]["options"] = {"report_convention": "neurological"}
    manifest.write_text(json.dumps(data))
    try:
        code, out, doit = run()
        assert code == 0 and doit
        assert executed(out) == ["sub-01_ses-01:report", "aggregate"], out
        fast(run)
    finally:
        manifest.write_text(original)
    code, out, doit = run()  # back to the old option: that is a change too
    assert doit and executed(out) == ["sub-01_ses-01:report", "aggregate"], out


def test_deleted_output_falls_through_and_is_rewritten(run):
    report = run.root / "out/sub-02/metrics/sub-02_report.html"
    report.unlink()
    code, out, doit = run()
    assert code == 0 and doit
    assert executed(out) == ["sub-02:report", "aggregate"], out
    assert report.exists()
    fast(run)


def test_forgotten_doit_state_falls_through(run):
    from doit.dependency import JSONCodec

    ShardedJsonDB(str(run.root / "out/.cstbatch/state"), JSONCodec()).remove("aggregate")  # `doit forget aggregate`
    code, out, doit = run()
    assert code == 0 and doit and executed(out) == ["aggregate"], out
    fast(run)


def test_failed_session_falls_through_every_time_and_is_retried(run):
    manifest = run.root / "study.json"
    original = manifest.read_text()
    data = json.loads(original)
    data["subjects"].append({"id": "sub-03", "session": None, "nifti": "data/absent_dwi.nii.gz"})
    manifest.write_text(json.dumps(data))
    try:
        code, out, doit = run()
        assert code == 1 and doit and "sub-03:ingest" in executed(out), out
        assert not (run.root / "out/.cstbatch/noop-fingerprint").exists()
        code, out, doit = run()  # a failed session is never "nothing to do"
        assert code == 1 and doit, out
        ran = executed(out)
        assert "sub-03:ingest" in ran and not any(t.startswith(("sub-01", "sub-02:")) for t in ran), out
    finally:
        manifest.write_text(original)
    code, out, doit = run()
    assert code == 0 and doit and executed(out) == ["aggregate"], out
    fast(run)


def test_plugin_version_bump_falls_through_then_fast_again(run):
    plugin = run.root / "plugins/local.py"
    plugin.write_text(LOCAL_PLUGIN.format(version="2"))
    from cstbatch.plugins import _cached
    _cached.cache_clear()
    try:
        code, out, doit = run()
        assert code == 0 and doit and executed(out) == [], out  # doit: nothing uses it
        assert NOTHING.search(out)
        fast(run)
    finally:
        plugin.write_text(LOCAL_PLUGIN.format(version="1"))
        _cached.cache_clear()


def test_doit_run_through_dodo_saves_the_fingerprint_the_command_uses(run):
    fingerprint.forget(run.root / "out")
    env = dict(os.environ, CSTBATCH_PLUGINS_DIR=str(run.root / "plugins"))
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), "-d", str(run.root), "run",
                           f"manifest={run.root / 'study.json'}", f"out={run.root / 'out'}"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and NOTHING.search(proc.stdout), proc.stdout + proc.stderr
    assert (run.root / "out/.cstbatch/noop-fingerprint").exists()
    fast(run)


@pytest.mark.parametrize("extra, doit", [([], False), (["--dry-run"], True), (["--stop-on-first-crash"], True),
                                         (["--participant-label", "01"], True), (["-v"], False)])
def test_only_a_plain_full_run_takes_the_fast_path(run, monkeypatch, extra, doit):
    calls = []
    monkeypatch.setattr(runner, "run_doit", lambda study, argv, *a, **k: calls.append(argv) or 0)
    code = main(["--manifest", str(run.root / "study.json"), str(run.root / "out"), "participant",
                 "--plugins-dir", str(run.root / "plugins"), *extra])
    assert code == 0 and len(calls) == int(doit)


def test_group_level_goes_to_doit(run, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run_doit", lambda study, argv, *a, **k: calls.append(argv) or 0)
    assert main(["--manifest", str(run.root / "study.json"), str(run.root / "out"), "group",
                 "--plugins-dir", str(run.root / "plugins")]) == 0
    assert calls and calls[0][-1] == "aggregate"


def test_held_run_lock_goes_to_doit(run):
    study = load_study(manifest=run.root / "study.json", output_dir=run.root / "out", plugins_dir=run.root / "plugins")
    assert fingerprint.nothing_to_do(study, out=io.StringIO())
    lock = RunLock(run.root / "out/.cstbatch")
    lock.acquire()
    try:
        assert not fingerprint.nothing_to_do(study, out=io.StringIO())
    finally:
        lock.release()
