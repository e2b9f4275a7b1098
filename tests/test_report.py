"""Session report (HTML/PDF) and group report on tiny synthetic sessions built on disk."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pytest.importorskip("matplotlib")

from cstbatch.outputs.figures import canonical, make_view, world_centroid  # noqa: E402
from cstbatch.steps.metrics import compute_metrics  # noqa: E402
from cstbatch.steps.report import (SessionReportInput, _views_for_tracts, cst_voxel_masks,  # noqa: E402
                                   load_streamlines, report_html)
from cstbatch.steps.track import save_trk  # noqa: E402

SHAPE = (20, 24, 20)


def grid_for(orientation: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """2 mm voxels centred on the world origin. ``LAS`` flips voxel x; ``oblique``: voxel axes
    (A, I, L) rotated by 12° about z — what a sagittal acquisition tilted in-plane may give."""
    if orientation == "oblique":
        shape = (24, 20, 20)
        perm = np.array([[0.0, 0.0, -2.0], [2.0, 0.0, 0.0], [0.0, -2.0, 0.0]])
        t = np.deg2rad(12)
        rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
        a = np.eye(4)
        a[:3, :3] = rot @ perm
    else:
        shape = SHAPE
        a = np.diag([-2.0 if orientation == "LAS" else 2.0, 2.0, 2.0, 1.0])
    a[:3, 3] = -a[:3, :3] @ ((np.array(shape) - 1) / 2)
    return a, shape


def world_grid(affine, shape) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1).T
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(tuple(shape) + (3,))


def tract(side: str) -> list[np.ndarray]:
    """Bundle from brainstem (z = −16) to cortex (z = +16); left at x ≈ −8 mm, right at +8 mm."""
    x0 = -8.0 if side == "left" else 8.0
    z = np.linspace(-16, 16, 33)
    out = []
    for dx in (-1.5, 0.0, 1.5):
        for dy in (-1.5, 0.0, 1.5):
            out.append(np.c_[np.full_like(z, x0 + dx), dy + 0.05 * z, z])
    return out


def make_session(root: Path, orientation: str = "LAS", key: str = "sub-01_ses-01") -> SessionReportInput:
    """A complete fake session: maps defined in world space (same anatomy whatever the affine)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    assert matplotlib
    affine, shape = grid_for(orientation)
    w = world_grid(affine, shape)
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    brain = (x / 18) ** 2 + (y / 22) ** 2 + (z / 18) ** 2 <= 1
    fa = np.where(brain, 0.2, 0.0).astype(np.float32)
    md = np.where(brain, 0.8e-3, 0.0).astype(np.float32)
    for sx in (-8, 8):
        col = (np.abs(x - sx) < 3.5) & (np.abs(y) < 3.5) & brain
        fa[col], md[col] = 0.6, 0.6e-3
    dip = (np.abs(x + 8) < 3.5) & (np.abs(y) < 3.5) & (z > 0) & (z < 7)  # lesion-like dip, left only
    fa[dip], md[dip] = 0.3, 1.0e-3
    d = root / "dwi"
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, arr in (("fa", fa), ("md", md), ("rd", md * 0.8), ("ad", md * 1.4)):
        paths[name] = d / f"{key}_param-{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, affine), str(paths[name]))
    mask_path = d / f"{key}_mask.nii.gz"
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), str(mask_path))
    dwi = np.stack([brain * 100.0, brain * (60 - 30 * fa), brain * (55 - 25 * fa)], axis=-1).astype(np.float32)
    dwi_path = d / f"{key}_dwi.nii.gz"
    nib.save(nib.Nifti1Image(dwi, affine), str(dwi_path))
    ref = nib.Nifti1Image(fa, affine)
    left, right = tract("left"), tract("right")
    t = root / "tractography"
    save_trk(left, ref, t / f"{key}_cstL.trk")
    save_trk(right, ref, t / f"{key}_cstR.trk")
    metrics = compute_metrics(left, right, {"fa": fa, "md": md, "rd": md * 0.8, "ad": md * 1.4}, affine,
                              {"profile_nodes": 20, "min_cst_streamlines": 1})
    fig = Figure(figsize=(3, 1.5), dpi=60)
    FigureCanvasAgg(fig)
    fig.add_subplot(1, 1, 1).imshow(fa[:, :, 10].T, cmap="gray", origin="lower")
    qc = root / "figures" / f"{key}_registration_qc.png"
    qc.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(qc, format="png", metadata={"Software": None})
    impl = {"name": "builtin", "version": "1", "source": "built-in"}
    records = {
        "ingest": {"status": "success", "implementation": impl, "duration_s": 0.5, "info": {}},
        "track": {"status": "success", "implementation": {**impl, "name": "csd_deterministic"},
                  "duration_s": 12.25, "peak_rss_mb": 310.0, "info": {"streamlines": 1234}},
        "register": {"status": "success", "implementation": {**impl, "name": "icbm2009a"}, "duration_s": 4.0,
                     "info": {"quality": 0.81, "quality_metric": "pearson_r_fa_vs_warped_template",
                              "atlas": "icbm2009a", "atlas_version": "1"}},
        "extract": {"status": "success", "implementation": {**impl, "name": "endpoint"}, "duration_s": 1.0,
                    "info": {"whole_brain": 1234, "cst_streamlines": {"left": 9, "right": 9}}},
        "metrics": {"status": "success", "implementation": impl, "duration_s": 0.3, "info": {}},
    }
    options = {"profile_nodes": 20, "reporter": "html", "generate_pdf": False}
    provenance = {"cstbatch_version": "0.1.0", "libraries": {"python": "3.x", "nibabel": nib.__version__},
                  "options": options, "steps": {s: {"implementation": r["implementation"]} for s, r in records.items()},
                  "input_sha256": {"dwi": "0" * 64}, "origin": "synthetic"}
    return SessionReportInput(
        key=key, subject=key.split("_")[0], session=key.split("_")[1] if "_" in key else None, options=options,
        fa=paths["fa"], maps=paths, mask=mask_path, dwi=dwi_path, cst_left=t / f"{key}_cstL.trk",
        cst_right=t / f"{key}_cstR.trk", rois={}, registration_qc=qc, metrics_json=root / "metrics.json",
        metrics=metrics, provenance=provenance, records=records)


@pytest.fixture(scope="module")
def las_session(tmp_path_factory) -> SessionReportInput:
    return make_session(tmp_path_factory.mktemp("las"), "LAS")


@pytest.fixture(scope="module")
def reports(las_session, tmp_path_factory):
    """The same session reported twice with ``generate_pdf`` (for the determinism checks)."""
    root = tmp_path_factory.mktemp("reports")
    return {name: (root / name, report_html(las_session, root / name, {"generate_pdf": True}))
            for name in ("pdf1", "pdf2")}


def test_html_report_content_and_determinism(las_session, reports):
    out, written = reports["pdf1"]
    html_path = out / "sub-01_ses-01_report.html"
    assert written[0] == html_path
    text = html_path.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") >= 5  # overlay, profiles, laterality, mask QC, registration QC
    lf, rf = las_session.metrics["left"]["fa_mean"], las_session.metrics["right"]["fa_mean"]
    pct = abs(lf - rf) / rf * 100
    assert lf < rf
    assert f"Left CST FA is {pct:.0f}% lower than right CST FA" in text
    assert "laterality index" in text
    assert "1234" in text and "0.810" in text  # whole-brain streamlines, registration quality
    assert "csd_deterministic" in text and "cstbatch 0.1.0" in text
    assert "sub-01" in text and "ses-01" in text
    assert "Only 9 left CST streamlines" in text  # QC flag (< 10)
    assert not re.search(r"20\d\d-\d\d-\d\d", text)  # no dates
    assert len(text.encode()) < 1_500_000
    assert (reports["pdf2"][0] / html_path.name).read_bytes() == html_path.read_bytes()


def test_report_names_the_levels_a_truncated_image_used(las_session, tmp_path):
    """A slab cut at both ends: the report says where the CST was started and ended, and why."""
    import dataclasses
    import html

    metrics = {**las_session.metrics, "extraction": {
        "inferior_levels": ["pons"], "fov_truncated": True,
        "superior_end": "precentral gyrus, or the image's top under it (MNI z >= 31)", "superior_end_at_image_top": True}}
    session = dataclasses.replace(las_session, metrics=metrics)
    text = html.unescape(report_html(session, tmp_path, {"generate_pdf": False})[0].read_text(encoding="utf-8"))
    assert "CST starts in (lowest levels used)" in text and "pons — field of view truncated" in text
    assert "CST ends at" in text and "the image's top under it (MNI z >= 31) — the image stops under the vertex" in text
    full = dataclasses.replace(las_session, metrics={**las_session.metrics, "extraction": {
        "inferior_levels": ["medulla", "pons"], "fov_truncated": False, "superior_end": "precentral gyrus"}})
    text = report_html(full, tmp_path / "full", {"generate_pdf": False})[0].read_text(encoding="utf-8")
    assert "CST starts in" in text and "CST ends at" in text and "stops under the vertex" not in text


def test_pdf_report_is_valid_and_deterministic(reports):
    out, written = reports["pdf1"]
    pdf = out / "sub-01_ses-01_report.pdf"
    assert [p.name for p in written] == ["sub-01_ses-01_report.html", "sub-01_ses-01_report.pdf"]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    pages = int(re.search(rb"/Type\s*/Pages\b.*?/Count\s+(\d+)", data, re.S).group(1))
    assert pages >= 2
    assert b"CreationDate" not in data
    assert (reports["pdf2"][0] / pdf.name).read_bytes() == data


@pytest.mark.parametrize("orientation", ["LAS", "RAS", "oblique"])
def test_left_cst_overlay_is_on_the_subjects_left(tmp_path, orientation):
    s = make_session(tmp_path, orientation)
    streamlines = {"left": load_streamlines(s.cst_left), "right": load_streamlines(s.cst_right)}
    for img in (nib.load(str(s.fa)), canonical(nib.load(str(s.fa)))):
        masks = cst_voxel_masks(streamlines, img)
        assert masks["left"].any() and masks["right"].any()
        assert world_centroid(masks["left"], img.affine)[0] < 0
        assert world_centroid(masks["right"], img.affine)[0] > 0
    # as displayed: radiological puts the subject's left on the image's right, and says so
    img = canonical(nib.load(str(s.fa)))
    masks = cst_voxel_masks(streamlines, img)
    fa = np.asarray(img.dataobj)
    for convention, left_edge in (("radiological", "right"), ("neurological", "left")):
        views = _views_for_tracts(fa, masks, img.affine, convention)
        for view in views[:2]:  # axial, coronal
            labels = view.edge_labels(img.affine)
            assert labels[left_edge] == "L" and {labels["left"], labels["right"]} == {"L", "R"}
            cols = np.nonzero(view.take(masks["left"], slab=2).any(axis=0))[0]
            half = view.take(fa).shape[1] / 2
            assert (cols.mean() > half) == (left_edge == "right")
        assert views[0].edge_labels(img.affine)["top"] == "A"
        assert views[1].edge_labels(img.affine)["top"] == "S"
    # the labels come from the affine, also for a grid that was not reoriented
    raw = nib.load(str(s.fa))
    if orientation != "oblique":
        view = make_view("axial", 2, 10, raw.affine, "radiological")
        raw_left = cst_voxel_masks(streamlines, raw)["left"]
        cols = np.nonzero(view.take(raw_left, slab=3).any(axis=0))[0]
        assert view.edge_labels(raw.affine)["right"] == "L" and cols.mean() > SHAPE[0] / 2


def test_report_labels_every_slice(las_session, tmp_path):
    from cstbatch.outputs.figures import style
    from cstbatch.steps.report import tract_overlay_figure

    img = canonical(nib.load(str(las_session.fa)))
    masks = cst_voxel_masks({"left": load_streamlines(las_session.cst_left),
                             "right": load_streamlines(las_session.cst_right)}, img)
    with style():
        fig = tract_overlay_figure(img, masks)
        for ax in fig.axes:
            letters = {t.get_text() for t in ax.texts}
            assert len(letters & {"L", "R", "A", "P", "S", "I"}) >= 4
            if "sagittal" not in ax.get_title():
                assert {"L", "R"} <= letters


def test_report_without_streamlines_or_dwi(tmp_path):
    """Empty CSTs (a failed extraction's look), no DWI file: the report still says what it can."""
    s = make_session(tmp_path, "RAS", key="sub-02")
    ref = nib.load(str(s.fa))
    save_trk([], ref, s.cst_left)
    save_trk([], ref, s.cst_right)
    s.dwi.unlink()
    s.registration_qc.unlink()
    s.metrics = compute_metrics([], [], {"fa": np.asarray(ref.dataobj)}, ref.affine, {"profile_nodes": 20})
    s.records["register"]["info"]["quality"] = -0.2
    stale = tmp_path / "out" / "sub-02_report.pdf"
    stale.parent.mkdir()
    stale.write_bytes(b"%PDF-1.4 old")
    [html_path] = report_html(s, tmp_path / "out", {})  # no generate_pdf: no PDF, a stale one removed
    assert not stale.exists()
    text = html_path.read_text(encoding="utf-8")
    assert html_path.name == "sub-02_report.html"
    assert "No left CST streamlines were found" in text and "No right CST streamlines were found" in text
    assert "FA cannot be compared" in text and "Registration quality is low (r = −0.20" in text
    assert "Brain mask outline on the FA map" in text and "registration QC figure is missing" in text


# --------------------------------------------------------------------------- group report
def _rows(n: int = 8):
    rows = []
    for i in range(n):
        fa_l = 0.50 + 0.005 * ((i * 7) % 5)
        rows.append({"participant_id": f"sub-{i:02d}", "session_id": "ses-01", "key": f"sub-{i:02d}_ses-01",
                     "status": "success", "left_fa_mean": fa_l, "right_fa_mean": 0.51 + 0.004 * (i % 3),
                     "left_streamline_count": 100 + i, "right_streamline_count": 98 + i,
                     "left_volume_mm3": 4000 + 10 * i, "right_volume_mm3": 4020 + 8 * i,
                     "laterality_fa_mean": (fa_l - 0.51) / (fa_l + 0.51), "laterality_volume_mm3": 0.001 * i})
    rows[3]["left_fa_mean"] = "0.31"  # strings, as read back from batch_metrics.csv
    rows[3]["laterality_fa_mean"] = -0.25
    return rows


def _summary(rows):
    sessions = [{"key": r["key"], "subject": r["participant_id"], "session": r["session_id"], "status": "success",
                 "last_step": "report", "failed_step": None, "error_category": None, "error": None,
                 "log": f"logs/{r['key']}.log"} for r in rows]
    sessions.append({"key": "sub-99_ses-01", "subject": "sub-99", "session": "ses-01", "status": "failed",
                     "last_step": "track", "failed_step": "track", "error_category": "processing",
                     "error": "ValueError: no <seeds> in mask", "log": "logs/sub-99_ses-01.log"})
    return {"study": "demo", "totals": {"sessions": len(sessions), "success": len(rows), "failed": 1, "skipped": 0,
                                        "pending": 0}, "sessions": sessions}


def test_group_report(tmp_path):
    from cstbatch.outputs.group_report import find_outliers, robust_z, write_group_report

    rows = _rows()
    rows.append({"participant_id": "sub-99", "session_id": "ses-01", "key": "sub-99_ses-01", "status": "failed"})
    rec = tmp_path / "sub-05" / "ses-01" / "steps" / "sub-05_ses-01_step-register.json"
    rec.parent.mkdir(parents=True)
    rec.write_text('{"status": "success", "info": {"quality": 0.3}}')
    path = write_group_report(tmp_path, _summary(rows[:-1]), rows)
    assert path == tmp_path / "group_report.html"
    text = path.read_text(encoding="utf-8")
    assert 'href="sub-00/ses-01/metrics/sub-00_ses-01_report.html"' in text
    assert text.count("data:image/png;base64,") >= 2
    failed = text.split('id="failed"')[1]
    assert "sub-99_ses-01" in failed and "track" in failed and "processing" in failed
    assert "no &lt;seeds&gt; in mask" in failed and 'href="logs/sub-99_ses-01.log"' in failed
    outliers = find_outliers(rows)
    hit = [o for o in outliers if o["key"] == "sub-03_ses-01" and o["metric"] == "left_fa_mean"]
    assert hit and hit[0]["z"] < -3
    assert not [o for o in outliers if o["key"] != "sub-03_ses-01" and o["metric"] == "left_fa_mean"]
    outlier_section = text.split('id="outliers"')[1]
    assert "sub-03_ses-01" in outlier_section and "left_fa_mean" in outlier_section
    assert "sub-05_ses-01: registration r = 0.30" in text.split('id="qc"')[1]
    z = robust_z([1.0, 1.1, 0.9, 1.0, 1.05, 5.0, float("nan")])
    assert z[5] > 3 and np.isnan(z[6]) and abs(z[0]) < 1
    assert write_group_report(tmp_path, _summary(rows[:-1]), rows).read_bytes() == path.read_bytes()


def test_group_report_without_metrics(tmp_path):
    from cstbatch.outputs.group_report import write_group_report

    summary = {"study": "empty", "totals": {"sessions": 1, "success": 0, "failed": 1, "skipped": 0, "pending": 0},
               "sessions": [{"key": "sub-01", "subject": "sub-01", "session": None, "status": "failed",
                             "last_step": "ingest", "failed_step": "ingest", "error_category": "input",
                             "error": "bad bvec", "log": None}]}
    text = write_group_report(tmp_path, summary, [{"participant_id": "sub-01", "key": "sub-01",
                                                   "status": "failed"}]).read_text()
    assert "bad bvec" in text and "sub-01" in text


def test_profile_difference_ignores_one_noisy_node_near_the_end():
    """A three-node dip in the lower brainstem is scatter, a broad difference mid-tract is a
    finding, and the sentence gives its size against the spread across streamlines."""
    from cstbatch.steps.report import profile_difference, summary_sentences

    n = 100
    left = np.full(n, 0.55)
    right = np.full(n, 0.55)
    right[7:10] = 0.40  # 7-9 % along the tract: inside the end share left out
    left[40:60] = 0.62  # a focal rise on the left mid-tract, 20 nodes wide
    sd = np.full(n, 0.05)
    side = lambda p: {"profiles": {"fa": list(p)}, "profiles_std": {"fa": list(sd)}}  # noqa: E731
    metrics = {"left": side(left), "right": side(right)}
    d = profile_difference(metrics, "fa")
    assert 40 <= d["node"] < 60
    assert d["relative"] == pytest.approx(0.07 / 0.55)
    assert d["effect"] == pytest.approx(0.07 / 0.05)
    text = " ".join(summary_sentences(metrics))
    assert "13% higher" in text and "1.4 times the spread across streamlines" in text
    sd[:] = 0.1  # the same difference within a wider spread
    metrics = {"left": side(left), "right": side(right)}
    assert "only 0.7 times the spread across streamlines there, so possibly scatter" in " ".join(summary_sentences(metrics))
    right[40:60] = 0.62  # no difference left but the dip
    metrics = {"left": side(left), "right": side(right)}
    assert abs(profile_difference(metrics, "fa")["relative"]) < 0.10
    assert "No focal left–right FA difference" in " ".join(summary_sentences(metrics))
    # with each node's level (metrics 11) the sentence says where the difference lies
    right[40:60] = 0.55
    levels = list(np.linspace(-18.0, 70.0, n))
    metrics = {s: {**side(p), "profile_z_mni": levels} for s, p in (("left", left), ("right", right))}
    d = profile_difference(metrics, "fa")
    assert d["z_mni"] == pytest.approx(levels[d["node"]])
    assert f"(MNI z {levels[d['node']]:.0f})" in " ".join(summary_sentences(metrics))


def test_summary_says_a_side_was_not_found_instead_of_sizing_it():
    from cstbatch.steps.report import summary_sentences

    metrics = {"left": {"streamline_count": 4, "found": False, "volume_mm3": None},
               "right": {"streamline_count": 300, "found": True, "volume_mm3": 9000.0, "fa_mean": 0.5}}
    text = " ".join(summary_sentences(metrics))
    assert "The left CST was not found (4 streamlines" in text
    assert "The right CST has 300 streamlines (9000 mm³)" in text and "n/a mm³" not in text


def test_summary_says_where_on_the_gyrus_the_tracts_end_and_when_the_face_area_is_missed():
    from cstbatch.steps.report import _key_table, summary_sentences

    metrics = {"left": {"found": True, "streamline_count": 100, "cortical_ends": {"medial": 80, "middle": 20, "lateral": 0}},
               "right": {"found": True, "streamline_count": 100, "cortical_ends": {"medial": 50, "middle": 30, "lateral": 20}}}
    text = " ".join(summary_sentences(metrics))
    assert "left 80 / 20 / 0%; right 50 / 30 / 20%" in text
    assert "Almost none of the left CST reaches the face area" in text and "right CST reaches" not in text
    row = [r for r in _key_table(metrics) if r[0].startswith("Ends on the gyrus")][0]
    assert row[1:3] == ["80 / 20 / 0", "50 / 30 / 20"]
    # the image holds little of the face area: say so, not that tractography missed it
    whole = {"medial": 1.0, "middle": 1.0, "lateral": 1.0}
    cut = {**metrics, "gyrus_coverage": {"left": {"medial": 1.0, "middle": 0.95, "lateral": 0.44}, "right": whole}}
    text = " ".join(summary_sentences(cut))
    assert "The image holds only 44 % of the left lateral precentral gyrus (face area)" in text
    assert "Almost none" not in text and "hand knob" not in text.split("The image holds")[1]
    # the right side's face area is inside the image: its missing ends are the tract's again
    metrics["right"]["cortical_ends"]["lateral"] = 0
    text = " ".join(summary_sentences({**cut, "right": metrics["right"]}))
    assert "Almost none of the right CST reaches the face area" in text and "left CST reaches" not in text
    metrics["right"]["cortical_ends"]["lateral"] = 20
    metrics["left"]["cortical_ends"]["lateral"] = 10  # 10 of 110: no caveat
    assert "Almost none" not in " ".join(summary_sentences(metrics))
    # a side that was not found, or metrics without the counts (older runs): no sentence, no row
    metrics["left"]["found"] = False
    assert "left 8" not in " ".join(summary_sentences(metrics))
    assert not any("medial leg area" in s for s in summary_sentences({"left": {}, "right": {}}))
    assert not any(r[0].startswith("Ends") for r in _key_table({"left": {}, "right": {}}))


def test_group_report_gives_each_session_s_share_of_face_area_ends(tmp_path):
    from cstbatch.outputs.group_report import face_ends_percent, write_group_report

    rows = _rows()
    rows[0].update(left_cortical_ends_medial=90, left_cortical_ends_middle=10, left_cortical_ends_lateral=0,
                   right_cortical_ends_medial=60, right_cortical_ends_middle=20, right_cortical_ends_lateral=20)
    assert face_ends_percent(rows[0], "left") == 0.0 and face_ends_percent(rows[0], "right") == 20.0
    assert face_ends_percent(rows[1], "left") is None  # metrics from before the counts
    text = write_group_report(tmp_path, _summary(rows), rows).read_text(encoding="utf-8")
    assert "Face-area ends L / R (%)" in text and ">0 / 20</td>" in text and ">n/a / n/a</td>" in text
    # the image holds 44 % of the left face area: its 0 % is marked as the field of view's
    rows[0].update(gyrus_coverage_left_lateral=0.443, gyrus_coverage_right_lateral=1.0)
    text = write_group_report(tmp_path, _summary(rows), rows).read_text(encoding="utf-8")
    assert ">0* / 20</td>" in text and "* the image holds less than 90% of that side" in text


def test_summary_names_the_region_where_left_and_right_fa_differ_most():
    from cstbatch.steps.report import summary_sentences

    def side(pons, capsule, top):
        return {"found": True, "regions": {"pontine": {"fa": pons}, "internal_capsule": {"fa": capsule},
                                           "precentral": {"fa": top}}}
    metrics = {"left": side(0.55, 0.52, 0.50), "right": side(0.53, 0.43, 0.52)}
    text = " ".join(summary_sentences(metrics))
    assert "differ most in the internal capsule: left 0.520, right 0.430 (laterality index +0.095" in text
    assert "By tract region" not in " ".join(summary_sentences({"left": {}, "right": {}}))
    # a slab from the upper pons: the pons is named as not in the image, not compared
    metrics["regions_not_covered"] = ["pontine"]
    for s in ("left", "right"):
        metrics[s]["regions"]["pontine"]["fa"] = None
    from cstbatch.steps.report import _regions_table

    assert _regions_table(metrics)[0] == ["pons", "not in the image", "not in the image", ""]
    assert "differ most in the internal capsule" in " ".join(summary_sentences(metrics))


def test_profile_figure_marks_the_capsule_only_when_the_profiles_start_at_one_level():
    """The grey band says where the profile runs through the internal capsule (MNI z 0-18); by
    fraction of length (no start level) a node is no one level, so nothing is marked."""
    from cstbatch.steps.report import profile_figure

    n = 50
    levels = list(np.linspace(-18.0, 70.0, n))
    side = {"profiles": {"fa": [0.6] * n, "md": [0.7e-3] * n}, "profile_z_mni": levels}
    clipped = {s: {**side, "profile_start_z_mni": -18.0} for s in ("left", "right")}
    by_length = {s: {**side, "profile_start_z_mni": None} for s in ("left", "right")}
    fa_ax = profile_figure(clipped).axes[0]
    (band,) = fa_ax.patches
    xs = band.get_patch_transform().transform(band.get_path().vertices)[:, 0]  # a Rectangle or a Polygon
    x0, x1 = xs.min(), xs.max()
    inside = [100 * i / (n - 1) for i, z in enumerate(levels) if 0.0 <= z <= 18.0]
    assert x0 == pytest.approx(min(inside)) and x1 == pytest.approx(max(inside))
    assert "MNI z -18" in fa_ax.get_xlabel()
    assert not profile_figure(by_length).axes[0].patches
