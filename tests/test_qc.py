"""QC flags (issue 15): gradient-table check, coverage of the CST levels, directions, flags."""
from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest

from cstbatch.errors import InputError, OptionError
from cstbatch.steps import coverage, gradcheck, qc
from tests.conftest import tiny_gradients

# ----------------------------------------------------------------------------- ring phantom
N = 44
LAS = np.diag([-2.0, 2.0, 2.0, 1.0])
RAS = np.diag([2.0, 2.0, 2.0, 1.0])


def _ring_field():
    """Three tube rings (in the xy, xz and yz planes, apart from each other): curved fibres
    whose tangents have every pair of components, so each axis flip and swap breaks two rings."""
    ijk = np.indices((N, N, N)).transpose(1, 2, 3, 0).astype(float)
    v1 = np.zeros((N, N, N, 3))
    inside = np.zeros((N, N, N), bool)
    r_ring, r_tube = 9.0, 2.2
    for plane, centre in (((0, 1), (22, 22, 7)), ((0, 2), (22, 36, 22)), ((1, 2), (7, 22, 22))):
        a, b = plane
        normal = 3 - a - b
        d = ijk - np.asarray(centre, float)
        rho = np.hypot(d[..., a], d[..., b])
        tube = np.hypot(rho - r_ring, d[..., normal]) <= r_tube
        t = np.zeros_like(d)
        t[..., a], t[..., b] = -d[..., b], d[..., a]
        t /= np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-9)
        v1[tube], inside[tube] = t[tube], True
    return v1, inside


def _signal(v1, inside, bvals, bvecs_voxel, seed=0, snr=30.0):
    rng = np.random.default_rng(seed)
    d_iso = 0.8e-3
    # D = λ⊥ I + (λ∥ − λ⊥) v vᵀ in the tubes, isotropic elsewhere
    g = bvecs_voxel
    proj = np.einsum("xyzi,ni->xyzn", v1, g) ** 2
    adc = np.where(inside[..., None], 0.3e-3 + (1.7e-3 - 0.3e-3) * proj, d_iso)
    s = 1000.0 * np.exp(-bvals * adc)
    noise = 1000.0 / snr
    s = np.sqrt((s + rng.normal(0, noise, s.shape)) ** 2 + rng.normal(0, noise, s.shape) ** 2)
    return s.astype(np.float32)


@pytest.fixture(scope="module")
def rings():
    bvals, bvecs = tiny_gradients(n_dirs=30, n_b0=2)
    v1, inside = _ring_field()
    from scipy import ndimage
    mask = ndimage.binary_dilation(inside, iterations=2)
    return SimpleNamespace(bvals=bvals, bvecs=bvecs, v1=v1, inside=inside, mask=mask)


def _fit(data, bvals, bvecs_bids, affine, mask):
    from dipy.core.gradients import gradient_table

    from cstbatch.steps.gradients import bids_to_voxel_axes
    from cstbatch.steps.model import fit_tensor_maps

    gtab = gradient_table(bvals, bvecs=bids_to_voxel_axes(bvecs_bids, affine), b0_threshold=50)
    return fit_tensor_maps(data, gtab, mask)


@pytest.mark.parametrize("affine", [LAS, RAS], ids=["LAS", "RAS"])
def test_gradient_check_catches_flips_and_swap_never_intact(rings, affine):
    """The signal is simulated with the true table; fitting it with a broken .bvec (as a
    user's file would be) is flagged, naming the change that repairs it; intact is not."""
    from cstbatch.steps.gradients import bids_to_voxel_axes

    data = _signal(rings.v1, rings.inside, rings.bvals, bids_to_voxel_axes(rings.bvecs, affine))
    results = {}
    for label, change in (("intact", None), ("flip x", ((0, 1, 2), (-1, 1, 1))), ("flip y", ((0, 1, 2), (1, -1, 1))),
                          ("flip z", ((0, 1, 2), (1, 1, -1))), ("swap xy", ((1, 0, 2), (1, 1, 1)))):
        table = rings.bvecs if change is None else gradcheck.Candidate(*change).apply_bids(rings.bvecs)
        maps = _fit(data, rings.bvals, table, affine, rings.mask)
        results[label] = gradcheck.check_gradients(maps["evecs"], maps["fa"], rings.mask, affine)
    assert not results["intact"].suspect and results["intact"].best == "identity"
    for label in ("flip x", "flip y", "flip z", "swap xy"):
        r = results[label]
        assert r.suspect and r.best == label and r.ratio >= 1 + gradcheck.MARGIN, (label, r.to_json())


def test_one_fit_serves_every_table(rings):
    """Refitting with a signed permutation M of the b-vectors gives eigenvectors M v: the
    reason the check fits once (module doc of gradcheck)."""
    data = _signal(rings.v1, rings.inside, rings.bvals, rings.bvecs)
    base = _fit(data, rings.bvals, rings.bvecs, LAS, rings.inside)
    for cand in gradcheck.candidates()[1:8]:
        other = _fit(data, rings.bvals, cand.apply_bids(rings.bvecs), LAS, rings.inside)
        np.testing.assert_allclose(other["fa"][rings.inside], base["fa"][rings.inside], atol=1e-4)
        v = base["evecs"][rings.inside][:, :, 0] @ cand.matrix.T
        w = other["evecs"][rings.inside][:, :, 0]
        assert np.min(np.abs(np.sum(v * w, axis=1))) > 0.999, cand.name


def test_candidates_are_the_24_distinct_tables():
    cands = gradcheck.candidates()
    assert len(cands) == 24 and cands[0].name == "identity"
    assert len({c.name for c in cands}) == 24
    # distinct even up to a global sign (a diffusion direction has none)
    keys = {tuple(np.ravel(c.matrix * np.sign(c.matrix[0][c.matrix[0] != 0][0]))) for c in cands}
    assert len(keys) == 24
    assert gradcheck.candidate_by_name("swap xy + flip z").name == "swap xy + flip z"


def test_gradient_check_no_verdict_without_white_matter():
    fa = np.zeros((8, 8, 8))
    res = gradcheck.check_gradients(np.zeros((8, 8, 8, 3, 3)), fa, np.ones((8, 8, 8), bool), LAS)
    assert not res.suspect and "skipped" in res.to_json()


# ----------------------------------------------------------------------------- model step glue
def _model_ctx(tmp_path, rings, bvecs_file, mode):
    import nibabel as nib

    from cstbatch.outputs.layout import SessionLayout
    from cstbatch.steps.gradients import bids_to_voxel_axes

    layout = SessionLayout(tmp_path, "sub-01", tmp_path.relative_to(tmp_path))
    options = {"gradient_check": mode}
    layout.denoised.parent.mkdir(parents=True, exist_ok=True)
    data = _signal(rings.v1, rings.inside, rings.bvals, bids_to_voxel_axes(rings.bvecs, LAS))
    nib.save(nib.Nifti1Image(data, LAS), str(layout.analysis_dwi(options)))
    nib.save(nib.Nifti1Image(rings.mask.astype(np.uint8), LAS), str(layout.mask))
    layout.bval.write_text(" ".join(f"{b:g}" for b in rings.bvals) + "\n")
    layout.bvec.write_text("".join(" ".join(f"{v:.6f}" for v in bvecs_file[:, ax]) + "\n" for ax in range(3)))
    return SimpleNamespace(layout=layout, options=options, log=logging.getLogger("test"))


def test_model_step_fix_writes_the_corrected_table(tmp_path, rings):
    from cstbatch.engine.session_steps import model
    from cstbatch.steps.gradients import read_bvals_bvecs

    broken = gradcheck.candidate_by_name("flip y").apply_bids(rings.bvecs)
    ctx = _model_ctx(tmp_path, rings, broken, "fix")
    info = model(ctx)
    assert info["gradient_check"]["applied"] == "flip y" and info["gradient_check"]["suspect"]
    _, fixed = read_bvals_bvecs(ctx.layout.bval, ctx.layout.bvec_checked, len(rings.bvals))
    np.testing.assert_allclose(fixed, rings.bvecs, atol=1e-5)
    assert [f["code"] for f in qc.session_flags({"left": 50, "right": 50}, {}, model=info)] == ["gradient_table_fixed"]


def test_model_step_flag_keeps_the_given_table(tmp_path, rings):
    from cstbatch.engine.session_steps import model

    broken = gradcheck.candidate_by_name("swap xy").apply_bids(rings.bvecs)
    ctx = _model_ctx(tmp_path, rings, broken, "flag")
    info = model(ctx)
    assert info["gradient_check"]["suspect"] and "applied" not in info["gradient_check"]
    assert ctx.layout.bvec_checked.read_bytes() == ctx.layout.bvec.read_bytes()
    flags = qc.session_flags({"left": 50, "right": 50}, {}, model=info)
    assert [f["code"] for f in flags] == ["gradient_table_suspect"] and "'swap xy'" in flags[0]["message"]
    ctx.options["gradient_check"] = "sometimes"
    with pytest.raises(OptionError, match="gradient_check"):
        model(ctx)


# ----------------------------------------------------------------------------- coverage
def _grid_mm(z_lo, z_hi, voxel=2.0):
    """A 1:1 MNI-aligned grid covering x, y ±90 mm and z_lo..z_hi mm."""
    shape = (91, 109, int(round((z_hi - z_lo) / voxel)) + 1)
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = (-90.0, -126.0, z_lo)
    return shape, affine


def test_coverage_whole_brain_and_slabs():
    ident = np.eye(4)
    full = coverage.coverage(*_grid_mm(-72, 82), ident)
    assert full["missing"] == [] and full["usable"]
    upper = coverage.coverage(*_grid_mm(-10, 82), ident)  # lower brainstem cut
    assert upper["missing"] == ["medulla", "pons"] and upper["usable"]
    assert coverage.lowest_covered_level(upper["covered"]).name == "peduncle"
    top_slab = coverage.coverage(*_grid_mm(30, 70), ident)  # cortex only: no CST can be identified
    assert not top_slab["usable"] and top_slab["covered"] == ["centrum_semiovale", "precentral"]
    # the subject → MNI transform is applied: a head 30 mm lower in the scanner
    shift = np.eye(4)
    shift[2, 3] = 30.0
    moved = coverage.coverage(*_grid_mm(-102, 52), shift)
    assert moved["missing"] == []
    assert "medulla (MNI z -58 to -42 mm)" in coverage.describe(["medulla"])


def test_gyrus_coverage_tells_a_narrow_field_of_view_from_missing_ends():
    """A sagittal acquisition of 36 slices of 2.7 mm spans ±48.6 mm across: every CST level is in
    it, but not the face area of the precentral gyrus (|x| ≥ 45 mm, reaching 66 mm). The atlas's
    own template gives the gyrus's points; the registration's transform is applied, per side."""
    from cstbatch.engine.context import implementation_for
    from cstbatch.study.options import defaults

    options = defaults()
    points = coverage.gyrus_points(implementation_for("register", options, None).func(options).registration_template)
    ax = np.abs(points[:, 0])
    assert points[:, 2].min() >= 18 and points[:, 2].max() <= 80 and ax.max() > 60
    assert all(((ax >= lo) & (ax < hi)).sum() > 1000 for _, lo, hi in coverage.GYRUS_PARTS_MNI_X)
    shape, affine = _grid_mm(-72, 82)
    whole = {"medial": 1.0, "middle": 1.0, "lateral": 1.0}
    assert coverage.gyrus_fractions(points, shape, affine, np.eye(4)) == {"left": whole, "right": whole}
    narrow = np.array(affine)
    narrow[0, 3] = -48.0
    frac = coverage.gyrus_fractions(points, (49,) + shape[1:], narrow, np.eye(4))  # x -48 .. 48
    for side in ("left", "right"):
        assert frac[side]["medial"] == 1.0 and frac[side]["middle"] == 1.0 and frac[side]["lateral"] < 0.3
    assert [(side, part) for side, part, _ in coverage.gyrus_parts_cut(frac)] == [("left", "lateral"), ("right", "lateral")]
    assert coverage.coverage((49,) + shape[1:], narrow, np.eye(4))["missing"] == []  # the levels are all there
    # the head 40 mm to the left in the scanner (subject x = MNI x - 40): the grid holds its whole
    # right side and little of its left
    shift = np.eye(4)
    shift[0, 3] = 40.0
    moved = coverage.gyrus_fractions(points, (49,) + shape[1:], narrow, shift)
    assert moved["right"] == whole and moved["left"]["lateral"] == 0.0 and moved["left"]["middle"] < 0.5
    assert "the left lateral precentral gyrus (face area), 0 % inside" in coverage.describe_cut(coverage.gyrus_parts_cut(moved))


# ----------------------------------------------------------------------------- flags
def test_fov_truncated_names_a_part_of_the_gyrus_the_field_of_view_cuts():
    full = coverage.coverage(*_grid_mm(-72, 82), np.eye(4))
    whole = {"medial": 1.0, "middle": 1.0, "lateral": 1.0}
    cut = qc.session_flags({"left": 300, "right": 300}, {}, register={"coverage": full},
                           gyrus={"left": {"medial": 1.0, "middle": 0.93, "lateral": 0.21}, "right": whole})
    assert [f["code"] for f in cut] == ["fov_truncated"]
    assert "cuts the left lateral precentral gyrus (face area), 21 % inside" in cut[0]["message"]
    assert "middle" not in cut[0]["message"] and "right" not in cut[0]["message"] and "levels" not in cut[0]["message"]
    both = qc.session_flags({"left": 300, "right": 300}, {}, register={"coverage": coverage.coverage(
        *_grid_mm(-10, 82), np.eye(4))}, gyrus={"left": whole, "right": {**whole, "lateral": 0.4}})
    assert "missing levels: medulla" in both[0]["message"] and "right lateral precentral gyrus (face area), 40 % inside" \
        in both[0]["message"]
    partly = qc.session_flags({"left": 300, "right": 300}, {}, register={"coverage": full},
                              gyrus={"left": {**whole, "lateral": 0.6}, "right": whole})
    assert "cuts the left lateral precentral gyrus (face area), 60 % inside" in partly[0]["message"]
    assert qc.session_flags({"left": 300, "right": 300}, {}, register={"coverage": full},
                            gyrus={"left": {**whole, "lateral": 0.95}, "right": whole}) == []
    assert qc.session_flags({"left": 300, "right": 300}, {}, register={"coverage": full}, gyrus=None) == []


def test_fov_truncated_does_not_flip_where_a_level_is_half_inside():
    """The Toshiba and Trio fields of view both end inside the medulla (44 % and 56 % of its points
    inside): both are flagged, the one as missing the medulla and the other as holding it partly,
    while the tract search starts in the medulla on both (covered: at least half inside)."""
    shape, affine = _grid_mm(-50, 82)  # the medulla's points run from z -58 to -42 every 2 mm
    cov = coverage.coverage(shape, affine, np.eye(4))
    assert 0.5 <= cov["fractions"]["medulla"] < 0.9 and "medulla" in cov["covered"]
    assert coverage.partial_levels(cov["fractions"]) == [("medulla", cov["fractions"]["medulla"])]
    flags = qc.session_flags({"left": 300, "right": 300}, {}, register={"coverage": cov})
    assert [f["code"] for f in flags] == ["fov_truncated"]
    assert "partly outside the image: medulla (MNI z -58 to -42 mm), 56 % inside" in flags[0]["message"]
    assert "missing levels" not in flags[0]["message"]
    lower = coverage.coverage(*_grid_mm(-48, 82), np.eye(4))
    assert lower["missing"] == ["medulla"] and coverage.partial_levels(lower["fractions"]) == []
    assert "missing levels: medulla" in qc.session_flags({"left": 300, "right": 300}, {},
                                                         register={"coverage": lower})[0]["message"]


def test_the_cohort_table_marks_a_cut_face_area_at_the_flag_s_share():
    from cstbatch.outputs.group_report import GYRUS_HELD_NOTE

    assert GYRUS_HELD_NOTE == coverage.COMPLETE_FRACTION


def test_registration_ambiguous_needs_a_far_optimum_that_fits_almost_as_well():
    """Rows are the register step's ``affine_start_mi``: [start dz, MI, mm from the placement
    taken]. Numbers from measured slabs (benchmarks/RESULTS.md): a Toshiba slab with a rival 9.6 mm
    away 0.015 below, a Trio slab whose far optima fit worse by 0.033 or more."""
    toshiba = [[0.0, 0.679, 0.0], [-5.0, 0.660, 9.57], [-10.0, 0.659, 9.29], [5.0, 0.664, 5.6]]
    assert qc.ambiguous_placement(toshiba) == (9.57, 0.66, 0.679)
    trio = [[0.0, 0.692, 1.9], [-5.0, 0.706, 0.0], [-10.0, 0.672, 9.18], [10.0, 0.684, 2.42]]
    assert qc.ambiguous_placement(trio) is None  # near ones fit almost as well, far ones do not
    assert qc.ambiguous_placement([[0.0, 0.7, 0.0]]) is None  # one start: not a slab
    assert qc.ambiguous_placement([[0.0, 0.7], [-5.0, 0.69]]) is None  # records from before the distances
    assert qc.ambiguous_placement(None) is None
    codes = [f["code"] for f in qc.session_flags({"left": 300, "right": 300}, {},
                                                 register={"affine_start_mi": toshiba})]
    assert codes == ["registration_ambiguous"]


def test_session_flags_codes_and_messages():
    cov = coverage.coverage(*_grid_mm(-10, 82), np.eye(4))
    flags = qc.session_flags({"left": 0, "right": 40}, {"min_cst_streamlines": 10},
                             ingest={"n_directions": 12}, model={"snr": 5.0},
                             register={"quality": 0.3, "coverage": cov})
    codes = [f["code"] for f in flags]
    assert codes == ["cst_not_found", "cst_sparse", "fov_truncated", "registration_poor", "few_directions", "low_snr"]
    msg = {f["code"]: f["message"] for f in flags}
    assert "left 0" in msg["cst_not_found"] and "right" not in msg["cst_not_found"]
    # a side that is found but thin is flagged as such, an absent one only as not found
    assert "right 40" in msg["cst_sparse"] and "left" not in msg["cst_sparse"]
    assert "medulla (MNI z -58 to -42 mm)" in msg["fov_truncated"] and "pons" in msg["fov_truncated"]
    clean = qc.session_flags({"left": 50, "right": 400}, {}, ingest={"n_directions": 30}, model={"snr": 20.0},
                             register={"quality": 0.7, "coverage": coverage.coverage(*_grid_mm(-72, 82), np.eye(4))})
    assert clean == []
    course = {"median_mm": 9.3, "max_mm": 14.0, "z_range_mni": [-6.0, 40.0]}
    apart = qc.session_flags({"left": 400, "right": 400}, {}, course=course)
    assert [f["code"] for f in apart] == ["cst_course_asymmetric"] and "9.3 mm apart" in apart[0]["message"] \
        and "MNI z -6 to 40" in apart[0]["message"]
    assert qc.session_flags({"left": 400, "right": 400}, {}, course={"median_mm": 7.4}) == []
    assert qc.session_flags({"left": 400, "right": 400}, {}, course=None) == []
    # a side whose streamlines all end in the face area, with the leg and hand areas in the image
    ends = {"left": {"medial": 0, "middle": 3, "lateral": 51}, "right": {"medial": 500, "middle": 250, "lateral": 49}}
    held = {s: {"medial": 1.0, "middle": 1.0, "lateral": 1.0} for s in ("left", "right")}
    face = qc.session_flags({"left": 54, "right": 799}, {}, ends=ends, gyrus=held)
    assert [f["code"] for f in face] == ["cst_face_area_only"]
    assert "left 6 % of 54" in face[0]["message"] and "right" not in face[0]["message"]
    # a tract that reaches the leg or hand area on a tenth of its streamlines is not flagged
    assert qc.session_flags({"left": 54, "right": 799}, {}, gyrus=held,
                            ends={**ends, "left": {"medial": 2, "middle": 4, "lateral": 48}}) == []
    # nor one whose leg and hand areas the image cuts (fov_truncated says so), nor a side not found
    cut = {**held, "left": {"medial": 0.4, "middle": 1.0, "lateral": 1.0}}
    assert "cst_face_area_only" not in [f["code"] for f in qc.session_flags({"left": 54, "right": 799}, {},
                                                                            ends=ends, gyrus=cut)]
    assert "cst_face_area_only" not in [f["code"] for f in qc.session_flags({"left": 5, "right": 799}, {},
                                                                            ends=ends, gyrus=held)]
    lax = qc.session_flags({"left": 30, "right": 400}, {"sparse_cst_streamlines": 20})
    assert "cst_sparse" not in [f["code"] for f in lax]
    assert json.loads(json.dumps(flags)) == flags


def test_qc_fail_codes():
    flags = [qc.flag("cst_not_found", "x"), qc.flag("few_directions", "y")]
    assert qc.failing(flags, "cst_not_found, fov_truncated") == [flags[0]]
    assert qc.failing(flags, ["few_directions"]) == [flags[1]]
    assert qc.failing(flags, None) == []
    with pytest.raises(OptionError, match="unknown QC code 'empty'"):
        qc.failing(flags, "empty")


def test_unique_directions_and_shells():
    bvals, bvecs = tiny_gradients(n_dirs=12, n_b0=1)
    assert qc.unique_directions(bvals, bvecs) == 12
    # repeats and opposite vectors are the same axis
    assert qc.unique_directions(np.r_[bvals, bvals[1:]], np.r_[bvecs, -bvecs[1:]]) == 12
    assert qc.shells(np.array([0, 995, 1000, 2000, 3005])) == [1000, 2000, 3000]


def test_tensor_volumes_keep_b_up_to_1500():
    from cstbatch.steps.model import tensor_volumes

    b = np.array([0, 1000, 1000, 1500, 3000, 3000, 5])
    assert tensor_volumes(b).tolist() == [0, 1, 2, 3, 6]
    assert tensor_volumes(np.array([0, 3000, 3000])).tolist() == [0, 1, 2]  # no low shell: lowest one


def test_too_few_directions_is_an_input_error_naming_the_count(tmp_path):
    """Five directions, each repeated: the ingest step refuses with the count."""
    import nibabel as nib

    from cstbatch.engine.session_steps import ingest
    from cstbatch.outputs.layout import SessionLayout

    bvals, bvecs = tiny_gradients(n_dirs=5, n_b0=1)
    bvals, bvecs = np.r_[bvals, bvals[1:]], np.r_[bvecs, bvecs[1:]]
    stem = tmp_path / "in" / "sub-01_dwi"
    stem.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, len(bvals)), np.float32), LAS), f"{stem}.nii.gz")
    (tmp_path / "in" / "sub-01_dwi.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    (tmp_path / "in" / "sub-01_dwi.bvec").write_text("".join(" ".join(f"{v:.6f}" for v in bvecs[:, a]) + "\n"
                                                            for a in range(3)))
    spec = SimpleNamespace(input_type="nifti", input_path=f"{stem}.nii.gz", bval=f"{stem}.bval",
                           bvec=f"{stem}.bvec")
    layout = SessionLayout(tmp_path / "out", "sub-01", tmp_path.relative_to(tmp_path))
    ctx = SimpleNamespace(spec=spec, layout=layout, options={}, log=logging.getLogger("test"))
    with pytest.raises(InputError, match=r"sub-01_dwi\.bvec: only 5 non-collinear diffusion directions"):
        ingest(ctx)


def test_dcm2niix_warnings_that_matter_become_a_flag():
    log = ("Chris Rorden's dcm2niiX version v1.0\nWarning: Bvecs from the DICOM images may be flipped\n"
           "Warning: Unable to determine manufacturer\nWarning: Bvecs from the DICOM images may be flipped\n"
           "Convert 21 DICOM as /tmp/x\n")
    warnings = qc.conversion_warnings(log)
    assert warnings == ["Warning: Bvecs from the DICOM images may be flipped", "Warning: Unable to determine manufacturer"]
    flags = qc.session_flags({"left": 50, "right": 50}, {}, ingest={"dcm2niix_warnings": warnings})
    assert [f["code"] for f in flags] == ["dicom_conversion"] and "Bvecs" in flags[0]["message"]
    assert "manufacturer" not in flags[0]["message"]
    assert qc.session_flags({"left": 50, "right": 50}, {}, ingest={"dcm2niix_warnings": warnings[1:]}) == []


def test_qc_failure_is_recorded_with_its_flags(tmp_path):
    """qc_fail: the metrics step's failure has category qc and carries the flags, which the
    aggregation reports for the session although metrics.json was removed."""
    from cstbatch.engine.step_runner import _describe
    from cstbatch.errors import QcFailure
    from cstbatch.outputs.aggregate import session_qc_flags
    from cstbatch.outputs.layout import SessionLayout
    from cstbatch.outputs.records import write_record

    flags = [qc.flag("cst_not_found", "CST not found: streamlines left 0")]
    error = _describe(QcFailure(flags), "metrics", {"name": "builtin", "source": "built-in"})
    assert error["category"] == "qc" and error["qc_flags"] == flags and "cst_not_found" in error["message"]
    spec = SimpleNamespace(key="sub-01", relative_dir=tmp_path.relative_to(tmp_path) / "sub-01")
    layout = SessionLayout.of(tmp_path, spec)
    write_record(layout.record("metrics"), {"step": "metrics", "status": "failed", "error": error})
    assert session_qc_flags(tmp_path, spec) == flags


@pytest.mark.parametrize("region", ["cst", "brain"])
def test_no_white_matter_for_the_response_is_an_input_error_naming_the_image(tmp_path, region):
    """A 'slab' with isotropic signal only: the CSD response cannot be estimated; the user
    gets the input image and the reason, not dipy's ValueError (tracking in the CST corridor,
    from the saved registration, and in the whole brain)."""
    import nibabel as nib

    from cstbatch.engine.context import implementation_for
    from cstbatch.engine.session_steps import track
    from cstbatch.outputs.layout import TENSOR_PARAMS, SessionLayout
    from cstbatch.study.options import defaults

    bvals, bvecs = tiny_gradients(n_dirs=30, n_b0=1)
    layout = SessionLayout(tmp_path, "sub-01", tmp_path.relative_to(tmp_path))
    options = {**defaults(), "track_region": region}
    layout.denoised.parent.mkdir(parents=True)
    if region == "cst":
        from cstbatch.steps.register import save_itk_affine
        layout.transform(options["atlas"]).parent.mkdir(parents=True)
        save_itk_affine(np.eye(4), layout.transform(options["atlas"]))
    data = np.broadcast_to(1000 * np.exp(-bvals * 0.8e-3), (6, 6, 3, len(bvals))).astype(np.float32)
    nib.save(nib.Nifti1Image(data, LAS), str(layout.analysis_dwi(options)))
    nib.save(nib.Nifti1Image(np.ones((6, 6, 3), np.uint8), LAS), str(layout.mask))
    for p in TENSOR_PARAMS:
        nib.save(nib.Nifti1Image(np.zeros((6, 6, 3), np.float32), LAS), str(layout.tensor_map(p)))
    layout.bval.write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    layout.bvec_checked.write_text("".join(" ".join(f"{v:.6f}" for v in bvecs[:, a]) + "\n" for a in range(3)))
    spec = SimpleNamespace(input_path="/data/sub-01_dwi.nii.gz")
    ctx = SimpleNamespace(spec=spec, layout=layout, options=options, log=logging.getLogger("test"),
                          implementation=implementation_for("track", options, None))
    with pytest.raises(InputError, match=r"^/data/sub-01_dwi\.nii\.gz: no white matter to estimate the CSD fibre "
                                         r"response from \(0 voxels with FA > 0.*; tracking region "
                                         rf"'{region}' \d+ voxels, 0 with FA > 0.4; brain mask 108\)"):
        track(ctx)


def test_screen_lists_successful_sessions_with_flags(tmp_path):
    import io

    from cstbatch.engine.progress import ProgressReporter

    (tmp_path / "batch_summary.json").write_text(json.dumps({"sessions": [
        {"key": "sub-01", "status": "success", "qc_flags": [qc.flag("cst_not_found", "m"), qc.flag("low_snr", "m")]},
        {"key": "sub-02", "status": "success", "qc_flags": []},
        {"key": "sub-03", "status": "failed", "qc_flags": [qc.flag("cst_not_found", "m")]}]}))
    screen = io.StringIO()
    ProgressReporter(tmp_path, {}, outstream=screen, tty=False)._write_qc_flags()
    assert screen.getvalue() == ("QC flags on 1 successful session(s) (batch_summary.json, group_report.html):\n"
                                 "  sub-01: cst_not_found, low_snr\n")
