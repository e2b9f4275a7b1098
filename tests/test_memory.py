"""--mem-gb: the pool is capped so that that many of the largest sessions fit."""
from __future__ import annotations

from pathlib import Path

from cstbatch.engine.memory import BASE_MB, COPIES_OF_DATA, DICOM_GUESS_MB, jobs_within_budget, session_memory_mb
from cstbatch.study.spec import SubjectSpec
from conftest import write_tiny_dwi


def _spec(path: Path, label: str, input_type: str = "nifti") -> SubjectSpec:
    return SubjectSpec(subject_id=label, session_id=None, input_path=path, input_type=input_type)


def test_estimate_from_header_and_fallbacks(tmp_path):
    shape = (12, 10, 8)
    img = write_tiny_dwi(tmp_path / "a_dwi", shape=shape)
    n_vol = 14  # 2 b0 + 12 directions (conftest.tiny_gradients)
    expected = BASE_MB + COPIES_OF_DATA * 4.0 * 12 * 10 * 8 * n_vol / 2**20
    assert abs(session_memory_mb(_spec(img, "01")) - expected) < 1e-6
    assert session_memory_mb(_spec(tmp_path / "absent.nii.gz", "02")) == BASE_MB
    assert session_memory_mb(_spec(tmp_path, "03", "dicom")) == DICOM_GUESS_MB


def test_jobs_capped_by_the_largest_session(tmp_path):
    specs = [_spec(tmp_path / "absent.nii.gz", "01"), _spec(tmp_path, "02", "dicom")]
    assert jobs_within_budget(specs, None, 4) == 4                      # no budget: unchanged
    assert jobs_within_budget(specs, 2 * DICOM_GUESS_MB / 1024, 4) == 2  # two of the largest fit
    assert jobs_within_budget(specs, 0.1, 4) == 1                       # never below one
    assert jobs_within_budget(specs, 100, 3) == 3                       # never above -n


def test_header_shape_matches_nibabel_for_nifti1_and_nifti2(tmp_path):
    import nibabel as nib
    import numpy as np

    from cstbatch.engine.memory import nifti_shape

    data = np.zeros((5, 4, 3, 6), np.int16)
    for cls, name in ((nib.Nifti1Image, "a.nii.gz"), (nib.Nifti2Image, "b.nii"), (nib.Nifti1Image, "c.nii")):
        nib.save(cls(data, np.eye(4)), str(tmp_path / name))
        assert nifti_shape(tmp_path / name) == nib.load(str(tmp_path / name)).shape == (5, 4, 3, 6)
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    (tmp_path / "empty.nii").write_bytes(b"")
    assert nifti_shape(tmp_path / "bad.nii.gz") is None and nifti_shape(tmp_path / "empty.nii") is None
    assert nifti_shape(tmp_path / "absent.nii") is None


def test_a_denoiser_adds_copies_of_the_data(tmp_path):
    from cstbatch.engine.memory import DENOISE_COPIES

    img = write_tiny_dwi(tmp_path / "a_dwi", shape=(12, 10, 8))
    plain = _spec(img, "01")
    denoised = _spec(img, "02")
    denoised.options = {**denoised.options, "denoise_method": "mppca"}
    extra = session_memory_mb(denoised) - session_memory_mb(plain)
    assert abs(extra - DENOISE_COPIES * 4.0 * 12 * 10 * 8 * 14 / 2**20) < 1e-6
