"""Memory budget (``--mem-gb``): how many sessions may run side by side.

doit's process pool cannot weigh tasks, so the budget caps the pool size: the estimate of the
largest session (from its image header, no data read) decides how many fit. The estimate is
an upper bound on the measured peaks of the chain's steps (``benchmarks/real_speed.py``, the
step records' ``peak_rss_mb``). With tracking confined to the CST corridor the largest step is
the registration (~460-510 MB whatever the image: the template grid sets it) or ingest (about
200 MB plus 3 float32 copies of the 4-D data at once); measured on the shared real scans
(Elition 128×128×82×17: 505 MB, Trio 102×102×60×21: 508 MB, Toshiba 64×64×40×13: 462 MB).
A denoiser adds about two copies of the data (its input and output side by side).
"""
from __future__ import annotations

import math

from cstbatch.outputs.layout import NO_DENOISING

BASE_MB = 500.0
COPIES_OF_DATA = 1.5
#: extra copies of the 4-D data held while a denoiser (other than ``none``) runs
DENOISE_COPIES = 2.0
#: DICOM sessions are sized before conversion as a typical 2 mm / ~40-volume session
DICOM_GUESS_MB = 900.0


def nifti_shape(path) -> tuple[int, ...] | None:
    """The image shape from a NIfTI-1/2 header (``.nii`` or ``.nii.gz``), or None if unreadable.

    Why not ``nibabel.load(path).shape``: this runs for every session at planning time (the
    schedule and ``--mem-gb``), where importing nibabel/numpy and building an image object
    cost ~1 ms per session (1.1 s for 1000 sessions); reading the ``dim`` field costs 0.1 ms.
    """
    import gzip
    import struct
    import zlib

    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            fh = gzip.GzipFile(fileobj=raw) if gz else raw
            head = fh.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            dim = struct.unpack(endian + "8q", head[16:80])
            break
    else:
        return None
    if not 1 <= dim[0] <= 7 or any(d < 0 for d in dim[1:dim[0] + 1]):
        return None
    return tuple(int(d) for d in dim[1:dim[0] + 1])


def session_memory_mb(spec) -> float:
    """Estimated peak memory (MB) of one session's chain, from the image header only."""
    if spec.input_type != "nifti":
        return DICOM_GUESS_MB
    shape = nifti_shape(spec.input_path)
    if shape is None:
        return BASE_MB  # unreadable input: ingest fails fast and small
    copies = COPIES_OF_DATA
    if str((spec.options or {}).get("denoise_method") or NO_DENOISING) != NO_DENOISING:
        copies += DENOISE_COPIES
    return BASE_MB + copies * 4.0 * math.prod(shape) / 2**20


def jobs_within_budget(subjects, mem_gb: float | None, jobs: int) -> int:
    """``jobs`` capped so that that many of the largest sessions fit in ``mem_gb``."""
    if not mem_gb or not subjects:
        return jobs
    largest = max(session_memory_mb(s) for s in subjects)
    return max(1, min(jobs, int(mem_gb * 1024 // largest)))


