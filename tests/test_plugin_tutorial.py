"""docs/plugins.md, followed literally: the tutorial's code blocks are taken from the doc."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_tiny_dwi

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def tutorial_code() -> str:
    """The tutorial's plugin module (the python block that registers a hook)."""
    return next(b for b in blocks("python") if "@hookimpl" in b)


def cstbatch(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "cstbatch", *args], cwd=cwd, capture_output=True,
                          text=True, env=env)


def test_tutorial_plugin_file_is_listed_and_used(tmp_path):
    code = tutorial_code()
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "median_denoise.py").write_text(code)
    listed = cstbatch("plugins", cwd=tmp_path)
    assert re.search(r"denoise\s+median3\s+1\s+local file .*plugins/median_denoise.py", listed.stdout), listed
    write_tiny_dwi(tmp_path / "data" / "s_dwi")
    (tmp_path / "study.json").write_text(json.dumps({"options": {"denoise_method": "median3"}, "subjects": [
        {"id": "sub-01", "session": None, "nifti": "data/s_dwi.nii.gz"}]}))
    run = subprocess.run([sys.executable, "-c", "from cstbatch.engine.runner import run_doit; from cstbatch.study import "
                          "load_study; from pathlib import Path; import sys; "
                          "sys.exit(run_doit(load_study(manifest=Path('study.json'), output_dir=Path('out')), "
                          "['run', 'sub-01:denoise']))"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    record = json.loads((tmp_path / "out/sub-01/steps/sub-01_step-denoise.json").read_text())
    assert record["status"] == "success" and record["implementation"]["name"] == "median3"


def test_tutorial_package_with_entry_point(tmp_path):
    package = tmp_path / "lab-denoise"
    package.mkdir()
    (package / "lab_denoise.py").write_text(tutorial_code())
    (package / "pyproject.toml").write_text(blocks("toml")[0])
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                              "--no-index", "--quiet", "--target", str(target), str(package)],
                             capture_output=True, text=True)
    if install.returncode != 0:
        pytest.skip(f"cannot build the package offline here: {install.stderr.strip().splitlines()[-1:]}")
    env = dict(os.environ, PYTHONPATH=str(target))
    listed = cstbatch("plugins", cwd=tmp_path, env=env)
    assert re.search(r"denoise\s+median3\s+1\s+entry point lab_denoise \(lab-denoise 1.0\)", listed.stdout), listed
