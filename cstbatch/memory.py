"""Memory budget (``--mem-gb``): how many sessions may run side by side.

doit's process pool cannot weigh tasks, so the budget caps the pool size: the estimate of the
largest session (from its image header, no data read) decides how many fit. The estimate is
the measured peak of the chain (see benchmarks/pipeline.py): about 300 MB of libraries plus
~7 float32 copies of the 4-D data during denoising and tracking.
"""
from __future__ import annotations

import math

BASE_MB = 600.0
COPIES_OF_DATA = 3.0
#: DICOM sessions are sized before conversion as a typical 2 mm / ~40-volume session
DICOM_GUESS_MB = 900.0


def session_memory_mb(spec) -> float:
    """Estimated peak memory (MB) of one session's chain, from the image header only."""
    if spec.input_type != "nifti":
        return DICOM_GUESS_MB
    try:
        import nibabel as nib

        shape = nib.load(str(spec.input_path)).shape
    except Exception:
        return BASE_MB  # unreadable input: ingest fails fast and small
    return BASE_MB + COPIES_OF_DATA * 4.0 * math.prod(shape) / 2**20


def jobs_within_budget(subjects, mem_gb: float | None, jobs: int) -> int:
    """``jobs`` capped so that that many of the largest sessions fit in ``mem_gb``."""
    if not mem_gb or not subjects:
        return jobs
    largest = max(session_memory_mb(s) for s in subjects)
    return max(1, min(jobs, int(mem_gb * 1024 // largest)))


