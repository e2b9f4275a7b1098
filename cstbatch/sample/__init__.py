"""The synthetic sample study: a phantom with ground truth, its BIDS and DICOM writers, and
scoring a processed study against that truth.

Beside the pipeline, not under it: the engine uses it only to generate the sample study.
"""
from cstbatch.sample.dicom import RESCALE_SLOPE  # noqa: F401
from cstbatch.sample.generate import (  # noqa: F401  (the layer's face)
    DEFAULT_SEED,
    DEFAULT_VOXEL_MM,
    SAMPLE_VERSION,
    SESSIONS,
    SessionSpec,
    generate_sample_session,
    generate_sample_study,
    sample_outputs,
    session_outputs,
    session_spec,
    study_outputs,
    write_study_files,
)
from cstbatch.sample.phantom import PhantomSession, make_phantom_session  # noqa: F401
