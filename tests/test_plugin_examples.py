"""The example plugins in plugins/, end to end, and what a plugin version does to reruns."""
from __future__ import annotations

import io
import json
import re
import shutil
from contextlib import redirect_stdout
from pathlib import Path

from cstbatch.engine.runner import run_doit
from cstbatch.study import load_study
from conftest import write_tiny_dwi

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def _study(tmp_path: Path) -> Path:
    for i in range(2):
        write_tiny_dwi(tmp_path / "data" / f"s{i}_dwi", seed=i)
    manifest = tmp_path / "study.json"
    manifest.write_text(json.dumps({"options": {"denoise_method": "none", "generate_pdf": False}, "subjects": [
        {"id": "sub-01", "session": None, "nifti": "data/s0_dwi.nii.gz"},
        {"id": "sub-02", "session": None, "nifti": "data/s1_dwi.nii.gz",
         "options": {"denoise_method": "gaussian", "reporter": "markdown"}}]}))
    return manifest


def _run(manifest, out, plugins, *targets) -> list[str]:
    study = load_study(manifest=manifest, output_dir=out, plugins_dir=plugins)
    buf = io.StringIO()
    with redirect_stdout(buf):
        run_doit(study, ["run", *targets])
    return re.findall(r"^\.  (\S+)", buf.getvalue(), flags=re.M)


def test_example_plugins_selected_per_session_in_the_manifest(tmp_path):
    manifest = _study(tmp_path)
    out = tmp_path / "out"
    _run(manifest, out, PLUGINS)
    denoise = json.loads((out / "sub-02/steps/sub-02_step-denoise.json").read_text())
    assert denoise["status"] == "success"
    assert denoise["implementation"]["name"] == "gaussian"
    assert denoise["implementation"]["source"].startswith("local file") and "gaussian_denoise.py" in denoise["implementation"]["source"]
    report = (out / "sub-02/metrics/sub-02_report.md").read_text()
    assert report.startswith("# CST report: sub-02") and "| fa_mean |" in report
    assert not (out / "sub-02/metrics/sub-02_report.html").exists()
    other = json.loads((out / "sub-01/steps/sub-01_step-denoise.json").read_text())
    assert other["implementation"]["name"] == "none" and (out / "sub-01/metrics/sub-01_report.html").exists()


def test_bumping_a_plugin_version_reruns_exactly_the_tasks_that_used_it(tmp_path):
    manifest = _study(tmp_path)
    plugins = tmp_path / "plugins"
    shutil.copytree(PLUGINS, plugins)
    out = tmp_path / "out"
    targets = ["sub-01:track", "sub-02:track"]
    _run(manifest, out, plugins, *targets)
    assert _run(manifest, out, plugins, *targets) == []
    source = plugins / "gaussian_denoise.py"
    source.write_text(source.read_text().replace('version="1"', 'version="2"'))
    from cstbatch.plugins import _cached
    _cached.cache_clear()
    assert _run(manifest, out, plugins, *targets) == ["sub-02:denoise", "sub-02:mask", "sub-02:model", "sub-02:register",
                                                                  "sub-02:track"]


def test_exception_inside_a_plugin_is_that_plugins_failure_for_that_session(tmp_path):
    manifest = _study(tmp_path)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "gaussian_denoise.py").write_text(
        "from cstbatch.hookspecs import hookimpl\n"
        "def broken(data, gtab, options):\n    raise RuntimeError('kernel exploded')\n"
        "@hookimpl\ndef register_denoisers(register):\n    register('gaussian', broken, version='9')\n")
    (plugins / "markdown_report.py").write_text((PLUGINS / "markdown_report.py").read_text())
    out = tmp_path / "out"
    _run(manifest, out, plugins, "sub-01:denoise", "sub-02:denoise")
    record = json.loads((out / "sub-02/steps/sub-02_step-denoise.json").read_text())
    assert record["status"] == "failed" and record["error"]["category"] == "plugin"
    assert record["error"]["message"].startswith("plugin gaussian (local file ")
    assert "kernel exploded" in record["error"]["message"]
    assert "plugin gaussian" in (out / "logs/sub-02_error.log").read_text()
    assert json.loads((out / "sub-01/steps/sub-01_step-denoise.json").read_text())["status"] == "success"


def test_lab_atlas_plugin_wires_user_files(tmp_path, monkeypatch):
    import nibabel as nib
    import numpy as np

    from cstbatch.steps.atlas import icbm_atlas
    from cstbatch.plugins import build_registry

    icbm = icbm_atlas({})
    labels = np.zeros(icbm.shape, np.int16)
    labels[icbm.roi("brainstem")] = 7
    labels[icbm.roi("motor_left")] = 3
    labels[icbm.roi("motor_right")] = 4
    folder = tmp_path / "lab"
    folder.mkdir()
    nib.save(icbm.template, str(folder / "template.nii.gz"))
    nib.save(nib.Nifti1Image(labels, icbm.affine), str(folder / "labels.nii.gz"))
    (folder / "labels.json").write_text(json.dumps({"brainstem": [7], "motor_left": [3], "motor_right": [4]}))
    monkeypatch.setenv("CSTBATCH_LAB_ATLAS", str(folder))
    impl = build_registry(PLUGINS).get("atlas", "lab")
    atlas = impl.func({})
    for roi in ("brainstem", "motor_left", "motor_right"):
        assert np.array_equal(atlas.roi(roi), icbm.roi(roi)), roi
    monkeypatch.delenv("CSTBATCH_LAB_ATLAS")
    import pytest
    from cstbatch.errors import OptionError
    with pytest.raises(OptionError, match="set CSTBATCH_LAB_ATLAS"):
        impl.func({})
