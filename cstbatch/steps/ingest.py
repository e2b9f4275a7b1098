"""Ingest: accept a DWI (NIfTI + bval/bvec, or a DICOM folder) only after checking it fully.

A study of hundreds of sessions always contains a few broken inputs (an interrupted copy, a
bvec from another series, a missing b0). Every check here runs *before* any processing and
turns the problem into one :class:`~cstbatch.errors.InputError` line naming the file and the
cause, so the batch summary alone tells the user what to fix.

Nothing here uses doit or pluggy; the caller wraps these functions in tasks.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from dipy.core.gradients import GradientTable, gradient_table

from cstbatch.atomic import save_nifti, write_text
from cstbatch.errors import DependencyError, InputError
from cstbatch.steps.gradients import (
    B0_THRESHOLD,
    bids_to_voxel_axes,
    derived_isotropic,
    read_bvals_bvecs,
)

#: voxel edge lengths outside (0, MAX_VOXEL_MM] mean a broken header, not a real acquisition.
MAX_VOXEL_MM = 10.0
#: bytes read per chunk while streaming voxel data for the integrity/NaN check.
_CHUNK_BYTES = 16 * 1024 * 1024


@dataclass
class CheckedDwi:
    """A DWI that passed every ingest check.

    Attributes
    ----------
    img : nibabel image
        The (lazily loaded) 4-D image; its ``affine`` is voxel→RAS+ mm.
    bvals : float64 (N,)
        b-values, s/mm².
    bvecs_bids : float64 (N, 3)
        b-vectors as in the ``.bvec`` file (BIDS/FSL convention, see :mod:`cstbatch.steps.gradients`).
    bvecs_voxel : float64 (N, 3)
        Unit vectors along the image voxel axes (the BIDS x-flip undone).
    gtab : dipy GradientTable
        Built from ``bvals`` and ``bvecs_voxel`` with ``b0_threshold=50``: the table every
        model/tracker receives, so directions computed from it are voxel-axis directions.
    derived : tuple of int
        Volumes of ``img`` left out: the scanner's derived isotropic (trace) images
        (:func:`cstbatch.steps.gradients.derived_isotropic`). ``bvals`` and the vectors
        describe the other volumes only, and :func:`load_dwi_data` returns only those.
    """

    img: nib.spatialimages.SpatialImage
    bvals: np.ndarray
    bvecs_bids: np.ndarray
    bvecs_voxel: np.ndarray
    gtab: GradientTable
    derived: tuple[int, ...] = ()

    @property
    def volumes(self) -> np.ndarray | None:
        """Indices of the accepted volumes in ``img`` (None: all of them)."""
        if not self.derived:
            return None
        return np.setdiff1d(np.arange(self.img.shape[3]), np.asarray(self.derived, int))


@dataclass
class DicomConversion:
    """Result of :func:`convert_dicom`: paths of the chosen series' files inside ``work_dir``."""

    nifti: Path
    bval: Path
    bvec: Path
    series_description: str
    log_message: str


# --------------------------------------------------------------------------------------------
# NIfTI checks
# --------------------------------------------------------------------------------------------

def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _nifti_stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _sidecar_path(nifti: Path) -> Path:
    return nifti.with_name(_nifti_stem(nifti) + ".json")


def _check_sidecar(nifti: Path) -> None:
    """A JSON sidecar that exists must parse: later steps read acquisition parameters from it."""
    side = _sidecar_path(nifti)
    if not side.exists():
        return
    try:
        text = side.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(side, f"unreadable JSON sidecar: {_one_line(exc)}") from None
    if not text.strip():
        raise InputError(side, "unreadable JSON sidecar: file is empty")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            side, f"unreadable JSON sidecar: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(obj, dict):
        raise InputError(side, "unreadable JSON sidecar: top level is not an object")


def _cause(exc: BaseException, path: Path) -> str:
    """One-line text of an exception, without repeating the file name the message starts with."""
    text = _one_line(exc)
    if "Cannot work out file type" in text:
        return "unrecognised file type or header"
    text = text.replace(f'"{path}"', "the file").replace(str(path), "the file").strip(" :")
    text = re.sub(r"^File the file is", "the file is", text)
    return text or type(exc).__name__


def _load_header(nifti: Path):
    try:
        img = nib.load(str(nifti))
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(nifti, f"corrupt or truncated file, cannot read the NIfTI header ({_cause(exc, nifti)})") from None
    except MemoryError:
        raise
    except Exception as exc:  # nibabel raises many types (ImageFileError, HeaderDataError, ...)
        raise InputError(nifti, f"not a readable NIfTI file ({_cause(exc, nifti)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(nifti, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def _raw_zooms(nifti: Path, img) -> np.ndarray:
    """Voxel sizes (mm) as stored in the file's pixdim, before nibabel "fixes" zeros to 1."""
    try:
        opener = gzip.open if nifti.name.endswith(".gz") else open
        with opener(nifti, "rb") as fh:
            raw = type(img.header).from_fileobj(fh, check=False)
        return np.abs(np.asarray(raw["pixdim"][1:4], dtype=float))
    except Exception:  # header already parsed once by nibabel; fall back to its view
        return np.asarray(img.header.get_zooms()[:3], dtype=float)


def _scan_voxels(nifti: Path, img) -> None:
    """Stream all voxel bytes once: detects truncation/corruption and NaN/Inf values.

    Reads the file in ``_CHUNK_BYTES`` pieces (decompressing .gz on the fly and letting gzip
    verify its CRC at the end), so memory stays bounded and no full copy of the data (let alone
    a second one for ``isfinite``) is ever made. Integer data cannot hold NaN/Inf; for it only
    the scaling factors are checked.
    """
    hdr = img.header
    shape = img.shape
    dtype = np.dtype(hdr.get_data_dtype())
    if dtype.kind not in "uif":
        raise InputError(nifti, f"unsupported voxel data type {dtype} (expected integer or float)")
    slope, inter = hdr.get_slope_inter()
    for name, val in (("scl_slope", slope), ("scl_inter", inter)):
        if val is not None and not np.isfinite(val):
            raise InputError(nifti, f"header {name} is {val} (not finite)")
    # nibabel's proxy knows the real offset (a header may say 0 for single-file NIfTI)
    offset = int(getattr(img.dataobj, "offset", hdr.get_data_offset()))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    is_gz = nifti.name.endswith(".gz")
    check_float = dtype.kind == "f"
    itemsize = dtype.itemsize
    chunk = max(itemsize, (_CHUNK_BYTES // itemsize) * itemsize)
    n_read = 0
    n_bad = 0
    try:
        opener = gzip.open if is_gz else open
        with opener(nifti, "rb") as fh:
            skipped = len(fh.read(offset))
            if skipped < offset:
                raise InputError(nifti, "truncated file: ends inside the header")
            carry = b""
            while n_read < expected:
                buf = fh.read(min(chunk, expected - n_read))
                if not buf:
                    break
                n_read += len(buf)
                if check_float:
                    buf = carry + buf
                    usable = (len(buf) // itemsize) * itemsize
                    carry = buf[usable:]
                    vals = np.frombuffer(buf[:usable], dtype=dtype)
                    n_bad += int(vals.size - np.count_nonzero(np.isfinite(vals)))
            if n_read < expected:
                raise InputError(
                    nifti,
                    f"truncated file: {n_read} of {expected} bytes of voxel data present "
                    "(interrupted copy or download?)",
                )
            if is_gz:
                # read to the end of the stream so gzip checks length and CRC
                while fh.read(chunk):
                    pass
    except InputError:
        raise
    except EOFError:
        raise InputError(
            nifti,
            "truncated gzip file: the compressed stream ends before the voxel data does "
            "(interrupted copy or download?)",
        ) from None
    except (zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise InputError(nifti, f"corrupt file: {_cause(exc, nifti)}") from None
    if n_bad:
        raise InputError(
            nifti, f"{n_bad} voxel value{'s are' if n_bad != 1 else ' is'} NaN or Inf"
        )


def check_nifti_dwi(nifti, bval, bvec) -> CheckedDwi:
    """Check a NIfTI DWI and its gradient files completely, before any processing.

    Parameters
    ----------
    nifti : path
        4-D ``.nii`` / ``.nii.gz`` (X, Y, Z, N volumes). A ``.json`` sidecar with the same stem
        next to it, if present, must parse.
    bval, bvec : path
        FSL/BIDS gradient files (see :func:`cstbatch.steps.gradients.read_bvals_bvecs`).

    Returns
    -------
    CheckedDwi
        The image stays lazily loaded (voxel data is streamed once for the checks, never held
        in memory here); load it with :func:`load_dwi_data`.

    Raises
    ------
    InputError
        One line naming the offending file and the cause. Checks, in order: file missing,
        empty, unreadable header / not NIfTI, not 4-D, absurd voxel sizes (≤ 0 or > 10 mm,
        i.e. a broken header), non-finite affine, bval/bvec missing, unparseable, wrong shape,
        count ≠ volumes, no b0, non-unit vectors, unreadable JSON sidecar, truncated or corrupt
        voxel data, NaN/Inf voxels. Cheap checks run first so a bad bvec is reported without
        decompressing a large image.
    """
    nifti, bval, bvec = Path(nifti), Path(bval), Path(bvec)
    if not nifti.exists():
        raise InputError(nifti, "file not found")
    if not nifti.is_file():
        raise InputError(nifti, "not a file")
    if nifti.stat().st_size == 0:
        raise InputError(nifti, "file is empty (0 bytes)")

    img = _load_header(nifti)
    shape = img.shape
    if len(shape) != 4:
        raise InputError(nifti, f"not a 4-D image (shape {tuple(shape)}); a DWI needs volumes along axis 4")
    if min(shape) < 1:
        raise InputError(nifti, f"image has an empty dimension (shape {tuple(shape)})")
    zooms = _raw_zooms(nifti, img)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0) or np.any(zooms > MAX_VOXEL_MM):
        shown = "x".join(f"{z:g}" for z in zooms)
        raise InputError(
            nifti, f"absurd voxel size {shown} mm (each must be > 0 and <= {MAX_VOXEL_MM:g} mm)"
        )
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(nifti, "header has no usable voxel-to-world affine (singular or not finite)")
    aff_zooms = voxel_sizes(affine)
    if np.any(aff_zooms > MAX_VOXEL_MM) or np.any(aff_zooms < 1e-3):
        shown = "x".join(f"{z:g}" for z in aff_zooms)
        raise InputError(nifti, f"absurd voxel size {shown} mm in the affine (sform/qform)")

    bvals, bvecs_bids = read_bvals_bvecs(bval, bvec, shape[3], allow_derived=True)
    derived = derived_isotropic(bvals, bvecs_bids)
    if derived.any() and not (~derived & (bvals > B0_THRESHOLD)).any():
        raise InputError(bvec, "no diffusion-weighted volume has a direction (only derived isotropic "
                               "images, b > 0 with a zero b-vector)")
    bvals, bvecs_bids = bvals[~derived], bvecs_bids[~derived]
    if not (bvals > B0_THRESHOLD).any():
        raise InputError(bval, f"every volume is a b0 (b <= {B0_THRESHOLD:g} s/mm^2): no diffusion weighting "
                               "to process (a reverse phase-encoding reference?)")
    _check_sidecar(nifti)
    _scan_voxels(nifti, img)

    bvecs_voxel = bids_to_voxel_axes(bvecs_bids, affine)
    # zero the vectors of b0 volumes: their direction is meaningless and dipy rejects
    # non-unit vectors only for diffusion-weighted volumes anyway
    bvecs_voxel[bvals <= B0_THRESHOLD] = 0.0
    try:
        gtab = gradient_table(bvals, bvecs=bvecs_voxel, b0_threshold=B0_THRESHOLD, atol=1e-2)
    except ValueError as exc:  # pragma: no cover - read_bvals_bvecs checks the same things
        raise InputError(bvec, f"invalid gradient table: {_one_line(exc)}") from None
    return CheckedDwi(img=img, bvals=bvals, bvecs_bids=bvecs_bids, bvecs_voxel=bvecs_voxel, gtab=gtab,
                      derived=tuple(int(i) for i in np.flatnonzero(derived)))


def load_dwi_data(checked: CheckedDwi) -> np.ndarray:
    """Load the checked DWI as a float32 (X, Y, Z, N) array (scaling applied), its accepted
    volumes only."""
    data = np.asarray(checked.img.dataobj, dtype=np.float32)
    keep = checked.volumes
    return data if keep is None else data[..., keep]


# --------------------------------------------------------------------------------------------
# Writing the accepted DWI
# --------------------------------------------------------------------------------------------

def _fmt(v: float) -> str:
    return str(int(round(v))) if float(v).is_integer() else f"{v:.8g}"


def write_preproc(checked: CheckedDwi, out_nifti, out_bval, out_bvec, data=None, dtype=None,
                  bvecs_bids=None) -> None:
    """Write the accepted DWI with its gradients (BIDS convention), each file atomically.

    Parameters
    ----------
    checked : CheckedDwi
        From :func:`check_nifti_dwi`.
    out_nifti, out_bval, out_bvec : path
        Destinations. Each is written to a hidden temporary name in the same folder and moved
        into place with ``os.replace``, so a killed run never leaves a half-written file that a
        later up-to-date check would trust.
    data : array (X, Y, Z, N), optional
        Voxel data to write instead of the original (e.g. denoised data). Default: the
        original image data.
    dtype : numpy dtype, optional
        On-disk type. Default float32 (processing results are float; float32 halves the size
        of float64 with no loss relevant to diffusion signal). Pass ``"original"`` to keep the
        input's on-disk type when ``data`` is None (a byte-faithful copy of the accepted input).
    bvecs_bids : (N, 3) array, optional
        b-vectors (BIDS convention) to write instead of the input's: those turned with the head
        by motion correction.

    The affine, qform/sform (and their codes) and the voxel grid are unchanged: only the data
    type may change. Gradients are written in the BIDS/FSL convention relative to that same
    affine, so the files can be read back with :func:`check_nifti_dwi`.
    """
    out_nifti, out_bval, out_bvec = Path(out_nifti), Path(out_bval), Path(out_bvec)
    img = checked.img
    hdr = img.header.copy()
    if data is None and dtype == "original":
        # scaled values; nibabel recomputes scl_slope/inter for an integer on-disk type
        arr = np.asanyarray(img.dataobj)
        keep = checked.volumes
        if keep is not None:
            arr = arr[..., keep]
        out_dtype = hdr.get_data_dtype()
    else:
        arr = load_dwi_data(checked) if data is None else np.asarray(data)
        out_dtype = np.dtype(np.float32 if dtype in (None, "original") else dtype)
        if arr.dtype != out_dtype and out_dtype.kind == "f":
            arr = arr.astype(out_dtype)
    if arr.ndim != 4 or arr.shape[:3] != tuple(img.shape[:3]):
        raise ValueError(f"data shape {arr.shape} does not match image grid {img.shape}")
    if arr.shape[3] != checked.bvals.size:
        raise ValueError(f"data has {arr.shape[3]} volumes but the gradient table has {checked.bvals.size}")
    hdr.set_slope_inter(None, None)
    hdr.set_data_dtype(out_dtype)
    new = type(img)(arr, img.affine, header=hdr)
    qform, qcode = img.get_qform(coded=True)
    sform, scode = img.get_sform(coded=True)
    if qform is not None:
        new.set_qform(qform, code=int(qcode))
    else:
        new.set_qform(None, code=0)
    if sform is not None:
        new.set_sform(sform, code=int(scode))
    else:
        new.set_sform(None, code=0)
    save_nifti(new, out_nifti)

    # the affine is unchanged, so the input's BIDS vectors are still correct for the output;
    # writing them verbatim (not re-deriving them from bvecs_voxel) keeps b0 vectors as given
    bvecs = checked.bvecs_bids if bvecs_bids is None else np.asarray(bvecs_bids, float)
    write_text(out_bval, " ".join(_fmt(b) for b in checked.bvals) + "\n")
    write_text(
        out_bvec, "".join(" ".join(_fmt(v) for v in bvecs[:, ax]) + "\n" for ax in range(3))
    )


# --------------------------------------------------------------------------------------------
# DICOM conversion
# --------------------------------------------------------------------------------------------

#: dcm2niix exit codes worth explaining (from its documentation / source).
_DCM2NIIX_EXIT = {
    2: "no valid DICOM files found",
    4: "corrupt DICOM file found",
    5: "input folder invalid",
    6: "output folder invalid",
    7: "output folder is read-only",
    8: "some DICOM series converted, others failed",
    9: "renaming error",
    10: "incomplete volumes found",
}


def dcm2niix_candidates() -> list[tuple[str, str | None]]:
    """Where dcm2niix is looked for, in order: (where, path or None when that place has none).

    The installation comes first: ``dcm2niix`` is a dependency, and its PyPI package knows
    where its binary is; then the interpreter's own ``bin/`` (a venv or conda environment run
    by full path — cron, SLURM scripts, ``/venv/bin/cstbatch`` — without being activated, so
    its ``bin/`` is not on PATH); PATH only last (a system install).
    """
    found: list[tuple[str, str | None]] = []
    try:
        import dcm2niix as package
        binary = getattr(package, "bin_path", None) or getattr(package, "bin", None)
    except Exception:  # not installed, or a broken install: the next places may still have it
        binary = None
    found.append(("the dcm2niix Python package", str(binary) if binary and _executable(binary) else None))
    local = Path(sys.executable).parent / "dcm2niix"  # not resolved: a venv's python is a link
    found.append((f"{local.parent} (this Python's bin folder)", str(local) if _executable(local) else None))
    found.append(("PATH", shutil.which("dcm2niix")))
    return found


def _executable(path) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_dcm2niix() -> str:
    candidates = dcm2niix_candidates()
    for _, path in candidates:
        if path:
            return path
    raise DependencyError(
        "dcm2niix not found (looked in " + ", then ".join(where for where, _ in candidates)
        + "): install it (pip install dcm2niix) to convert DICOM input"
    )


@dataclass
class _Series:
    nifti: Path
    bval: Path | None
    bvec: Path | None
    json: Path | None
    number: str
    description: str


def _collect_series(out_dir: Path) -> list[_Series]:
    series = []
    for nii in sorted(out_dir.glob("*.nii.gz")) + sorted(out_dir.glob("*.nii")):
        stem = _nifti_stem(nii)
        bval, bvec, side = (out_dir / (stem + e) for e in (".bval", ".bvec", ".json"))
        number, desc = "", ""
        if side.exists():
            try:
                meta = json.loads(side.read_text(encoding="utf-8"))
                number = str(meta.get("SeriesNumber", ""))
                desc = str(meta.get("SeriesDescription", meta.get("ProtocolName", "")))
            except (OSError, ValueError):
                pass
        if not number:
            m = re.match(r"(\d+)_(.*)", stem)
            if m:
                number, desc = m.group(1), desc or m.group(2)
        series.append(_Series(nii, bval if bval.exists() else None, bvec if bvec.exists() else None,
                              side if side.exists() else None, number, desc or stem))
    return series


def convert_dicom(dicom_dir, work_dir, series: str | int | None = None) -> DicomConversion:
    """Convert a DICOM folder to NIfTI + bval/bvec (+ JSON sidecar) with dcm2niix.

    Parameters
    ----------
    dicom_dir : path
        Folder (searched recursively by dcm2niix) holding one session's DICOM files.
    work_dir : path
        Where the chosen series is written as ``dwi.nii.gz``, ``dwi.bval``, ``dwi.bvec`` and
        ``dwi.json`` (fixed names so the caller's task targets do not depend on the series).
        Conversion happens in a private temporary folder inside ``work_dir``, removed after.
    series : str or int, optional
        Which diffusion series to keep when the folder holds several: a series number
        (``7`` or ``"7"``) or a series description (case-insensitive exact match).

    Why dcm2niix: it is the field's reference converter (vendor private tags, mosaics,
    b-matrix → bvec in the BIDS/FSL convention), so :func:`check_nifti_dwi` can then treat
    DICOM and NIfTI input identically.

    Raises
    ------
    DependencyError
        dcm2niix not installed, or it crashed.
    InputError
        Folder missing/empty, no DICOM in it, no diffusion series (no b-values), several
        diffusion series and ``series`` not given (the message lists them), ``series`` not
        matching any of them.
    """
    dicom_dir, work_dir = Path(dicom_dir), Path(work_dir)
    if not dicom_dir.exists():
        raise InputError(dicom_dir, "DICOM folder not found")
    if not dicom_dir.is_dir():
        raise InputError(dicom_dir, "DICOM input is not a folder")
    if not any(p.is_file() for p in dicom_dir.rglob("*")):
        raise InputError(dicom_dir, "DICOM folder is empty")
    exe = find_dcm2niix()
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(tempfile.mkdtemp(prefix=".dcm2niix-", dir=work_dir))
    try:
        cmd = [exe, "-z", "y", "-b", "y", "-ba", "y", "-f", "%s_%d", "-o", str(tmp_out), str(dicom_dir)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        except OSError as exc:
            raise DependencyError(f"{exe}: cannot run dcm2niix ({_one_line(exc)})") from None
        log = (proc.stdout or "") + (proc.stderr or "")
        found = _collect_series(tmp_out)
        if not found:
            if proc.returncode in (0, 2):
                raise InputError(dicom_dir, "no DICOM images found (dcm2niix converted nothing)")
            why = _DCM2NIIX_EXIT.get(proc.returncode, f"exit code {proc.returncode}")
            last = _one_line(log.strip().splitlines()[-1]) if log.strip() else ""
            raise InputError(dicom_dir, f"dcm2niix failed: {why}" + (f" ({last})" if last else ""))
        dwi = [s for s in found if s.bval is not None and s.bvec is not None]
        if not dwi:
            names = ", ".join(f"{s.number} {s.description}".strip() for s in found)
            raise InputError(dicom_dir, f"no diffusion series (no b-values in DICOM); found: {names}")
        label = lambda s: f"{s.number} ({s.description})" if s.number else s.description  # noqa: E731
        if series is not None:
            key = str(series).strip()
            chosen = [s for s in dwi if s.number == key] or [
                s for s in dwi if s.description.lower() == key.lower()
            ]
            if not chosen:
                raise InputError(
                    dicom_dir,
                    f"series {key!r} is not one of the diffusion series: "
                    + ", ".join(label(s) for s in dwi),
                )
            if len(chosen) > 1:
                raise InputError(
                    dicom_dir,
                    f"series {key!r} matches several diffusion series: "
                    + ", ".join(label(s) for s in chosen) + "; give the series number",
                )
            pick = chosen[0]
        elif len(dwi) > 1:
            raise InputError(
                dicom_dir,
                f"{len(dwi)} diffusion series found, choose one with the 'series' option: "
                + ", ".join(label(s) for s in dwi),
            )
        else:
            pick = dwi[0]
        dest = {
            "nifti": work_dir / ("dwi" + (".nii.gz" if pick.nifti.name.endswith(".gz") else ".nii")),
            "bval": work_dir / "dwi.bval",
            "bvec": work_dir / "dwi.bvec",
        }
        os.replace(pick.nifti, dest["nifti"])
        os.replace(pick.bval, dest["bval"])
        os.replace(pick.bvec, dest["bvec"])
        if pick.json is not None:
            os.replace(pick.json, work_dir / "dwi.json")
        else:
            stale = work_dir / "dwi.json"
            if stale.exists():
                stale.unlink()
        message = f"dcm2niix converted series {label(pick)}\n" + log.strip()
        return DicomConversion(
            nifti=dest["nifti"], bval=dest["bval"], bvec=dest["bvec"],
            series_description=pick.description, log_message=message,
        )
    finally:
        shutil.rmtree(tmp_out, ignore_errors=True)
