"""Ingest checks: every broken input fails before processing with one line naming file + cause."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cstbatch.errors import DependencyError, InputError
from cstbatch.steps.gradients import (
    bids_to_voxel_axes,
    read_bvals_bvecs,
    voxel_axes_to_bids,
    voxel_to_world_dirs,
)
from cstbatch.steps import ingest
from cstbatch.steps.ingest import check_nifti_dwi, convert_dicom, load_dwi_data, write_preproc

N_B0, N_DIR = 2, 8
SHAPE = (6, 5, 4)


def _scheme():
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(N_DIR, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    bvals = np.r_[np.zeros(N_B0), np.full(N_DIR, 1000.0)]
    bvecs = np.r_[np.zeros((N_B0, 3)), dirs]
    return bvals, bvecs


def _write_grad(path_bval, path_bvec, bvals, bvecs):
    Path(path_bval).write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    Path(path_bvec).write_text("".join(" ".join(f"{v:.6f}" for v in bvecs[:, i]) + "\n" for i in range(3)))


@pytest.fixture
def dwi(tmp_path):
    """A small valid DWI (gz NIfTI + bval + bvec); returns dict of paths and arrays."""
    bvals, bvecs = _scheme()
    rng = np.random.default_rng(1)
    data = rng.uniform(50, 150, SHAPE + (bvals.size,)).astype(np.float32)
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [10, -20, -5]
    p = {
        "nifti": tmp_path / "sub-01_dwi.nii.gz",
        "bval": tmp_path / "sub-01_dwi.bval",
        "bvec": tmp_path / "sub-01_dwi.bvec",
    }
    nib.save(nib.Nifti1Image(data, affine), str(p["nifti"]))
    _write_grad(p["bval"], p["bvec"], bvals, bvecs)
    return {**p, "data": data, "affine": affine, "bvals": bvals, "bvecs": bvecs, "dir": tmp_path}


def _expect_error(path, fragment, *args):
    with pytest.raises(InputError) as info:
        check_nifti_dwi(*args)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    assert fragment.lower() in msg.lower(), msg
    assert info.value.path == str(path)
    return msg


def _args(d):
    return d["nifti"], d["bval"], d["bvec"]


def test_valid_input_passes(dwi):
    checked = check_nifti_dwi(*_args(dwi))
    assert checked.img.shape == SHAPE + (N_B0 + N_DIR,)
    np.testing.assert_allclose(checked.bvals, dwi["bvals"])
    # LAS affine: det < 0, BIDS vectors are already voxel-axis vectors
    np.testing.assert_allclose(checked.bvecs_voxel[N_B0:], dwi["bvecs"][N_B0:], atol=1e-6)
    np.testing.assert_allclose(checked.gtab.bvecs[N_B0:], dwi["bvecs"][N_B0:], atol=1e-6)
    assert checked.gtab.b0_threshold == 50
    np.testing.assert_allclose(load_dwi_data(checked), dwi["data"])


def test_missing_file(dwi):
    missing = dwi["dir"] / "nope.nii.gz"
    _expect_error(missing, "not found", missing, dwi["bval"], dwi["bvec"])


def test_zero_byte_file(dwi):
    empty = dwi["dir"] / "empty.nii.gz"
    empty.write_bytes(b"")
    _expect_error(empty, "empty (0 bytes)", empty, dwi["bval"], dwi["bvec"])


def test_truncated_gzip(dwi):
    raw = dwi["nifti"].read_bytes()
    bad = dwi["dir"] / "trunc.nii.gz"
    bad.write_bytes(raw[: int(len(raw) * 0.6)])
    _expect_error(bad, "truncated", bad, dwi["bval"], dwi["bvec"])


def test_truncated_uncompressed(dwi):
    img = nib.load(str(dwi["nifti"]))
    plain = dwi["dir"] / "plain.nii"
    nib.save(img, str(plain))
    raw = plain.read_bytes()
    plain.write_bytes(raw[: len(raw) - 100])
    _expect_error(plain, "truncated", plain, dwi["bval"], dwi["bvec"])


def test_corrupt_gzip(dwi):
    raw = bytearray(dwi["nifti"].read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(64)
    bad = dwi["dir"] / "corrupt.nii.gz"
    bad.write_bytes(bytes(raw))
    _expect_error(bad, "corrupt", bad, dwi["bval"], dwi["bvec"])


def test_not_a_nifti(dwi):
    bad = dwi["dir"] / "junk.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not an image" * 10))
    _expect_error(bad, "not a readable NIfTI", bad, dwi["bval"], dwi["bvec"])


def test_not_4d(dwi):
    img3 = dwi["dir"] / "t1.nii.gz"
    nib.save(nib.Nifti1Image(dwi["data"][..., 0], dwi["affine"]), str(img3))
    _expect_error(img3, "not a 4-D image", img3, dwi["bval"], dwi["bvec"])


def test_bval_missing(dwi):
    dwi["bval"].unlink()
    _expect_error(dwi["bval"], "b-value file not found", *_args(dwi))


def test_bvec_missing(dwi):
    dwi["bvec"].unlink()
    _expect_error(dwi["bvec"], "b-vector file not found", *_args(dwi))


def test_bval_unparseable(dwi):
    dwi["bval"].write_text("0 0 1000 abc 1000\n")
    _expect_error(dwi["bval"], "cannot parse", *_args(dwi))


def test_bvec_unparseable(dwi):
    dwi["bvec"].write_bytes(b"\x00\xff\xfe binary")
    _expect_error(dwi["bvec"], "cannot parse", *_args(dwi))


def test_bval_count_mismatch(dwi):
    _write_grad(dwi["bval"], dwi["dir"] / "x.bvec", dwi["bvals"][:-1], dwi["bvecs"][:-1])
    _expect_error(dwi["bval"], "9 b-values but the image has 10 volumes", *_args(dwi))


def test_b0_only_series(dwi):
    """Named in a manifest, a reverse phase-encoding reference fails at ingest, saying why."""
    _write_grad(dwi["bval"], dwi["bvec"], np.zeros_like(dwi["bvals"]), np.zeros_like(dwi["bvecs"]))
    _expect_error(dwi["bval"], "every volume is a b0", *_args(dwi))


def test_bvec_count_mismatch(dwi):
    _write_grad(dwi["dir"] / "x.bval", dwi["bvec"], dwi["bvals"][:-1], dwi["bvecs"][:-1])
    _expect_error(dwi["bvec"], "9 b-vectors but the image has 10 volumes", *_args(dwi))


def test_bvec_not_three_rows(dwi):
    dwi["bvec"].write_text("".join(" ".join(f"{v:.6f}" for v in dwi["bvecs"][:, i]) + "\n" for i in range(2)))
    _expect_error(dwi["bvec"], "must have 3 rows", *_args(dwi))


def test_bvec_transposed_is_rejected(dwi):
    np.savetxt(dwi["bvec"], dwi["bvecs"], fmt="%.6f")  # N rows x 3 columns
    _expect_error(dwi["bvec"], "found 10 rows of 3 values, one per volume: the table looks transposed", *_args(dwi))
    # two rows is no transposed table: no such hint
    dwi["bvec"].write_text("".join(" ".join(f"{v:.6f}" for v in dwi["bvecs"][:, i]) + "\n" for i in range(2)))
    assert "looks transposed" not in _expect_error(dwi["bvec"], "must have 3 rows", *_args(dwi))


def test_no_b0(dwi):
    bvals = dwi["bvals"].copy()
    bvals[:N_B0] = 500
    bvecs = dwi["bvecs"].copy()
    bvecs[:N_B0] = [1, 0, 0]
    _write_grad(dwi["bval"], dwi["bvec"], bvals, bvecs)
    _expect_error(dwi["bval"], "no b0 volume", *_args(dwi))


def test_bvalues_in_the_wrong_unit(dwi):
    _write_grad(dwi["bval"], dwi["bvec"], dwi["bvals"] / 1000.0, dwi["bvecs"])
    _expect_error(dwi["bval"], "b-values look like ms/um^2 (largest 1)", *_args(dwi))


def test_non_unit_vectors(dwi):
    bvecs = dwi["bvecs"].copy()
    bvecs[N_B0 + 3] *= 0.8
    _write_grad(dwi["bval"], dwi["bvec"], dwi["bvals"], bvecs)
    msg = _expect_error(dwi["bvec"], "not unit length", *_args(dwi))
    assert f"volume {N_B0 + 3}" in msg


def test_derived_isotropic_volume_is_left_out(dwi, tmp_path):
    """A Philips-style trace image appended to the series (b 1000, zero vector) is not a
    measurement: ingest leaves it out of the image and the gradients, and says which."""
    trace = np.exp(np.mean(np.log(dwi["data"][..., N_B0:]), axis=-1, keepdims=True))
    data = np.concatenate([dwi["data"], trace], axis=-1)
    nib.save(nib.Nifti1Image(data, dwi["affine"]), str(dwi["nifti"]))
    bvals, bvecs = np.r_[dwi["bvals"], 1000.0], np.r_[dwi["bvecs"], np.zeros((1, 3))]
    _write_grad(dwi["bval"], dwi["bvec"], bvals, bvecs)
    with pytest.raises(InputError, match="not unit length"):  # the plain reader stays strict
        read_bvals_bvecs(dwi["bval"], dwi["bvec"], bvals.size)
    checked = check_nifti_dwi(*_args(dwi))
    assert checked.derived == (N_B0 + N_DIR,)
    assert checked.gtab.bvals.size == N_B0 + N_DIR
    np.testing.assert_allclose(load_dwi_data(checked), dwi["data"])
    out = tmp_path / "out"
    paths = (out / "dwi.nii.gz", out / "dwi.bval", out / "dwi.bvec")
    for dtype in (None, "original"):
        write_preproc(checked, *paths, dtype=dtype)
        again = check_nifti_dwi(*paths)
        assert again.derived == () and again.img.shape == SHAPE + (N_B0 + N_DIR,)
        np.testing.assert_allclose(load_dwi_data(again), dwi["data"], rtol=1e-6)
        np.testing.assert_allclose(again.bvals, dwi["bvals"])


def test_ingest_step_writes_the_acquired_volumes_and_names_the_dropped_one(dwi, tmp_path, caplog):
    import logging
    from types import SimpleNamespace

    from cstbatch.engine.session_steps import ingest as ingest_step
    from cstbatch.outputs.layout import SessionLayout

    data = np.concatenate([dwi["data"], dwi["data"][..., -1:]], axis=-1)
    nib.save(nib.Nifti1Image(data, dwi["affine"]), str(dwi["nifti"]))
    _write_grad(dwi["bval"], dwi["bvec"], np.r_[dwi["bvals"], 1000.0], np.r_[dwi["bvecs"], np.zeros((1, 3))])
    out = tmp_path / "deriv"
    layout = SessionLayout(out, "sub-01", Path("sub-01"))
    spec = SimpleNamespace(input_type="nifti", input_path=dwi["nifti"], bval=dwi["bval"], bvec=dwi["bvec"],
                           inputs=[("dwi", dwi["nifti"])])
    with caplog.at_level(logging.WARNING):
        info = ingest_step(SimpleNamespace(spec=spec, layout=layout, options={}, log=logging.getLogger("t")))
    assert info["derived_volumes_dropped"] == [N_B0 + N_DIR]
    assert info["shape"] == list(SHAPE) + [N_B0 + N_DIR] and info["n_directions"] == N_DIR
    assert nib.load(str(layout.dwi)).shape == SHAPE + (N_B0 + N_DIR,)
    assert "derived isotropic" in caplog.text


def test_only_derived_volumes_is_an_error(dwi):
    bvecs = dwi["bvecs"].copy()
    bvecs[N_B0:] = 0
    _write_grad(dwi["bval"], dwi["bvec"], dwi["bvals"], bvecs)
    _expect_error(dwi["bvec"], "no diffusion-weighted volume has a direction", *_args(dwi))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nan_inf_voxels(dwi, bad_value):
    data = dwi["data"].copy()
    data[1, 2, 3, 4] = bad_value
    data[0, 0, 0, 0] = bad_value
    nib.save(nib.Nifti1Image(data, dwi["affine"]), str(dwi["nifti"]))
    msg = _expect_error(dwi["nifti"], "NaN or Inf", *_args(dwi))
    assert "2 voxel values" in msg


def test_nan_check_is_chunked(dwi, monkeypatch):
    """The scan must work with chunks much smaller than the data (no full copy needed)."""
    monkeypatch.setattr(ingest, "_CHUNK_BYTES", 100)  # not a multiple of 4 on purpose
    data = dwi["data"].copy()
    data[-1, -1, -1, -1] = np.nan
    nib.save(nib.Nifti1Image(data, dwi["affine"]), str(dwi["nifti"]))
    _expect_error(dwi["nifti"], "1 voxel value is NaN or Inf", *_args(dwi))


def test_integer_data_passes(dwi):
    img = nib.Nifti1Image(np.round(dwi["data"]).astype(np.int16), dwi["affine"])
    nib.save(img, str(dwi["nifti"]))
    checked = check_nifti_dwi(*_args(dwi))
    assert load_dwi_data(checked).dtype == np.float32


@pytest.mark.parametrize("zoom", [0.0, 25.0])
def test_absurd_voxel_size(dwi, zoom):
    img = nib.Nifti1Image(dwi["data"], dwi["affine"])
    img.header.set_zooms((2.0, zoom, 2.0, 1.0))
    nib.save(img, str(dwi["nifti"]))
    _expect_error(dwi["nifti"], "absurd voxel size", *_args(dwi))


def test_unreadable_json_sidecar(dwi):
    side = dwi["dir"] / "sub-01_dwi.json"
    side.write_text('{"RepetitionTime": 3.2, ')
    _expect_error(side, "unreadable JSON sidecar", *_args(dwi))


def test_valid_json_sidecar_passes(dwi):
    (dwi["dir"] / "sub-01_dwi.json").write_text(json.dumps({"RepetitionTime": 3.2}))
    check_nifti_dwi(*_args(dwi))


def test_cheap_checks_before_voxel_scan(dwi):
    """A bad bvec is reported even when the image is also truncated (no decompression first)."""
    raw = dwi["nifti"].read_bytes()
    dwi["nifti"].write_bytes(raw[: int(len(raw) * 0.6)])
    dwi["bvec"].write_text("1 2\n")
    _expect_error(dwi["bvec"], "3 rows", *_args(dwi))


# ---------------------------------------------------------------------------------------------
# gradients module
# ---------------------------------------------------------------------------------------------

def test_read_bvals_bvecs_column_bval_and_commas(tmp_path):
    bvals, bvecs = _scheme()
    (tmp_path / "a.bval").write_text("\n".join(f"{b:g}" for b in bvals) + "\n")
    (tmp_path / "a.bvec").write_text("".join(",".join(f"{v:.6f}" for v in bvecs[:, i]) + "\n" for i in range(3)))
    b, v = read_bvals_bvecs(tmp_path / "a.bval", tmp_path / "a.bvec", bvals.size)
    np.testing.assert_allclose(b, bvals)
    np.testing.assert_allclose(v, bvecs, atol=1e-6)


def test_flip_only_for_positive_determinant():
    v = np.array([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    las = np.diag([-2.0, 2, 2, 1])
    ras = np.diag([2.0, 2, 2, 1])
    np.testing.assert_allclose(bids_to_voxel_axes(v, las), v)
    np.testing.assert_allclose(bids_to_voxel_axes(v, ras), v * [-1, 1, 1])
    np.testing.assert_allclose(voxel_axes_to_bids(bids_to_voxel_axes(v, ras), ras), v)
    # world direction of voxel axis i is -x for LAS, +x for RAS
    np.testing.assert_allclose(voxel_to_world_dirs(np.array([1.0, 0, 0]), las), [-1, 0, 0])
    np.testing.assert_allclose(voxel_to_world_dirs(np.array([0.0, 0, 0]), las), [0, 0, 0])
    aniso = np.diag([1.0, 2.0, 4.0, 1.0])
    np.testing.assert_allclose(voxel_to_world_dirs(np.array([0.6, 0.8, 0.0]), aniso), [0.6, 0.8, 0])


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def test_write_preproc_roundtrip(dwi, tmp_path):
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(dwi["data"], ras), str(dwi["nifti"]))
    checked = check_nifti_dwi(*_args(dwi))
    out = tmp_path / "out"
    paths = (out / "dwi.nii.gz", out / "dwi.bval", out / "dwi.bvec")
    write_preproc(checked, *paths)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    again = check_nifti_dwi(*paths)
    assert again.img.get_data_dtype() == np.float32
    np.testing.assert_allclose(again.img.affine, ras)
    assert again.img.get_sform(coded=True)[1] == checked.img.get_sform(coded=True)[1]
    assert again.img.get_qform(coded=True)[1] == checked.img.get_qform(coded=True)[1]
    np.testing.assert_allclose(load_dwi_data(again), dwi["data"])
    np.testing.assert_allclose(again.bvecs_bids, checked.bvecs_bids, atol=1e-7)
    np.testing.assert_allclose(again.gtab.bvecs, checked.gtab.bvecs, atol=1e-7)
    # other data (e.g. denoised) with the original dtype kept
    nib.save(nib.Nifti1Image(np.round(dwi["data"]).astype(np.int16), ras), str(dwi["nifti"]))
    checked = check_nifti_dwi(*_args(dwi))
    write_preproc(checked, *paths, dtype="original")
    assert nib.load(str(paths[0])).get_data_dtype() == np.int16
    write_preproc(checked, *paths, data=dwi["data"] * 0.5)
    np.testing.assert_allclose(nib.load(str(paths[0])).get_fdata(), dwi["data"] * 0.5, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------

def _write_dicom_series(out, number, desc, bvals=None, bvecs=None, shape=(6, 5, 3)):
    """Tiny classic MR DICOM series; with bvals, standard diffusion tags (0018,9087/9089)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(number)
    series_uid = generate_uid()
    n_vol = 1 if bvals is None else len(bvals)
    nx, ny, nz = shape
    inst = 0
    for v in range(n_vol):
        for z in range(nz):
            inst += 1
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.PatientName, ds.PatientID = "Test^P", "p1"
            ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
            ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
            ds.SeriesInstanceUID = series_uid
            ds.Modality, ds.Manufacturer, ds.PatientPosition = "MR", "Philips", "HFS"
            ds.SeriesNumber, ds.SeriesDescription, ds.ProtocolName = number, desc, desc
            ds.StudyDate, ds.SeriesTime, ds.AcquisitionTime = "20240101", "120000", "120000"
            ds.InstanceNumber, ds.AcquisitionNumber = inst, v + 1
            ds.ImagePositionPatient = [0.0, 0.0, 2.0 * z]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing, ds.SliceThickness = [2.0, 2.0], 2.0
            ds.Rows, ds.Columns, ds.SamplesPerPixel = ny, nx, 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.EchoTime, ds.RepetitionTime, ds.MagneticFieldStrength = 80, 5000, 3
            if bvals is not None:
                ds.add_new((0x0018, 0x9087), "FD", float(bvals[v]))
                ds.add_new((0x0018, 0x9089), "FD", [float(x) for x in bvecs[v]])
            ds.PixelData = rng.integers(100, 1000, (ny, nx), dtype=np.uint16).tobytes()
            pydicom.dcmwrite(out / f"s{number}_v{v:03d}_z{z:02d}.dcm", ds, enforce_file_format=True)


_DCM_BVALS = [0, 1000, 1000, 1000, 1000, 1000, 1000]
_DCM_BVECS = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1],
              [0.7071068, 0.7071068, 0], [0, 0.7071068, 0.7071068], [0.7071068, 0, 0.7071068]]

needs_dcm2niix = pytest.mark.skipif(not any(p for _, p in ingest.dcm2niix_candidates()), reason="dcm2niix not installed")


def _expect_dicom_error(path, fragment, *args, **kw):
    with pytest.raises(InputError) as info:
        convert_dicom(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and fragment.lower() in msg.lower(), msg
    return msg


def test_dicom_empty_folder(tmp_path):
    (tmp_path / "dicom").mkdir()
    _expect_dicom_error(tmp_path / "dicom", "empty", tmp_path / "dicom", tmp_path / "work")


def test_dicom_missing_dcm2niix_names_the_lookup_order(tmp_path, monkeypatch):
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "x.dcm").write_bytes(b"123")
    monkeypatch.setitem(sys.modules, "dcm2niix", None)           # package not installed
    monkeypatch.setattr(ingest.sys, "executable", str(tmp_path / "env/bin/python"))
    monkeypatch.setattr(ingest.shutil, "which", lambda name: None)
    with pytest.raises(DependencyError) as err:
        convert_dicom(tmp_path / "dicom", tmp_path / "work")
    assert str(err.value) == (f"dcm2niix not found (looked in the dcm2niix Python package, then {tmp_path}/env/bin "
                              "(this Python's bin folder), then PATH): install it (pip install dcm2niix) to convert "
                              "DICOM input")


def test_dcm2niix_found_from_the_installation_before_path(tmp_path, monkeypatch):
    """Run by full path from an environment that is not activated: PATH has no dcm2niix."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(ingest.shutil, "which", lambda name: None)
    try:
        import dcm2niix
    except ImportError:
        dcm2niix = None
    if dcm2niix is not None:
        assert ingest.find_dcm2niix() == str(dcm2niix.bin_path)
    # without the package: the interpreter's own bin folder
    env_bin = tmp_path / "env/bin"
    env_bin.mkdir(parents=True)
    tool = env_bin / "dcm2niix"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setitem(sys.modules, "dcm2niix", None)
    monkeypatch.setattr(ingest.sys, "executable", str(env_bin / "python"))
    assert ingest.find_dcm2niix() == str(tool)
    tool.chmod(0o644)  # not executable: not a candidate; PATH last
    monkeypatch.setattr(ingest.shutil, "which", lambda name: "/opt/dcm2niix/bin/dcm2niix")
    assert ingest.find_dcm2niix() == "/opt/dcm2niix/bin/dcm2niix"


@needs_dcm2niix
def test_dicom_no_dicom_files(tmp_path):
    d = tmp_path / "dicom"
    d.mkdir()
    (d / "notes.txt").write_text("not a dicom")
    _expect_dicom_error(d, "no DICOM images", d, tmp_path / "work")


@needs_dcm2niix
def test_dicom_without_diffusion(tmp_path):
    d = tmp_path / "dicom"
    _write_dicom_series(d, 3, "T1_MPRAGE")
    _expect_dicom_error(d, "no diffusion series (no b-values in DICOM)", d, tmp_path / "work")


@needs_dcm2niix
def test_dicom_conversion_and_series_choice(tmp_path):
    d = tmp_path / "dicom"
    _write_dicom_series(d / "a", 5, "DTI_A", _DCM_BVALS, _DCM_BVECS)
    _write_dicom_series(d / "b", 7, "DTI_B", _DCM_BVALS, _DCM_BVECS)
    _write_dicom_series(d / "c", 3, "T1_MPRAGE")
    work = tmp_path / "work"
    msg = _expect_dicom_error(d, "2 diffusion series found", d, work)
    assert "5 (DTI_A)" in msg and "7 (DTI_B)" in msg
    _expect_dicom_error(d, "not one of the diffusion series", d, work, series="9")

    conv = convert_dicom(d, work, series=7)
    assert conv.series_description == "DTI_B"
    assert conv.nifti == work / "dwi.nii.gz" and conv.nifti.exists()
    assert "dcm2niix" in conv.log_message
    checked = check_nifti_dwi(conv.nifti, conv.bval, conv.bvec)
    assert checked.img.shape[3] == len(_DCM_BVALS)
    np.testing.assert_allclose(checked.bvals, _DCM_BVALS)
    assert sorted(p.name for p in work.iterdir()) == ["dwi.bval", "dwi.bvec", "dwi.json", "dwi.nii.gz"]

    conv = convert_dicom(d, work, series="dti_a")  # by description, case-insensitive
    assert conv.series_description == "DTI_A"
