"""doit front door: ``doit run`` processes the study; with no variables, the sample study.

    doit run                                   sample study → ./derivatives/cstbatch
    doit run manifest=study.json out=/results  a manifest
    doit run bids=/data/study out=/results participant_label=01,02
    doit list / doit run sub-01_ses-01 / doit plan

Everything else lives in the package; this file only picks the study.
"""
import os

from cstbatch.engine.threads import limit_threads

limit_threads()  # before numpy loads: one BLAS thread per task, sessions run side by side

from doit import get_var  # noqa: E402

from cstbatch.errors import CstBatchError  # noqa: E402
from cstbatch.study import load_study  # noqa: E402
from cstbatch.engine.tasks import doit_namespace  # noqa: E402


def _var(name):
    value = get_var(name)
    return value or None


def _labels(name):
    value = _var(name)
    return value.split(",") if value else None


try:
    _study = load_study(bids_dir=_var("bids"), manifest=_var("manifest"), output_dir=_var("out"),
                        participant_label=_labels("participant_label"),
                        exclude_participant_label=_labels("exclude_participant_label"))
except CstBatchError as exc:  # one line, no traceback
    raise SystemExit(f"cstbatch: error: {exc}") from None

# sessions side by side on every core by default (`doit run -n 1` overrides)
globals().update(doit_namespace(_study, jobs=min(os.cpu_count() or 1, max(1, len(_study.subjects)))))
