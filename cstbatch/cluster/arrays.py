"""How one submission's sessions become SLURM job arrays that the cluster accepts.

SLURM refuses an array index at or above ``MaxArraySize`` (1001 unless the site changed it) and
any job once ``MaxJobCount`` records exist, so a 20 000-session study cannot be one array. The
sessions needing work are cut into *elements* of ``per_job`` sessions each (packing several short
sessions into one element spares the scheduler thousands of tiny jobs), and the elements into
arrays of at most ``MaxArraySize - 1`` elements. Element ``g`` runs keys
``[g·per_job, (g+1)·per_job)`` of the submission's key list; array ``j`` holds elements
``first … first + count - 1`` as its task ids ``0 … count - 1``.

Each array's logs go to a folder of their own (``logs/slurm/<submission>/array-<j>/``), so no
folder holds more than one array's worth of files.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from cstbatch.errors import CstBatchError

#: SLURM's compiled-in default, used when ``scontrol`` cannot be asked.
DEFAULT_MAX_ARRAY_SIZE = 1001
DEFAULT_MAX_JOB_COUNT = 10000
LOGS_DIR = Path("logs") / "slurm"


@dataclass(frozen=True)
class SlurmLimits:
    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE
    max_job_count: int = DEFAULT_MAX_JOB_COUNT
    source: str = "SLURM defaults"


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config`` lines (``Name = value``) as a dict."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def slurm_limits() -> SlurmLimits:
    """The cluster's MaxArraySize and MaxJobCount, or SLURM's defaults when scontrol is missing
    or fails (a login node without SLURM, a dry run on a laptop)."""
    exe = shutil.which("scontrol")
    if exe is None:
        return SlurmLimits()
    try:
        proc = subprocess.run([exe, "show", "config"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return SlurmLimits()
    if proc.returncode != 0:
        return SlurmLimits()
    config = parse_config(proc.stdout)

    def number(name: str, default: int) -> int:
        value = config.get(name, "")
        return int(value) if value.isdigit() and int(value) > 0 else default

    return SlurmLimits(number("MaxArraySize", DEFAULT_MAX_ARRAY_SIZE), number("MaxJobCount", DEFAULT_MAX_JOB_COUNT),
                       "scontrol show config")


@dataclass
class ArrayPlan:
    """One job array of a submission: elements ``first … first + count - 1``."""

    index: int                 # 1, 2, … (names the script and the log folder)
    first: int                 # first element (global) of this array
    count: int                 # elements; task ids 0 … count - 1
    job_id: str | None = None

    @property
    def name(self) -> str:
        return f"array-{self.index:03d}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ArrayPlan:
        return cls(int(data["index"]), int(data["first"]), int(data["count"]), data.get("job_id"))


def plan_arrays(n_keys: int, per_job: int, limits: SlurmLimits, array_size: int | None = None) -> list[ArrayPlan]:
    """Cut ``n_keys`` sessions into elements of ``per_job`` and those into arrays SLURM accepts.

    ``array_size`` (elements per array) may only lower the cluster's limit; task ids run from 0,
    so an array holds at most ``MaxArraySize - 1`` elements.
    """
    if per_job < 1:
        raise CstBatchError("--sessions-per-job must be at least 1")
    largest = limits.max_array_size - 1
    if largest < 1:
        raise CstBatchError(f"MaxArraySize {limits.max_array_size} leaves no room for an array")
    if array_size is not None:
        if array_size < 1:
            raise CstBatchError("--array-size must be at least 1")
        if array_size > largest:
            raise CstBatchError(f"--array-size {array_size} is above what this cluster accepts "
                                f"(MaxArraySize {limits.max_array_size}: at most {largest} elements)")
        largest = array_size
    elements = math.ceil(n_keys / per_job)
    arrays = [ArrayPlan(j + 1, first, min(largest, elements - first))
              for j, first in enumerate(range(0, elements, largest))]
    if len(arrays) + 1 > limits.max_job_count:
        raise CstBatchError(f"{n_keys} sessions need {len(arrays)} arrays of {largest} elements, more jobs than "
                            f"the cluster's MaxJobCount ({limits.max_job_count}); pack sessions with "
                            f"--sessions-per-job {math.ceil(elements * per_job / (largest * (limits.max_job_count - 1)))}"
                            " or more")
    return arrays


def element_keys(keys: list[str], per_job: int, element: int) -> list[str]:
    """The sessions element ``element`` runs."""
    return keys[element * per_job:(element + 1) * per_job]


def array_of_element(arrays: list[ArrayPlan], element: int) -> tuple[ArrayPlan, int] | None:
    """(array, task id) that runs ``element``; None when no array does."""
    for array in arrays:
        if array.first <= element < array.first + array.count:
            return array, element - array.first
    return None


def log_dir(out_dir: Path, submission: str, array: ArrayPlan) -> Path:
    return Path(out_dir) / LOGS_DIR / submission / array.name


def aggregate_log_dir(out_dir: Path, submission: str) -> Path:
    return Path(out_dir) / LOGS_DIR / submission
