"""One thread per numerical library inside a task: parallelism comes from running sessions
side by side (doit ``-n``), and N sessions × M BLAS threads on N cores only thrash.

The environment variables must be set before numpy/scipy load their BLAS, so the front doors
call ``limit_threads()`` first; a user who sets them explicitly keeps their values.
"""
from __future__ import annotations

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def limit_threads(n: int = 1) -> None:
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(n))
