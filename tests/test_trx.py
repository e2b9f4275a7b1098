"""TRX output (``save_trx``) through the ``trx`` extra: a lossless round trip, and a one-line
error naming the extra when trx-python is missing (at planning time and in the step)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import nibabel as nib
import numpy as np
import pytest

from cstbatch.engine.session_steps import _save_trx
from cstbatch.errors import OptionError
from cstbatch.study import load_study
from conftest import write_tiny_dwi


def _streamlines():
    rng = np.random.default_rng(3)
    return [np.cumsum(rng.normal(0, 1.0, (n, 3)), axis=0).astype(np.float32) + [-4.0, 3.0, 2.0]
            for n in (5, 12, 30)]


def _reference():
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # LAS, as the tiny DWI
    affine[:3, 3] = [10, -10, -10]
    return nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), affine)


def test_trx_round_trip_keeps_streamlines_and_space(tmp_path):
    if importlib.util.find_spec("trx") is None:
        if os.environ.get("CI"):
            pytest.fail("trx-python must be installed in CI (test extras)")
        pytest.skip("trx-python not installed (pip install -e '.[trx]')")
    from trx.trx_file_memmap import load

    original, ref = _streamlines(), _reference()
    path = tmp_path / "sub-1_tractogram.trx"
    _save_trx(original, ref, path)
    trx = load(str(path))
    try:
        sft = trx.to_sft()
        sft.to_rasmm()
        back = [np.asarray(s) for s in sft.streamlines]
        assert [len(s) for s in back] == [len(s) for s in original]
        for a, b in zip(back, original):
            np.testing.assert_allclose(a, b, atol=1e-3)  # a float16 file (TRX allows it) would fail
        np.testing.assert_allclose(trx.header["VOXEL_TO_RASMM"], ref.affine)
        assert tuple(trx.header["DIMENSIONS"]) == ref.shape
    finally:
        trx.close()
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporary left


def test_missing_trx_names_the_extra_in_the_step_and_at_planning(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trx", None)  # as if trx-python were not installed
    monkeypatch.setitem(sys.modules, "trx.trx_file_memmap", None)
    with pytest.raises(OptionError, match=r"save_trx=true needs trx-python.*pip install 'cstbatch\[trx\]'"):
        _save_trx(_streamlines(), _reference(), tmp_path / "x.trx")
    assert not (tmp_path / "x.trx").exists()
    write_tiny_dwi(tmp_path / "data" / "s0_dwi")
    manifest = tmp_path / "study.json"
    manifest.write_text(json.dumps({"name": "t", "options": {"save_trx": True},
                                    "subjects": [{"id": "sub-01", "session": None, "nifti": "data/s0_dwi.nii.gz"}]}))
    with pytest.raises(OptionError, match=r"pip install 'cstbatch\[trx\]'"):
        load_study(manifest=manifest, output_dir=tmp_path / "out")
