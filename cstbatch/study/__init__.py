"""What a study is: its sessions (``SubjectSpec``), the options table, BIDS discovery, manifests,
and loading all of it into a ``Study``.

The bottom layer: it knows nothing of doit, the science or the output files.
"""
from cstbatch.study.load import (  # noqa: F401  (the layer's face)
    PACKAGE_ROOT,
    SAMPLE_MANIFEST,
    Study,
    check_output_dir,
    check_study,
    load_study,
)
