"""cstbatch: batch corticospinal-tract assessment of diffusion-MRI studies.

A study (BIDS folder or manifest) becomes doit tasks, one per step per session, with swappable
pluggy step implementations and a BIDS-derivative output dataset.
"""
__version__ = "0.1.0"

from .aggregate import create_bids_derivative_metadata, generate_batch_summary  # noqa: E402
from .discover import discover_subjects, validate_subject_inputs  # noqa: E402
from .manifest import load_manifest, validate_manifest_schema  # noqa: E402
from .runner import run_batch  # noqa: E402
from .spec import BatchConfig, SubjectResult, SubjectSpec  # noqa: E402

__all__ = [
    "SubjectSpec", "BatchConfig", "SubjectResult", "discover_subjects", "validate_subject_inputs",
    "load_manifest", "validate_manifest_schema", "run_batch", "generate_batch_summary",
    "create_bids_derivative_metadata", "__version__",
]
