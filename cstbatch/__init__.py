"""cstbatch: batch corticospinal-tract assessment of diffusion-MRI studies.

A study (BIDS folder or manifest) becomes doit tasks, one per step per session, with swappable
pluggy step implementations and a BIDS-derivative output dataset.
"""
from cstbatch._version import __version__  # noqa: E402,F401
from cstbatch.engine.runner import run_batch  # noqa: E402
from cstbatch.outputs.aggregate import (  # noqa: E402
    create_bids_derivative_metadata,
    generate_batch_summary,
)
from cstbatch.study.discover import discover_subjects, validate_subject_inputs  # noqa: E402
from cstbatch.study.manifest import load_manifest, validate_manifest_schema  # noqa: E402
from cstbatch.study.spec import BatchConfig, SubjectResult, SubjectSpec  # noqa: E402

__all__ = [
    "SubjectSpec", "BatchConfig", "SubjectResult", "discover_subjects", "validate_subject_inputs",
    "load_manifest", "validate_manifest_schema", "run_batch", "generate_batch_summary",
    "create_bids_derivative_metadata", "__version__",
]

from cstbatch import _compat  # noqa: E402

_compat.install()
