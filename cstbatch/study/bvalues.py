"""What counts as a b0 volume, in one place for discovery and every step.

Scanners store b0 volumes with nominal b-values of 0 to about 50 s/mm² (Philips and Siemens
write 5–10 for some), so anything at or below :data:`B0_THRESHOLD` is treated as unweighted.
"""
from __future__ import annotations

import os
from pathlib import Path

B0_THRESHOLD = 50.0
#: A .bval file larger than this is not read at discovery (no real series has one near it);
#: ingest reads and checks it properly.
_BVAL_MAX_BYTES = 1 << 16


def b0_only(bval: Path | None) -> bool:
    """True when ``bval`` lists volumes and every one is a b0.

    Why discovery asks: many datasets keep the reverse phase-encoding reference for distortion
    correction (a few b0s, e.g. ``sub-01_dir-PA_dwi.nii.gz``) in ``dwi/`` beside the real series.
    It is not a DWI to process, and as a session it would only fail and fail the batch. Anything
    unreadable, empty or not numbers gives False: ingest then reports the file and its fault.
    """
    if bval is None:
        return False
    try:
        if not 0 < os.path.getsize(bval) <= _BVAL_MAX_BYTES:
            return False
        values = [float(v) for v in Path(bval).read_text().split()]
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return bool(values) and max(values) <= B0_THRESHOLD
