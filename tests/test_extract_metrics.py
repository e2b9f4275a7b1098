"""CST extraction on synthetic MNI streamlines, and per-side metrics on synthetic maps."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cstbatch.steps.extract import classify_streamlines, extract_endpoint, extract_passthrough
from cstbatch.steps.extract_corridor import inferior_levels
from cstbatch.steps.metrics import (
    compute_metrics,
    course_asymmetry,
    laterality_index,
    metrics_to_rows,
    orient_streamlines,
    profiles_to_rows,
    visited_voxel_mask,
)


def _nearest_roi_point(atlas, roi, target):
    ijk = np.argwhere(atlas.roi(roi))
    xyz = ijk @ atlas.affine[:3, :3].T + atlas.affine[:3, 3]
    return xyz[np.argmin(np.linalg.norm(xyz - np.asarray(target), axis=1))]


def _polyline(*ctrl, step=1.0):
    """Piecewise-linear streamline through the control points, ~``step`` mm apart."""
    ctrl = [np.asarray(c, float) for c in ctrl]
    out = []
    for a, b in zip(ctrl[:-1], ctrl[1:]):
        n = max(int(np.ceil(np.linalg.norm(b - a) / step)), 1)
        out.append(a + (b - a) * (np.arange(n)[:, None] / n))
    out.append(ctrl[-1][None])
    return np.vstack(out)


def _cst(atlas, sign):
    """A CST-like path: brainstem (pons) → peduncle → internal capsule → precentral cortex."""
    top = _nearest_roi_point(atlas, "motor_left" if sign < 0 else "motor_right", [sign * 38, -18, 62])
    return _polyline([sign * 5, -30, -45], [sign * 8, -24, -25], [sign * 13, -18, -8],
                     [sign * 22, -14, 10], [sign * 28, -16, 35], top)


@pytest.fixture(scope="module")
def bundle(atlas):
    left, right = _cst(atlas, -1), _cst(atlas, +1)
    left_curved = _polyline([-6, -28, -40], [-10, -22, -15], [-18, -10, 5], [-26, -8, 30],
                            _nearest_roi_point(atlas, "motor_left", [-20, -14, 70]))
    # brainstem → crosses the midline in the internal-capsule level → right motor cortex
    crossing = _polyline([-6, -28, -40], [-10, -22, -15], [-15, -18, 10], [10, -15, 25],
                         _nearest_roi_point(atlas, "motor_right", [38, -18, 62]))
    # brainstem → frontal cortex (anterior limb / prefrontal): a distractor
    frontal = _polyline([-6, -28, -40], [-12, -18, -8], [-20, 5, 15], [-28, 40, 30])
    # commissural: left motor → right motor through the corpus callosum
    callosal = _polyline(_nearest_roi_point(atlas, "motor_left", [-38, -18, 62]), [-15, -15, 30],
                         [0, -15, 25], [15, -15, 30], _nearest_roi_point(atlas, "motor_right", [38, -18, 62]))
    # a CST that runs on from cortex into frontal white matter (passes, but does not end, in M1)
    overshoot = np.vstack([left, _polyline(left[-1], [-30, 30, 40])[1:]])
    # too short (only a piece of brainstem to cortex is impossible; use a pontine stub + motor)
    short = _polyline(_nearest_roi_point(atlas, "motor_left", [-30, -10, 42]), [-26, -12, 30])
    return {"left": left, "right": right, "left_curved": left_curved, "crossing": crossing,
            "frontal": frontal, "callosal": callosal, "overshoot": overshoot, "short": short}


def test_passthrough_keeps_exactly_the_cst(bundle, atlas):
    names = list(bundle)
    out = extract_passthrough([bundle[n] for n in names], atlas, {})
    assert set(out) == {"left", "right"}
    assert sorted(names[i] for i in out["left"]) == ["left", "left_curved", "overshoot"]
    assert [names[i] for i in out["right"]] == ["right"]
    assert out["left"].dtype == np.int64


def test_endpoint_needs_both_ends_in_rois(bundle, atlas):
    names = list(bundle)
    out = extract_endpoint([bundle[n] for n in names], atlas, {})
    assert sorted(names[i] for i in out["left"]) == ["left", "left_curved"]
    assert [names[i] for i in out["right"]] == ["right"]
    # the direction a streamline was tracked in does not matter
    flipped = extract_endpoint([bundle[n][::-1] for n in names], atlas, {})
    assert [list(v) for v in flipped.values()] == [list(v) for v in out.values()]


def test_core_filter_drops_strays_keeps_the_bundle(atlas):
    rng = np.random.default_rng(0)
    core, strays = [], []
    top = _nearest_roi_point(atlas, "motor_left", [-38, -18, 62])
    for _ in range(60):  # a dense CST: the same path jittered by ~1 mm
        j = rng.normal(0, 1.0, size=(6, 3))
        core.append(_polyline(*(np.array(p) + d for p, d in zip(
            [[-5, -30, -45], [-8, -24, -25], [-13, -18, -8], [-22, -14, 10], [-28, -16, 35], top], j))))
    for k in range(6):  # sparse strays fanning out to the front of the motor strip
        end = _nearest_roi_point(atlas, "motor_left", [-45 + 4 * k, -2, 52])
        strays.append(_polyline([-5, -30, -45], [-8, -24, -25], [-13, -18, -8], [-24, -6, 12],
                                [-36 + 3 * k, 0, 35], end))
    sl = core + strays
    out = extract_passthrough(sl, atlas, {})
    kept = set(out["left"].tolist())
    assert not kept & set(range(60, 66)), "strays removed"
    assert len(kept) >= 45, "the bundle itself stays"
    # the filter can be switched off
    off = extract_passthrough(sl, atlas, {"extract_core_filter": False})
    assert len(off["left"]) == 66


def test_core_regrow_recovers_bundle_where_strays_share_its_path(atlas):
    """Strays that share the brainstem-capsule path (there denser than the bundle, 3 mm to
    its side) and fan out over the motor strip: the first pass drops bundle streamlines at
    that shared stretch, the second pass (scored against the first pass's core) brings
    them all back and keeps the strays out."""
    rng = np.random.default_rng(1)
    top = _nearest_roi_point(atlas, "motor_left", [-38, -18, 62])
    path = [[-5, -30, -45], [-8, -24, -25], [-13, -18, -8], [-22, -14, 10], [-28, -16, 35], top]
    core = [_polyline(*(np.array(p) + d for p, d in zip(path, rng.normal(0, 1.0, size=(6, 3)))))
            for _ in range(40)]
    rng = np.random.default_rng(2)
    strays = []
    for k in range(80):
        a = k / 79
        end = _nearest_roi_point(atlas, "motor_left", [-56 + 30 * a, -14 + 24 * ((k * 7) % 80) / 80, 55])
        lower = [np.array(p) + [3.0, 0, 0] + d for p, d in zip(path[:4], rng.normal(0, 0.5, size=(4, 3)))]
        strays.append(_polyline(*lower, [-30 - 10 * a, -8 + 10 * a, 35], end))
    sl = core + strays
    one_pass = set(extract_passthrough(sl, atlas, {"extract_core_regrow": 0})["left"].tolist())
    two_pass = set(extract_passthrough(sl, atlas, {})["left"].tolist())
    assert len(one_pass & set(range(40))) < 32, "the case is hard for one pass"
    assert two_pass == set(range(40)), (sorted(two_pass))


def test_length_limits_and_empty_input(bundle, atlas):
    sl = [bundle["left"], bundle["right"]]
    info = classify_streamlines(sl, atlas, {})
    assert info["length_mm"][0] > 100
    out = extract_passthrough(sl, atlas, {"extract_max_length": 50.0})
    assert len(out["left"]) == 0 and len(out["right"]) == 0
    out = extract_passthrough([], atlas, {})
    assert len(out["left"]) == 0 and len(out["right"]) == 0


def test_side_comes_from_mni_x_not_voxel_axes(bundle, atlas):
    # the same atlas stored with a flipped x axis (LAS) gives the same answer
    import nibabel as nib

    from cstbatch.steps.atlas import Atlas

    def flip(img):
        flip_x = np.array([[-1, 0, 0, img.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
        return nib.Nifti1Image(np.asarray(img.dataobj)[::-1], img.affine @ flip_x)

    las = Atlas(name="las", version="1", template=flip(atlas.template), brainstem=flip(atlas.brainstem),
                motor_left=flip(atlas.motor_left), motor_right=flip(atlas.motor_right))
    names = list(bundle)
    a = extract_passthrough([bundle[n] for n in names], atlas, {})
    b = extract_passthrough([bundle[n] for n in names], las, {})
    assert [list(v) for v in a.values()] == [list(v) for v in b.values()]


# ---------------------------------------------------------------------------------------
AFF = np.diag([2.0, 2.0, 2.0, 1.0])
AFF[:3, 3] = [-80.0, -110.0, -60.0]
SHAPE = (81, 96, 75)


def _grid_mm():
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return ii * 2.0 - 80.0, jj * 2.0 - 110.0, kk * 2.0 - 60.0


def _maps(fa_left=0.6, fa_right=0.4):
    x, _, z = _grid_mm()
    fa = np.where(x < 0, fa_left, fa_right).astype(np.float32)
    return {"fa": fa, "md": np.full(SHAPE, 0.8e-3, np.float32), "rd": np.full(SHAPE, 0.5e-3, np.float32),
            "ad": np.full(SHAPE, 1.4e-3, np.float32)}


def test_metrics_known_values_and_laterality(bundle):
    left = [bundle["left"], bundle["left_curved"]]
    right = [bundle["right"]]
    # one and two streamlines: measurement, not detection (min_cst_streamlines 1)
    m = compute_metrics(left, right, _maps(), AFF, {"profile_nodes": 50, "min_cst_streamlines": 1}, mni=np.eye(4))
    assert m["left"]["streamline_count"] == 2 and m["right"]["streamline_count"] == 1
    assert m["left"]["fa_mean"] == pytest.approx(0.6, abs=1e-6)
    assert m["right"]["fa_mean"] == pytest.approx(0.4, abs=1e-6)
    assert m["left"]["md_mean"] == pytest.approx(0.8e-3, rel=1e-5)
    assert m["laterality"]["fa_mean"] == pytest.approx(0.2, abs=1e-6)
    assert m["laterality"]["md_mean"] == pytest.approx(0.0, abs=1e-6)
    assert m["laterality"]["streamline_count"] == pytest.approx(1 / 3)
    assert m["left"]["volume_mm3"] > m["right"]["volume_mm3"] > 0
    assert len(m["left"]["profiles"]["fa"]) == 50
    assert m["left"]["regions"]["pontine"]["fa"] == pytest.approx(0.6, abs=1e-6)
    json.dumps(m)  # JSON-serialisable
    rows = metrics_to_rows(m)
    assert [r["side"] for r in rows] == ["left", "right", "laterality_index"]
    assert rows[0].keys() == rows[2].keys()
    assert rows[2]["fa_mean"] == pytest.approx(0.2, abs=1e-6)
    prow = profiles_to_rows(m)
    assert len(prow) == 2 * 4 * 50 and set(prow[0]) == {"side", "node", "z_mni", "metric", "value", "std"}


def test_a_region_the_image_does_not_cover_is_not_measured(bundle):
    """A slab that starts at the upper pons holds the pons's top millimetres at its edge: its
    tract region there is reported as not in the image, not as an FA."""
    left, right = [bundle["left"], bundle["left_curved"]], [bundle["right"]]
    options = {"profile_nodes": 50, "min_cst_streamlines": 1}
    m = compute_metrics(left, right, _maps(), AFF, options, mni=np.eye(4), uncovered_levels=["medulla", "pons"])
    assert m["regions_not_covered"] == ["pontine"]
    assert all(v is None for side in ("left", "right") for v in m[side]["regions"]["pontine"].values())
    assert m["left"]["regions"]["internal_capsule"]["fa"] == pytest.approx(0.6, abs=1e-6)
    assert m["left"]["fa_mean"] == pytest.approx(0.6, abs=1e-6)  # the tract's own mean is kept
    rows = metrics_to_rows(m)
    assert rows[0]["fa_pontine"] is None and rows[0]["fa_internal_capsule"] == pytest.approx(0.6, abs=1e-6)
    plain = compute_metrics(left, right, _maps(), AFF, options, mni=np.eye(4))
    assert plain["regions_not_covered"] == [] and plain["gyrus_coverage"] is None
    held = {"left": {"medial": 1.0, "middle": 1.0, "lateral": 0.44}, "right": {"medial": 1.0, "middle": 1.0, "lateral": 1.0}}
    assert compute_metrics(left, right, _maps(), AFF, options, mni=np.eye(4), gyrus_coverage=held)["gyrus_coverage"] == held


def test_profile_orientation_brainstem_to_cortex(bundle):
    _, _, z = _grid_mm()
    maps = {"fa": (0.2 + 0.004 * (z + 60)).astype(np.float32)}  # FA rises with z
    left = bundle["left"]
    for mni in (np.eye(4), None):
        m1 = compute_metrics([left], [left[::-1]], maps, AFF, {"profile_nodes": 20, "min_cst_streamlines": 1},
                             mni=mni)
        for side in ("left", "right"):
            prof = m1[side]["profiles"]["fa"]
            assert prof[0] < prof[-1], (side, mni)
        np.testing.assert_allclose(m1["left"]["profiles"]["fa"], m1["right"]["profiles"]["fa"], atol=1e-6)
    # with a brainstem mask only: the end nearer the mask comes first
    x, y, zz = _grid_mm()
    bs = (np.abs(x) < 10) & (np.abs(y + 28) < 10) & (zz < -20) & (zz > -50)
    o = orient_streamlines([left[::-1]], brainstem_mask=bs, affine=AFF)[0]
    assert o[0][2] < o[-1][2]


def test_profiles_average_only_the_streamlines_from_the_extractions_level(bundle):
    """With extract_inferior=peduncle (the default) a side holds streamlines from the crus (MNI z -12) beside
    those from the pons; node k would be another level in each, so the profile keeps the latter: those
    whose brainstem end reaches the level the extraction reports (inferior_top_z_mni, -18). On an image
    that stops in the pons that level is higher, and streamlines from the image's lowest level stay in.
    The mean and the MNI-z regions still use every streamline."""
    _, _, z = _grid_mm()
    maps = {"fa": (0.2 + 0.004 * (z + 60)).astype(np.float32)}
    full = bundle["left"]
    crus = full[full[:, 2] >= -12.0]
    slab = full[full[:, 2] >= -17.9]  # from z -17.8: the lowest level of an image that stops at MNI z -27
    opts = {"profile_nodes": 20, "min_cst_streamlines": 1}
    pons_only = compute_metrics([full, full], [full, full], maps, AFF, opts, mni=np.eye(4))
    mixed = compute_metrics([full, full, crus], [full, full], maps, AFF, opts, mni=np.eye(4))
    ped = compute_metrics([full, full, crus], [full, full], maps, AFF, opts, mni=np.eye(4), profile_from_z=-18.0)
    assert mixed["left"]["profiles"]["fa"][0] > pons_only["left"]["profiles"]["fa"][0] + 0.02
    pons_clipped = compute_metrics([full, full], [full, full], maps, AFF, opts, mni=np.eye(4), profile_from_z=-18.0)
    np.testing.assert_allclose(ped["left"]["profiles"]["fa"], pons_clipped["left"]["profiles"]["fa"], atol=1e-9)
    # the profile starts at that level: FA 0.2 + 0.004 (z + 60) at z -18
    assert ped["left"]["profiles"]["fa"][0] == pytest.approx(0.368, abs=1e-3)
    assert ped["left"]["profile_z_mni"][0] == pytest.approx(-18.0, abs=1e-6)
    assert ped["left"]["profile_start_z_mni"] == -18.0 and pons_only["left"]["profile_start_z_mni"] is None
    assert ped["left"]["fa_mean"] == mixed["left"]["fa_mean"] != pons_only["left"]["fa_mean"]
    assert ped["left"]["streamline_count"] == 3
    top_z, _, truncated = inferior_levels(-27.0)
    assert truncated and top_z == pytest.approx(-17.0)
    slabs = compute_metrics([slab, slab, crus], [slab, slab], maps, AFF, opts, mni=np.eye(4), profile_from_z=top_z)
    slab_only = compute_metrics([slab, slab], [slab, slab], maps, AFF, opts, mni=np.eye(4), profile_from_z=top_z)
    np.testing.assert_allclose(slabs["left"]["profiles"]["fa"], slab_only["left"]["profiles"]["fa"], atol=1e-9)
    # the fixed pons level would have left both slab streamlines out, and averaged every streamline
    fixed = compute_metrics([slab, slab, crus], [slab, slab], maps, AFF, opts, mni=np.eye(4), profile_from_z=-18.0)
    slab_unclipped = compute_metrics([slab, slab], [slab, slab], maps, AFF, opts, mni=np.eye(4))
    assert fixed["left"]["profiles"]["fa"][0] > slab_unclipped["left"]["profiles"]["fa"][0] + 0.005


def test_profile_nodes_are_one_level_in_streamlines_that_start_at_different_depths(bundle):
    """A capsular lesion (FA 0.3 between MNI z 0 and 10) on a side whose streamlines start at
    different depths of the brainstem (where the tracker stopped, or the image ends): clipped at
    the extraction's level, every streamline puts the lesion at the same nodes, so the profile
    dips to the lesion's FA at its level. By fraction of length, the dips of a long and a short
    streamline fall on different nodes and the profile's dip is half as deep, and on one node of
    those the short streamline is already above the lesion."""
    _, _, z = _grid_mm()
    maps = {"fa": np.where((z >= 0) & (z <= 10), 0.3, 0.6).astype(np.float32)}
    full = bundle["left"]
    assert full[:, 2].min() < -40  # from the lower pons
    short = full[full[:, 2] >= -26.0]  # from the upper pons
    opts = {"profile_nodes": 50, "min_cst_streamlines": 1}
    side = [full, short] * 3
    clipped = compute_metrics(side, side, maps, AFF, opts, mni=np.eye(4), profile_from_z=-18.0)["left"]
    by_length = compute_metrics(side, side, maps, AFF, opts, mni=np.eye(4))["left"]
    prof, zs = np.array(clipped["profiles"]["fa"]), np.array(clipped["profile_z_mni"])
    dip = prof <= 0.31  # the lesion's FA, within interpolation
    assert dip.sum() >= 5 and np.all((zs[dip] >= 0.0) & (zs[dip] <= 10.0))
    assert (np.array(by_length["profiles"]["fa"]) <= 0.31).sum() == 0
    assert clipped["fa_mean"] == by_length["fa_mean"]  # the means do not depend on nodes


def test_empty_sides_and_laterality_none():
    m = compute_metrics([], [], _maps(), AFF, {})
    assert m["left"]["streamline_count"] == 0 and m["left"]["fa_mean"] is None
    assert m["laterality"]["streamline_count"] is None  # both zero
    assert m["laterality"]["fa_mean"] is None
    assert laterality_index(1.0, float("nan")) is None
    assert laterality_index(3.0, 1.0) == pytest.approx(0.5)
    json.dumps(m)
    assert len(metrics_to_rows(m)) == 3 and profiles_to_rows(m) == []


def test_profile_nodes_out_of_the_tables_bounds_fail_on_a_direct_call(bundle):
    """compute_metrics is called directly (benchmarks, plugins), without the planning check;
    it refuses what the options table refuses, in the table's words."""
    from cstbatch.errors import OptionError

    for nodes in (1, 0, -3):
        with pytest.raises(OptionError, match=rf"profile_nodes: {nodes} is outside \[2, \)"):
            compute_metrics([bundle["left"]] * 12, [bundle["right"]] * 12, _maps(), AFF, {"profile_nodes": nodes},
                            mni=np.eye(4))


def test_a_side_with_too_few_streamlines_is_not_measured(bundle):
    """Below min_cst_streamlines a side is no tract: its count stays, nothing else is measured,
    and no laterality is computed against it (a volume LI of -1 would read as a finding)."""
    right = [bundle["right"]] * 12
    m = compute_metrics([bundle["left"]] * 5, right, _maps(), AFF, {"profile_nodes": 20}, mni=np.eye(4))
    assert m["left"]["found"] is False and m["left"]["streamline_count"] == 5
    assert m["left"]["fa_mean"] is None and m["left"]["volume_mm3"] is None
    assert m["left"]["profiles"]["fa"] is None
    assert m["right"]["found"] is True and m["right"]["fa_mean"] == pytest.approx(0.4, abs=1e-6)
    assert all(v is None for v in m["laterality"].values())
    rows = metrics_to_rows(m)
    assert rows[0]["fa_mean"] is None and rows[2]["volume_mm3"] is None
    m = compute_metrics([bundle["left"]] * 5, right, _maps(), AFF, {"min_cst_streamlines": 5}, mni=np.eye(4))
    assert m["left"]["found"] and m["laterality"]["fa_mean"] == pytest.approx(0.2, abs=1e-6)


def test_course_asymmetry_is_the_distance_between_mirrored_courses():
    """Mirror-image tracts are 0 mm apart; one moved 6 mm forward is 6 mm apart at every level
    from the peduncle to the centrum semiovale, and one that bends away above the capsule (a
    detour) is apart only there. The MNI transform is applied first."""
    def tract(sign, dy=0.0, bend=0.0):
        return _polyline([sign * 8, -25 + dy, -30], [sign * 20, -18 + dy, 10],
                         [sign * (28 + bend), -20 + dy + bend, 40], [sign * 34, -22 + dy, 60])

    left = [tract(-1), tract(-1, dy=2.0)]
    m = course_asymmetry(left, [tract(1), tract(1, dy=2.0)], np.eye(4))
    assert m["median_mm"] == pytest.approx(0.0, abs=1e-6) and m["levels"] == 24
    assert m["z_range_mni"] == [-6.0, 40.0]
    moved = course_asymmetry(left, [tract(1, dy=6.0), tract(1, dy=8.0)], np.eye(4))
    assert moved["median_mm"] == pytest.approx(6.0, abs=0.05) and moved["max_mm"] == pytest.approx(6.0, abs=0.05)
    detour = course_asymmetry(left, [tract(1, bend=8.0), tract(1, dy=2.0, bend=8.0)], np.eye(4))
    assert detour["max_mm"] > 8.0 and detour["median_mm"] < detour["max_mm"]
    shift = np.eye(4)
    shift[0, 3] = 5.0  # the subject sits 5 mm to the right of MNI: mirror in MNI, not subject space
    sub = [[p - [5.0, 0, 0] for p in side] for side in (left, [tract(1), tract(1, dy=2.0)])]
    assert course_asymmetry(*sub, shift)["median_mm"] == pytest.approx(0.0, abs=1e-6)
    assert course_asymmetry(*sub, np.eye(4))["median_mm"] == pytest.approx(10.0, abs=1e-6)
    assert course_asymmetry(left, [], np.eye(4)) is None
    assert course_asymmetry(left, left, None) is None
    # in the metrics, and absent when a side is not found
    full = compute_metrics(left * 5, [tract(1, dy=6.0), tract(1, dy=8.0)] * 5, _maps(), AFF, {"profile_nodes": 20}, mni=np.eye(4))
    assert full["course_asymmetry"]["median_mm"] == pytest.approx(6.0, abs=0.05)
    assert compute_metrics(left, left * 5, _maps(), AFF, {}, mni=np.eye(4))["course_asymmetry"] is None


def test_cortical_ends_count_the_parts_of_the_gyrus_each_side_reaches():
    """Ends are counted by MNI |x| (leg medial, hand knob, face lateral), after the streamlines
    are oriented brainstem -> cortex, so a streamline stored upside down counts by its top."""
    def to(x):
        return _polyline([np.sign(x) * 8, -24, -30], [np.sign(x) * 20, -16, 10], [x, -18, 50])

    left = [to(-10), to(-20), to(-30)[::-1], to(-50), to(-44.9)]
    m = compute_metrics(left, [to(30)] * 3, _maps(), AFF, {"min_cst_streamlines": 1}, mni=np.eye(4))
    assert m["left"]["cortical_ends"] == {"medial": 2, "middle": 2, "lateral": 1}
    assert m["right"]["cortical_ends"] == {"medial": 0, "middle": 3, "lateral": 0}
    # in subject space the same ends move: the count follows the subject -> MNI transform
    shift = np.eye(4)
    shift[0, 3] = -20.0  # subject x + (-20) = MNI x: the left ends move laterally by 20 mm
    assert compute_metrics(left, [], _maps(), AFF, {"min_cst_streamlines": 1},
                           mni=shift)["left"]["cortical_ends"] == {"medial": 0, "middle": 2, "lateral": 3}
    assert compute_metrics(left, [], _maps(), AFF, {"min_cst_streamlines": 1})["left"]["cortical_ends"] is None
    rows = metrics_to_rows(m)
    assert (rows[0]["ends_medial"], rows[0]["ends_middle"], rows[0]["ends_lateral"]) == (2, 2, 1)
    json.dumps(m)


def test_visited_voxel_mask_counts_every_voxel_crossed():
    s = np.array([[0.0, 0.0, -20.0], [0.0, 0.0, 20.0]])  # 40 mm straight, 2 points only
    mask = visited_voxel_mask([s], SHAPE, AFF)
    assert mask.sum() == 21


def test_densify_inserts_evenly_spaced_points_and_keeps_the_originals():
    from cstbatch.steps.metrics import densify

    rng = np.random.default_rng(3)
    for _ in range(50):
        s = np.cumsum(rng.normal(0, rng.uniform(0.2, 3.0), (int(rng.integers(2, 60)), 3)), axis=0)
        d = densify(s, 1.0)
        seg = np.diff(s, axis=0)
        k = np.maximum(np.ceil(np.linalg.norm(seg, axis=1) / 1.0).astype(int), 1)
        expected = np.vstack([s[i] + seg[i] * (j / k[i]) for i in range(len(seg)) for j in range(k[i])] + [s[-1:]])
        assert np.array_equal(d, expected)
        assert np.linalg.norm(np.diff(d, axis=0), axis=1).max() <= 1.0 + 1e-9
