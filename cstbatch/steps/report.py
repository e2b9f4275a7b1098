"""Per-session report: the input every reporter plugin receives, and the built-in HTML report.

``SessionReportInput`` is the contract for report plugins: paths of everything the session
produced (in the derivative dataset) plus the parsed metrics, so a reporter never needs to
know the folder layout.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..layout import TENSOR_PARAMS
from ..options import STEPS
from ..records import read_record


@dataclass
class SessionReportInput:
    """Everything a report shows. Paths are absolute; images are NIfTI on the DWI grid.

    ``metrics``: the ``metrics`` object of metrics.json (per side: counts, volume, length,
    fa/md/rd/ad means/std, ``profiles`` with ``profile_nodes`` values brainstem → cortex,
    ``regions``; plus ``laterality``). ``records``: step name → step record (status,
    durations, implementation, info such as registration quality and streamline counts).
    """

    key: str
    subject: str
    session: str | None
    options: dict[str, Any]
    fa: Path
    maps: dict[str, Path]
    mask: Path
    dwi: Path
    cst_left: Path
    cst_right: Path
    rois: dict[str, Path]
    registration_qc: Path
    metrics_json: Path
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    records: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def from_layout(cls, spec, layout, options) -> "SessionReportInput":
        data = json.loads(layout.metrics_json.read_text())
        return cls(
            key=spec.key, subject=spec.subject_id, session=spec.session_id, options=dict(options),
            fa=layout.tensor_map("fa"), maps={p: layout.tensor_map(p) for p in TENSOR_PARAMS},
            mask=layout.mask, dwi=layout.denoised, cst_left=layout.cst("left"), cst_right=layout.cst("right"),
            rois={"brainstem": layout.roi("brainstem"), "motor_left": layout.roi("motorL"),
                  "motor_right": layout.roi("motorR")},
            registration_qc=layout.registration_qc, metrics_json=layout.metrics_json,
            metrics=data.get("metrics", {}), provenance=data.get("provenance", {}),
            records={s: r for s in STEPS if (r := read_record(layout.record(s))) is not None},
        )
