"""Write a synthetic DWI series as classic DICOM (MR Image Storage, one file per slice).

The series is what a scanner without vendor private tags would export: one single-frame file
per slice per volume, unsigned 16-bit pixels with ``RescaleSlope``, geometry in the patient
(LPS) frame and the standard diffusion attributes

* (0018,9087) DiffusionBValue,
* (0018,9089) DiffusionGradientOrientation -- a unit vector in patient LPS coordinates,
* (0018,9075) DiffusionDirectionality ("DIRECTIONAL", or "NONE" for b = 0).

Voxel (i, j, k) of the NIfTI twin is pixel (column i, row j) of slice k, so
``ImageOrientationPatient`` = LPS directions of the i and j axes and ``ImagePositionPatient``
of slice k = LPS position of voxel (0, 0, k). Everything is deterministic (UIDs derive from a
key, dates and times are fixed), so the bytes only depend on the inputs.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

#: raw pixel value × RESCALE_SLOPE = signal
RESCALE_SLOPE = 0.5
_LPS = np.diag([-1.0, -1.0, 1.0])
_IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.20261125"  # fixed, under pydicom's root


def dicom_filenames(n_slices: int, n_volumes: int) -> list[str]:
    """File names written by :func:`write_dicom_series`, in instance-number order."""
    return [f"IM{i:05d}.dcm" for i in range(1, n_slices * n_volumes + 1)]


def quantize(data: np.ndarray) -> np.ndarray:
    """Signal → stored uint16 pixel values (``round(signal / RESCALE_SLOPE)``, clipped)."""
    out = np.asarray(data, np.float32) / np.float32(RESCALE_SLOPE)
    np.rint(out, out=out)
    np.clip(out, 0, 65535, out=out)
    return out.astype(np.uint16)


def _ds(v: float, nd: int) -> str:
    s = f"{v:.{nd}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def write_dicom_series(out_dir: Path, data: np.ndarray, affine: np.ndarray, bvals: np.ndarray,
                       gradients_world: np.ndarray, *, key: str, patient_id: str,
                       patient_sex: str = "F", patient_age: int = 40,
                       series_description: str = "DTI_b1000_32dir") -> list[Path]:
    """Write ``data`` (X, Y, Z, N) as one classic DICOM series; returns the files written.

    Parameters
    ----------
    data : (X, Y, Z, N) float or integer
        The signal; stored as ``quantize(data)`` with ``RescaleSlope`` = :data:`RESCALE_SLOPE`.
    affine : (4, 4)
        voxel → RAS+ mm of ``data`` (may be oblique, LAS or RAS).
    bvals : (N,)
    gradients_world : (N, 3)
        Gradient directions in world RAS+ (zero rows for b0); written in LPS.
    key : str
        Makes the UIDs (study, series, frame of reference, instances) unique and stable.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = quantize(data)
    nx, ny, nz, nv = raw.shape
    aff = np.asarray(affine, float)
    lin = aff[:3, :3]
    vox = np.linalg.norm(lin, axis=0)
    rdir = _LPS @ (lin[:, 0] / vox[0])
    cdir = _LPS @ (lin[:, 1] / vox[1])
    normal = np.cross(rdir, cdir)
    iop = [_ds(v, 8) for v in (*rdir, *cdir)]
    g_lps = np.asarray(gradients_world, float) @ _LPS.T

    study_uid = generate_uid(entropy_srcs=["cstbatch-sample", key, "study"])
    series_uid = generate_uid(entropy_srcs=["cstbatch-sample", key, "series"])
    for_uid = generate_uid(entropy_srcs=["cstbatch-sample", key, "frame-of-reference"])

    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 100"
    base.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
    base.SOPClassUID = MRImageStorage
    base.StudyDate = base.SeriesDate = base.AcquisitionDate = base.ContentDate = "20260101"
    base.StudyTime = base.SeriesTime = "090000.000000"
    base.Modality = "MR"
    base.Manufacturer = "Phantom (cstbatch synthetic)"
    base.InstitutionName = "Synthetic"
    base.ManufacturerModelName = "MNI phantom"
    base.StudyDescription = "cstbatch sample study"
    base.SeriesDescription = series_description
    base.ProtocolName = series_description
    base.PatientName = patient_id
    base.PatientID = patient_id
    base.PatientBirthDate = ""
    base.PatientSex = patient_sex
    base.PatientAge = f"{int(patient_age):03d}Y"
    base.ScanningSequence = "EP"
    base.SequenceVariant = ["SK", "SP"]
    base.ScanOptions = "FS"
    base.MRAcquisitionType = "2D"
    base.SliceThickness = _ds(vox[2], 4)
    base.SpacingBetweenSlices = _ds(vox[2], 4)
    base.RepetitionTime = "8000"
    base.EchoTime = "80"
    base.NumberOfAverages = "1"
    base.ImagingFrequency = "123.2"
    base.ImagedNucleus = "1H"
    base.MagneticFieldStrength = "3"
    base.EchoTrainLength = "1"
    base.PixelBandwidth = "1500"
    base.InPlanePhaseEncodingDirection = "COL"
    base.FlipAngle = "90"
    base.PatientPosition = "HFS"
    base.StudyInstanceUID = study_uid
    base.SeriesInstanceUID = series_uid
    base.StudyID = "1"
    base.SeriesNumber = 5
    base.AcquisitionNumber = 1
    base.FrameOfReferenceUID = for_uid
    base.PositionReferenceIndicator = ""
    base.ImageOrientationPatient = iop
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows = ny
    base.Columns = nx
    base.PixelSpacing = [_ds(vox[1], 4), _ds(vox[0], 4)]  # row spacing (j), column spacing (i)
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 0
    base.WindowCenter = "600"
    base.WindowWidth = "1600"
    base.RescaleIntercept = "0"
    base.RescaleSlope = _ds(RESCALE_SLOPE, 6)
    base.RescaleType = "US"

    names = dicom_filenames(nz, nv)
    static = _encode_elements(base)
    # per slice: position and location (the same in every volume)
    per_slice = []
    for k in range(nz):
        pos = _LPS @ (aff[:3, :3] @ np.array([0.0, 0.0, float(k)]) + aff[:3, 3])
        per_slice.append({
            0x00200032: _element(0x00200032, "DS", "\\".join(_ds(c, 5) for c in pos)),
            0x00201041: _element(0x00201041, "DS", _ds(float(pos @ normal), 5)),
        })
    written: list[Path] = []
    for v in range(nv):
        bval = float(bvals[v])
        t = 9 * 3600 + 10 * 60 + v * 8  # one volume every TR = 8 s
        acq_time = f"{t // 3600:02d}{(t // 60) % 60:02d}{t % 60:02d}.000000"
        per_vol = Dataset()
        per_vol.AcquisitionTime = acq_time
        per_vol.ContentTime = acq_time
        per_vol.TemporalPositionIdentifier = v + 1
        per_vol.NumberOfTemporalPositions = nv
        per_vol.DiffusionBValue = bval
        if bval > 0:
            per_vol.DiffusionDirectionality = "DIRECTIONAL"
            per_vol.DiffusionGradientOrientation = [float(c) for c in g_lps[v]]
        else:
            per_vol.DiffusionDirectionality = "NONE"
        common = dict(static)
        common.update(_encode_elements(per_vol))
        for k in range(nz):
            inst = v * nz + k + 1
            sop_uid = generate_uid(entropy_srcs=["cstbatch-sample", key, "instance", str(inst)])
            elems = dict(common)
            elems.update(per_slice[k])
            elems[0x00080018] = _element(0x00080018, "UI", sop_uid)
            elems[0x00200013] = _element(0x00200013, "IS", str(inst))
            pixels = np.ascontiguousarray(raw[:, :, k, v].T).astype("<u2").tobytes()
            elems[0x7FE00010] = _element(0x7FE00010, "OW", pixels)
            body = b"".join(elems[t] for t in sorted(elems))
            path = out_dir / names[inst - 1]
            path.write_bytes(_PREAMBLE + _file_meta_bytes(sop_uid) + body)
            written.append(path)
    return written


_PREAMBLE = b"\x00" * 128 + b"DICM"
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}


def _element(tag: int, vr: str, value) -> bytes:
    """One data element in explicit VR little endian (strings padded to even length).

    Used for the few elements that change per file; the rest is encoded by pydicom once.
    ``tests/test_sample.py`` checks that pydicom re-encodes a written file to the same bytes.
    """
    if isinstance(value, str):
        raw = value.encode("ascii")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
    else:
        raw = bytes(value)
        if len(raw) % 2:
            raw += b"\x00"
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + struct.pack("<HI", 0, len(raw)) + raw
    return head + struct.pack("<H", len(raw)) + raw


def _encode_elements(ds: Dataset) -> dict[int, bytes]:
    """Each data element of ``ds`` encoded alone (explicit VR little endian), keyed by tag.

    A dataset's encoding is the concatenation of its elements in tag order, so files that
    share most elements are assembled from cached pieces instead of re-encoding ~80 elements
    per file with pydicom (which made a 2 mm series take half a minute).
    """
    out = {}
    for elem in ds:
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        write_data_element(fp, elem)
        out[int(elem.tag)] = fp.getvalue()
    return out


def _file_meta_bytes(sop_uid: str) -> bytes:
    """File meta group (0002) for one instance, with its group length."""
    elems = b"".join([
        _element(0x00020001, "OB", b"\x00\x01"),
        _element(0x00020002, "UI", MRImageStorage),
        _element(0x00020003, "UI", sop_uid),
        _element(0x00020010, "UI", ExplicitVRLittleEndian),
        _element(0x00020012, "UI", _IMPLEMENTATION_UID),
        _element(0x00020013, "SH", "CSTBATCH_SAMPLE"),
    ])
    return _element(0x00020000, "UL", struct.pack("<I", len(elems))) + elems
