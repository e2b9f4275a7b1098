"""Longitudinal outputs: session order, change from baseline, test-retest reliability, change
beyond the repeatability coefficient, the group report's section, and when aggregation reruns."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
from contextlib import redirect_stdout
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from cstbatch.outputs.longitudinal import (
    longitudinal_rows,
    ordered_subjects,
    overlap_reliability,
    overlap_rows,
    session_flags,
)
from cstbatch.outputs.reliability import reliability, reliability_rows
from cstbatch.study.sessions import (
    SessionTime,
    acquisition_time,
    natural_key,
    parse_datetime,
    time_sources,
)
from cstbatch.study.spec import SubjectSpec

TRIO = SHARED / "real-dwi" / "sub-trio"


# --------------------------------------------------------------------------- statistics
def test_reliability_matches_a_hand_computed_case():
    # subject A: 1, 3 (m 2, s² 2); subject B: 4, 5, 6 (m 5, s² 1); N = 5, grand mean 3.8
    r = reliability([[1.0, 3.0], [4.0, 5.0, 6.0]])
    assert r["n_subjects"] == 2 and r["n_sessions"] == 5 and r["mean"] == pytest.approx(3.8)
    assert r["wcv"] == pytest.approx(math.sqrt(((math.sqrt(2) / 2) ** 2 + (1 / 5) ** 2) / 2))  # √0.27
    assert r["sem"] == pytest.approx(math.sqrt(1.5)) and r["rc"] == pytest.approx(2.77 * math.sqrt(1.5))
    # MSB = (2·1.8² + 3·1.2²)/1 = 10.8, MSW = 4/3, n0 = (5 − 13/5)/1 = 2.4 → 142/190
    assert r["icc"] == pytest.approx(71 / 95)


def test_icc_matches_shrout_fleiss_published_value():
    # Shrout & Fleiss (1979), Table 2: 6 targets × 4 judges; ICC(1,1) = 0.17 (0.166)
    data = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert reliability(data)["icc"] == pytest.approx(0.166, abs=0.001)


def test_reliability_edge_cases():
    one = reliability([[0.5, 0.52], [0.6]])          # the single-session subject does not count
    assert one["n_subjects"] == 1 and one["icc"] is None and one["rc"] == pytest.approx(2.77 * 0.02 / math.sqrt(2))
    assert reliability([[0.5, "n/a", None, float("nan")]])["n_subjects"] == 0
    assert reliability([[0.0, 0.0], [1.0, 1.0]])["wcv"] is None  # a zero mean: CV undefined
    assert reliability([[1.0, 1.0], [1.0, 1.0]])["icc"] is None  # no variance at all


def _rows():
    """batch_metrics-like rows: sub-01 three sessions (labels out of time order), sub-02 two, sub-03
    one, sub-04 two with one failed; values as strings, as read back from the CSV."""
    fa = {("sub-01", "ses-1"): (0.50, 0.52), ("sub-01", "ses-2"): (0.46, 0.521), ("sub-01", "ses-10"): (0.475, 0.525),
          ("sub-02", "ses-a"): (0.55, 0.54), ("sub-02", "ses-b"): (0.552, 0.541), ("sub-03", "ses-1"): (0.5, 0.5),
          ("sub-04", "ses-1"): (0.45, 0.46), ("sub-04", "ses-2"): (None, None)}
    rows = []
    for (sub, ses), (left, right) in fa.items():
        ok = left is not None
        row = {"participant_id": sub, "session_id": ses, "key": f"{sub}_{ses}", "status": "success" if ok else "failed"}
        if ok:
            row.update({"left_fa_mean": str(left), "right_fa_mean": str(right),
                        "laterality_fa_mean": str((left - right) / (left + right)),
                        "left_volume_mm3": "4000", "right_volume_mm3": "4100"})
        rows.append(row)
    return rows


def test_reliability_rows_use_successful_repeated_sessions_only():
    rel = {(r["metric"], r["side"]): r for r in reliability_rows(_rows())}
    left = rel[("fa_mean", "left")]
    assert left["n_subjects"] == 2 and left["n_sessions"] == 5
    s1, s2 = np.array([0.50, 0.46, 0.475]), np.array([0.55, 0.552])
    expected = math.sqrt(np.mean([(s1.std(ddof=1) / s1.mean()) ** 2, (s2.std(ddof=1) / s2.mean()) ** 2]))
    assert left["wcv"] == pytest.approx(expected)
    assert rel[("volume_mm3", "left")]["wcv"] == 0.0 and rel[("md_mean", "left")]["n_subjects"] == 0


# --------------------------------------------------------------------------- order and change
def test_natural_order_and_datetime_parsing():
    assert sorted(["ses-10", "ses-2", "ses-1"], key=natural_key) == ["ses-1", "ses-2", "ses-10"]
    assert parse_datetime("2020-03-01T10:00:00Z") == datetime(2020, 3, 1, 10)
    assert parse_datetime("2020-03-01T12:00:00+02:00") == datetime(2020, 3, 1, 10)
    assert parse_datetime("2020-03-01") == datetime(2020, 3, 1) and parse_datetime("n/a") is None
    with pytest.raises(ValueError):
        parse_datetime("yesterday")


def test_order_by_label_then_by_time():
    rows = _rows()
    by_label = ordered_subjects(rows, {})
    assert list(by_label) == ["sub-01", "sub-02"]  # sub-03: one session; sub-04: one successful
    assert [r["session_id"] for r in by_label["sub-01"][0]] == ["ses-1", "ses-2", "ses-10"]
    assert by_label["sub-01"][1] == "label"
    times = {"sub-01_ses-1": SessionTime(datetime(2021, 1, 1), "x"), "sub-01_ses-2": SessionTime(datetime(2023, 1, 1), "x"),
             "sub-01_ses-10": SessionTime(datetime(2022, 1, 1), "x"), "sub-02_ses-a": SessionTime(datetime(2022, 1, 1), "x")}
    by_time = ordered_subjects(rows, times)
    assert [r["session_id"] for r in by_time["sub-01"][0]] == ["ses-1", "ses-10", "ses-2"]
    assert by_time["sub-01"][1] == "acq_time" and by_time["sub-02"][1] == "label"  # ses-b has no time


def test_longitudinal_change_and_flag_with_reference_rc():
    rows = _rows()
    rel = reliability_rows(rows)  # 2 subjects: too few for the study's own RC
    out = longitudinal_rows(rows, {}, rel, reference_rc_fa=0.03)
    fa = {(r["key"], r["side"]): r for r in out if r["metric"] == "fa_mean"}
    base, later = fa[("sub-01_ses-1", "left")], fa[("sub-01_ses-2", "left")]
    assert base["change"] == 0 and base["change_beyond_rc"] is None and base["baseline_session"] == "ses-1"
    assert later["change"] == pytest.approx(-0.04) and later["pct_change"] == pytest.approx(-8.0)
    assert later["change_beyond_rc"] == "true" and later["rc"] == 0.03 and later["rc_source"] == "reference"
    assert fa[("sub-01_ses-10", "left")]["change_beyond_rc"] == "false"  # −0.025 is within 0.03
    assert fa[("sub-02_ses-b", "right")]["change_beyond_rc"] == "false"
    assert not [r for r in out if r["participant_id"] in ("sub-03", "sub-04")]
    assert {r["change_beyond_rc"] for r in out if r["metric"] != "fa_mean"} == {None}
    flags = session_flags(out)
    assert flags["sub-01_ses-2"]["change_beyond_rc"] is True and flags["sub-01_ses-2"]["change_beyond_rc_sides"] == ["left"]
    assert flags["sub-02_ses-b"]["change_beyond_rc"] is False and flags["sub-01_ses-1"]["change_beyond_rc"] is None
    no_rc = longitudinal_rows(rows, {}, rel)
    assert {r["change_beyond_rc"] for r in no_rc} == {None}


def test_tract_dice_rows_compare_each_later_session_with_the_baseline():
    rows = _rows()
    rows[1] = {**rows[1], "right_fa_mean": ""}  # sub-01 ses-2: no right CST found
    asked = []

    def dice(key, base, side):
        asked.append((key, base, side))
        return {"sub-01_ses-2": 0.8, "sub-01_ses-10": 0.6, "sub-02_ses-b": 0.9}[key]

    out = overlap_rows(rows, {}, dice)
    got = {(r["key"], r["side"]): r["value"] for r in out}
    assert got == {("sub-01_ses-2", "left"): 0.8, ("sub-01_ses-2", "right"): None,
                   ("sub-01_ses-10", "left"): 0.6, ("sub-01_ses-10", "right"): 0.6,
                   ("sub-02_ses-b", "left"): 0.9, ("sub-02_ses-b", "right"): 0.9}
    assert {(k, b) for k, b, _ in asked} == {("sub-01_ses-2", "sub-01_ses-1"), ("sub-01_ses-10", "sub-01_ses-1"),
                                            ("sub-02_ses-b", "sub-02_ses-a")}  # baselines, failed sessions left out
    assert {r["metric"] for r in out} == {"tract_dice"} and {r["session_index"] for r in out} == {1, 2}
    rel = {r["side"]: r for r in overlap_reliability(out)}
    assert rel["left"]["mean"] == pytest.approx(((0.8 + 0.6) / 2 + 0.9) / 2)  # subjects weigh alike
    assert rel["right"]["mean"] == pytest.approx((0.6 + 0.9) / 2) and rel["right"]["n_subjects"] == 2
    assert rel["left"]["n_sessions"] == 5 and rel["left"]["icc"] is None


def test_template_mask_cells_hold_the_points_that_visit_them():
    from cstbatch.steps.metrics import TEMPLATE_CELLS_SHAPE, template_mask, visited_cells
    from cstbatch.steps.register import Registration

    line = np.linspace([-20.0, -25.0, -50.0], [-30.0, -15.0, 60.0], 60)
    reg = Registration(subject_to_mni=np.eye(4))
    mask, affine = template_mask([line], reg)
    assert mask.shape == TEMPLATE_CELLS_SHAPE and mask.sum() == len(visited_cells([line], reg))
    centres = np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]
    # every visited cell's centre lies within a cell (1 mm per axis) of the line, and every point is in one
    from scipy.spatial import cKDTree
    dense = np.linspace(line[0], line[-1], 2000)
    assert np.all(np.abs(centres[cKDTree(centres).query(dense)[1]] - dense) <= 1.0 + 1e-9)
    assert mask.dtype == np.uint8 and template_mask([], reg)[0].sum() == 0


def test_study_rc_is_used_from_five_subjects():
    rng = np.random.default_rng(3)
    rows = []
    for i in range(6):
        true = 0.45 + 0.02 * i
        for j in range(2):
            v = true + rng.normal(0, 0.005)
            rows.append({"participant_id": f"sub-{i}", "session_id": f"ses-{j + 1}", "key": f"sub-{i}_ses-{j + 1}",
                         "status": "success", "left_fa_mean": v, "right_fa_mean": v})
    rows[-1]["left_fa_mean"] += 0.1  # sub-5 ses-2: a real change
    rel = reliability_rows(rows)
    rc = next(r for r in rel if r["metric"] == "fa_mean" and r["side"] == "left")["rc"]
    out = longitudinal_rows(rows, {}, rel, reference_rc_fa=1.0)
    left = {r["key"]: r for r in out if r["metric"] == "fa_mean" and r["side"] == "left"}
    assert left["sub-5_ses-2"]["rc_source"] == "study" and left["sub-5_ses-2"]["rc"] == pytest.approx(rc)
    assert left["sub-5_ses-2"]["change_beyond_rc"] == ("true" if 0.1 > rc else "false")


# --------------------------------------------------------------------------- acquisition times
def _bids_session(root: Path, sub: str, ses: str, sidecar: dict | None = None) -> SubjectSpec:
    dwi = root / sub / ses / "dwi"
    dwi.mkdir(parents=True, exist_ok=True)
    image = dwi / f"{sub}_{ses}_dwi.nii.gz"
    image.write_bytes(b"")
    if sidecar is not None:
        (dwi / f"{sub}_{ses}_dwi.json").write_text(json.dumps(sidecar))
    return SubjectSpec(sub, ses, image)


def test_acquisition_time_sources_in_priority_order(tmp_path):
    a = _bids_session(tmp_path, "sub-01", "ses-1", {"AcquisitionDateTime": "2020-05-01T09:00:00",
                                                    "AcquisitionTime": "09:00:00"})
    assert acquisition_time(a) == SessionTime(datetime(2020, 5, 1, 9), "sidecar AcquisitionDateTime")
    (tmp_path / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tacq_time\nses-1\t2021-01-02\n")
    assert acquisition_time(a) == SessionTime(datetime(2021, 1, 2, 9), "sessions.tsv acq_time + sidecar AcquisitionTime")
    scans = tmp_path / "sub-01" / "ses-1" / "sub-01_ses-1_scans.tsv"
    scans.write_text("filename\tacq_time\ndwi/sub-01_ses-1_dwi.nii.gz\t2022-03-04T05:06:07\n")
    assert acquisition_time(a) == SessionTime(datetime(2022, 3, 4, 5, 6, 7), "scans.tsv acq_time")
    a.session_date = "2023-01-01T08:00"
    assert acquisition_time(a).source == "manifest session_date"
    assert sorted(p.name for p in time_sources(a)) == ["sub-01_ses-1_dwi.json", "sub-01_ses-1_scans.tsv",
                                                       "sub-01_sessions.tsv"]
    only_clock = _bids_session(tmp_path, "sub-02", "ses-1", {"AcquisitionTime": "15:19:10.4725"})
    assert acquisition_time(only_clock) == SessionTime(None, None)  # a time of day without a date
    bad = _bids_session(tmp_path, "sub-03", "ses-1", {"AcquisitionDateTime": "garbage"})
    assert acquisition_time(bad) == SessionTime(None, None)


def test_manifest_session_date_is_validated(tmp_path):
    from cstbatch.errors import ManifestError
    from cstbatch.study.manifest import load_manifest

    path = tmp_path / "m.json"
    entries = [{"id": "sub-01", "session": "ses-1", "nifti": "a.nii.gz", "session_date": "2020-01-05"},
               {"id": "sub-01", "session": "ses-2", "nifti": "b.nii.gz", "session_date": "5 Jan"}]
    path.write_text(json.dumps({"subjects": entries}))
    with pytest.raises(ManifestError, match=r"subjects\[1\].session_date: '5 Jan' is not an ISO 8601 date"):
        load_manifest(path)
    entries.pop()
    path.write_text(json.dumps({"subjects": entries}))
    specs, _ = load_manifest(path)
    assert acquisition_time(specs[0]) == SessionTime(datetime(2020, 1, 5), "manifest session_date")


@pytest.mark.skipif(not TRIO.is_dir(), reason="../shared/real-dwi not present")
def test_trio_test_retest_pair_order(tmp_path):
    """The Trio repeats are one series split in two: identical sidecars with AcquisitionTime and no
    date, so time cannot order them and the label does (rep1, rep2). A scans.tsv that says
    otherwise wins."""
    from cstbatch.study import load_study

    study = load_study(bids_dir=TRIO.parent, output_dir=tmp_path / "out", participant_label=["trio"])
    times = {s.key: acquisition_time(s) for s in study.subjects}
    assert set(times) == {"sub-trio_ses-rep1", "sub-trio_ses-rep2"}
    assert all(t == SessionTime(None, None) for t in times.values())
    assert all(p.suffix == ".json" for s in study.subjects for p in time_sources(s))
    rows = [{"participant_id": "sub-trio", "session_id": s.session_id, "key": s.key, "status": "success",
             "left_fa_mean": 0.5} for s in reversed(study.subjects)]
    sessions, source = ordered_subjects(rows, times)["sub-trio"]
    assert [r["session_id"] for r in sessions] == ["ses-rep1", "ses-rep2"] and source == "label"

    copy = tmp_path / "bids"
    for ses, when in (("ses-rep1", "2019-06-01T15:30:00"), ("ses-rep2", "2019-06-01T15:19:10")):
        shutil.copytree(TRIO / ses / "dwi", copy / "sub-trio" / ses / "dwi",
                        ignore=shutil.ignore_patterns("*.nii.gz"))
        (copy / "sub-trio" / ses / "dwi" / f"sub-trio_{ses}_dwi.nii.gz").write_bytes(b"")
        (copy / "sub-trio" / ses / f"sub-trio_{ses}_scans.tsv").write_text(
            f"filename\tacq_time\ndwi/sub-trio_{ses}_dwi.nii.gz\t{when}\n")
    study = load_study(bids_dir=copy, output_dir=tmp_path / "out2")
    times = {s.key: acquisition_time(s) for s in study.subjects}
    sessions, source = ordered_subjects(rows, times)["sub-trio"]
    assert [r["session_id"] for r in sessions] == ["ses-rep2", "ses-rep1"] and source == "acq_time"


# --------------------------------------------------------------------------- files and report
def _read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_write_longitudinal_tables_and_report_section(tmp_path):
    from cstbatch.outputs.aggregate import write_longitudinal

    rows = _rows()
    specs = [SubjectSpec(r["participant_id"], r["session_id"], tmp_path / "x.nii.gz") for r in rows]
    for r in rows[:3]:  # profiles of sub-01's sessions
        m = tmp_path / r["participant_id"] / r["session_id"] / "metrics" / f"{r['key']}_metrics.json"
        m.parent.mkdir(parents=True)
        shift = float(r["left_fa_mean"]) - 0.5
        prof = {side: {"profiles": {"fa": list(np.linspace(0.6, 0.4, 20) + (shift if side == "left" else 0))}}
                for side in ("left", "right")}
        m.write_text(json.dumps({"metrics": prof}))
    flags, _ = write_longitudinal(tmp_path, specs, rows, 0.03)
    rel = _read_tsv(tmp_path / "reliability.tsv")
    assert list(rel[0]) == ["metric", "side", "n_subjects", "n_sessions", "mean", "wcv", "icc", "sem", "rc"]
    left = next(r for r in rel if r["metric"] == "fa_mean" and r["side"] == "left")
    s1, s2 = np.array([0.50, 0.46, 0.475]), np.array([0.55, 0.552])
    assert float(left["wcv"]) == pytest.approx(math.sqrt(np.mean([(s1.std(ddof=1) / s1.mean()) ** 2,
                                                                   (s2.std(ddof=1) / s2.mean()) ** 2])), abs=1e-12)
    assert left["icc"] != "n/a" and next(r for r in rel if r["metric"] == "md_mean")["wcv"] == "n/a"
    long = _read_tsv(tmp_path / "longitudinal.tsv")
    assert list(long[0])[:3] == ["participant_id", "session_id", "key"]
    for column in ("metric", "side", "value", "baseline_session", "change", "pct_change", "change_beyond_rc"):
        assert column in long[0]
    assert {r["participant_id"] for r in long} == {"sub-01", "sub-02"}
    assert flags["sub-01_ses-2"]["change_beyond_rc"] is True


def test_group_report_longitudinal_section(tmp_path):
    from cstbatch.outputs.aggregate import write_longitudinal
    from cstbatch.outputs.group_report import write_group_report

    rows = _rows()
    specs = [SubjectSpec(r["participant_id"], r["session_id"], tmp_path / "x.nii.gz") for r in rows]
    for r in rows[:3]:
        m = tmp_path / r["participant_id"] / r["session_id"] / "metrics" / f"{r['key']}_metrics.json"
        m.parent.mkdir(parents=True)
        shift = float(r["left_fa_mean"]) - 0.5
        m.write_text(json.dumps({"metrics": {side: {"profiles": {"fa": list(np.linspace(0.6, 0.4, 20)
                                                                         + (shift if side == "left" else 0))}}
                                             for side in ("left", "right")}}))
    _, repeated = write_longitudinal(tmp_path, specs, rows, 0.03)
    summary = {"study": "demo", "totals": {"sessions": len(rows)}, "sessions": []}
    text = write_group_report(tmp_path, summary, rows, repeated).read_text(encoding="utf-8")
    section = text.split('id="longitudinal"')[1].split('id="qc"')[0]
    assert "2 subjects with repeated sessions (5 sessions)" in section
    assert section.count("data:image/png;base64,") == 3  # trajectories, change vs RC, profile difference
    assert "FA profile difference: sub-01" in section and "sub-01_ses-2" in section
    assert re.search(r"<td>fa_mean</td><td>left</td>", section)
    # a later session whose image stops in the pons: its left profile starts higher (metrics 11)
    m2 = tmp_path / "sub-01" / rows[1]["session_id"] / "metrics" / f"{rows[1]['key']}_metrics.json"
    data = json.loads(m2.read_text())
    data["metrics"]["left"]["profile_start_z_mni"] = -12.0
    data["metrics"]["right"]["profile_start_z_mni"] = -18.0
    m2.write_text(json.dumps(data))
    for r in (rows[0], rows[2]):
        mj = tmp_path / "sub-01" / r["session_id"] / "metrics" / f"{r['key']}_metrics.json"
        d = json.loads(mj.read_text())
        for side in ("left", "right"):
            d["metrics"][side]["profile_start_z_mni"] = -18.0
        mj.write_text(json.dumps(d))
    text = write_group_report(tmp_path, summary, rows, repeated).read_text(encoding="utf-8")
    section = text.split('id="longitudinal"')[1].split('id="qc"')[0]
    assert "The left profiles start at other levels (MNI z -18 and -12" in section
    assert section.count("data:image/png;base64,") == 3  # the right side is still drawn
    without = write_group_report(tmp_path / "none", summary, rows[5:6], None).read_text(encoding="utf-8")
    assert "No subject has two or more successful sessions." in without
    one = [r for r in rows if r["participant_id"] == "sub-01"]
    _, rep1 = write_longitudinal(tmp_path / "one", specs[:len(one)], one, 0.03)
    single = write_group_report(tmp_path / "one", summary, one, rep1).read_text(encoding="utf-8")
    assert re.search(r"1 subject with repeated sessions \(\d sessions\)\. Sessions are ordered by", single)


# --------------------------------------------------------------------------- aggregation reruns
def test_aggregation_reruns_only_when_session_times_or_the_reference_rc_change(tmp_path):
    """A real (tiny) two-session BIDS subject: the aggregation is one task that depends on the
    scans.tsv stating the times and on reference_rc_fa, and nothing else reruns for them."""
    from conftest import write_tiny_dwi

    from cstbatch.engine.runner import run_doit
    from cstbatch.study import load_study

    bids, out = tmp_path / "bids", tmp_path / "out"
    (bids / "dataset_description.json").parent.mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "tiny", "BIDSVersion": "1.10.0"}')
    times = {"ses-1": "2020-01-01T10:00:00", "ses-2": "2021-01-01T10:00:00"}

    def write_scans():
        for ses, when in times.items():
            (bids / "sub-01" / ses / f"sub-01_{ses}_scans.tsv").write_text(
                f"filename\tacq_time\ndwi/sub-01_{ses}_dwi.nii.gz\t{when}\n")

    for i, ses in enumerate(times):
        write_tiny_dwi(bids / "sub-01" / ses / "dwi" / f"sub-01_{ses}_dwi", seed=i)
    write_scans()

    def run(**options):
        study = load_study(bids_dir=bids, output_dir=out, options={"generate_pdf": False, **options})
        buf = io.StringIO()
        with redirect_stdout(buf):
            code = run_doit(study, ["run"])
        return code, re.findall(r"^\.  (\S+)", buf.getvalue(), flags=re.MULTILINE)

    def order():
        rows = [r for r in _read_tsv(out / "longitudinal.tsv") if r["metric"] == "fa_mean" and r["side"] == "left"]
        return [(r["session_id"], r["session_index"], r["order_source"]) for r in rows]

    code, ran = run()
    assert code == 0 and "aggregate" in ran
    assert order() == [("ses-1", "0", "acq_time"), ("ses-2", "1", "acq_time")]
    # (the tiny phantom has no CST: counts are 0 and FA is missing, which the tables must carry)
    rel = next(r for r in _read_tsv(out / "reliability.tsv")
               if r["metric"] == "streamline_count" and r["side"] == "left")
    assert (rel["n_subjects"], rel["n_sessions"], rel["icc"], rel["wcv"], rel["rc"]) == ("1", "2", "n/a", "n/a", "0.0")
    assert run() == (0, [])
    times["ses-1"] = "2022-01-01T10:00:00"  # the first scan turns out to be the later one
    write_scans()
    assert run() == (0, ["aggregate"])
    assert order() == [("ses-2", "0", "acq_time"), ("ses-1", "1", "acq_time")]
    summary = json.loads((out / "batch_summary.json").read_text())
    later = next(s for s in summary["sessions"] if s["session"] == "ses-1")
    assert later["longitudinal"]["baseline_session"] == "ses-2" and later["longitudinal"]["rc_fa"]["left"] is None
    assert run(reference_rc_fa=0.02) == (0, ["aggregate"])
    fa = [r for r in _read_tsv(out / "longitudinal.tsv") if r["metric"] == "fa_mean" and r["side"] != "laterality"]
    assert {(r["rc"], r["rc_source"], r["change_beyond_rc"]) for r in fa} == {("0.02", "reference", "n/a")}
    assert run(reference_rc_fa=0.02) == (0, [])
    # the time files count by content, named relative to the study: moving the study and the
    # output (a copy without keeping times) reruns nothing, aggregation included
    import shutil
    moved_bids, moved_out = tmp_path / "moved" / "bids", tmp_path / "moved" / "out"
    shutil.copytree(bids, moved_bids, copy_function=shutil.copy)
    shutil.copytree(out, moved_out, copy_function=shutil.copy)
    shutil.rmtree(bids)
    shutil.rmtree(out)
    bids, out = moved_bids, moved_out
    assert run(reference_rc_fa=0.02) == (0, [])


def test_sample_study_sub01_sessions_are_ordered_by_label(tmp_path):
    """The sample study's sub-01 has two sessions and no acquisition times: label order, and the
    aggregation of the sample study does not depend on (task-made) time files."""
    from cstbatch.engine.tasks import aggregate_task
    from cstbatch.study import load_study

    study = load_study(output_dir=tmp_path / "out")
    times = {s.key: acquisition_time(s) for s in study.subjects}
    rows = [{"participant_id": s.subject_id, "session_id": s.session_id or "n/a", "key": s.key,
             "status": "success", "left_fa_mean": 0.5 + 0.01 * i} for i, s in enumerate(reversed(study.subjects))]
    ordered = ordered_subjects(rows, times)
    assert list(ordered) == ["sub-01"]
    assert [r["session_id"] for r in ordered["sub-01"][0]] == ["ses-01", "ses-02"] and ordered["sub-01"][1] == "label"
    task = aggregate_task(study)
    assert all(str(p).endswith(".json") and "_step-" in str(p) for p in task["file_dep"])


def test_profiles_that_start_at_other_levels_are_not_differenced():
    """Since metrics 11 a profile starts at the lowest level the extraction requires, higher on an
    image that stops in the pons; node k of the two sessions would be other levels."""
    from cstbatch.outputs.longitudinal_report import same_start

    p = {"left": np.ones(20), "right": np.ones(20)}
    a, b, notes = same_start(p, {"left": -18.0, "right": -18.0}, p, {"left": -12.0, "right": -18.0})
    assert set(a) == set(b) == {"right"} and len(notes) == 1 and "left" in notes[0]
    a, b, notes = same_start(p, {"left": None, "right": None}, p, {"left": None, "right": None})
    assert set(a) == {"left", "right"} and not notes  # written before metrics 11: as before
