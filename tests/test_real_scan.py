"""One real human scan through the whole pipeline: the shared Toshiba 3 mm scan (13 volumes,
about 30 s), whose field of view stops near the medulla.

Why this scan: it is the smallest of ``../shared/real-dwi`` and the hardest in kind (few
directions, 3 mm, truncated brainstem), so it is where a regression that leaves a session
"successful" with no CST would show first. The bars are loose on purpose (they must hold on
any reasonable method, not pin today's numbers): both CSTs with at least 100 streamlines, mean
FA of a white-matter tract, left and right within 20 % of each other, the truncated field of
view flagged, and the tract files holding what the metrics count. The larger scans and the
test-retest pair are measured by ``benchmarks/real_scans.py``.
"""
from __future__ import annotations

import csv
import json

import nibabel as nib
import pytest

from conftest import SHARED

REAL = SHARED / "real-dwi"
TOSHIBA = REAL / "sub-toshiba"


@pytest.fixture(scope="module")
def toshiba_run(tmp_path_factory):
    from cstbatch.engine.runner import run_doit
    from cstbatch.study import load_study

    out = tmp_path_factory.mktemp("real") / "derivatives"
    study = load_study(bids_dir=REAL, output_dir=out, participant_label=["toshiba"])
    code = run_doit(study, ["run"], jobs=1)
    return code, out


@pytest.mark.skipif(not TOSHIBA.is_dir(), reason="../shared/real-dwi not present")
def test_toshiba_scan_gives_both_csts(toshiba_run):
    code, out = toshiba_run
    assert code == 0
    with open(out / "batch_metrics.csv", newline="") as fh:
        rows = {r["key"]: r for r in csv.DictReader(fh)}
    row = rows["sub-toshiba"]
    assert row["status"] == "success"
    counts = {s: int(row[f"extraction_cst_streamlines_{s}"]) for s in ("left", "right")}
    assert min(counts.values()) >= 100, counts
    fa = {s: float(row[f"{s}_fa_mean"]) for s in ("left", "right")}
    assert all(0.35 <= v <= 0.75 for v in fa.values()), fa
    assert abs(fa["left"] - fa["right"]) <= 0.2 * max(fa.values()), fa
    assert row["extraction_fov_truncated"] == "True"

    tract_dir = out / "sub-toshiba" / "tractography"
    for side, letter in (("left", "L"), ("right", "R")):
        trk = nib.streamlines.load(str(tract_dir / f"sub-toshiba_desc-cst{letter}_tractogram.trk"))
        assert len(trk.streamlines) == counts[side]
    metrics = json.loads((out / "sub-toshiba" / "metrics" / "sub-toshiba_metrics.json").read_text())
    assert metrics["key"] == "sub-toshiba"
