"""The corridor extraction (issue 14): fanning CST kept, distractors out, truncated field of view."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from cstbatch.steps.extract import point_codes, selected_streamlines
from cstbatch.steps.extract_corridor import (
    SUPERIOR_FULL_Z,
    TRIM_BELOW_Z,
    brainstem_ranges,
    coverage_options,
    coverage_top_z,
    cortex_entry_ranges,
    coverage_z,
    extract_corridor,
    inferior_levels,
    precentral_rois,
    superior_end_z,
)


def _polyline(*ctrl, step=1.0):
    ctrl = [np.asarray(c, float) for c in ctrl]
    out = []
    for a, b in itertools.pairwise(ctrl):
        n = max(int(np.ceil(np.linalg.norm(b - a) / step)), 1)
        out.append(a + (b - a) * (np.arange(n)[:, None] / n))
    out.append(ctrl[-1][None])
    return np.vstack(out)


TRUNK = [(-5, -33, -45), (-8, -25, -25), (-12, -19, -12), (-20, -15, 2), (-24, -16, 12), (-27, -18, 25)]
ENDS = {"hand": [(-33, -20, 48), (-37, -22, 66)], "leg": [(-18, -26, 50), (-10, -32, 70)],
        "face": [(-42, -14, 34), (-56, -7, 28)]}


def _jittered(points, rng, n, sd=0.8, sign=-1):
    """``n`` copies of the polyline through ``points`` (left side; mirrored for sign +1), each
    shifted by a random offset."""
    mirror = np.array([-sign, 1.0, 1.0])  # sign -1: unchanged
    return [_polyline(*[np.array(p, float) * mirror + off for p in points])
            for off in rng.normal(0.0, sd, (n, 3))]


def _fan(rng, sign):
    """A CST of side ``sign`` (-1 left) fanning to leg, hand and face: 30 + 20 + 15 streamlines."""
    out = []
    for branch, n in (("hand", 30), ("leg", 20), ("face", 15)):
        out += _jittered(TRUNK + ENDS[branch], rng, n, sign=sign)
    return out


def test_precentral_target_spans_leg_hand_and_face():
    code, aff = precentral_rois()
    pts = np.array([p[-1] for p in ENDS.values()], float)
    assert list(point_codes(pts, code, aff)) == [1, 1, 1]
    mirrored = pts * [-1, 1, 1]
    assert list(point_codes(mirrored, code, aff)) == [2, 2, 2]
    # prefrontal cortex and the deep grey matter at the face level are not targets
    assert list(point_codes(np.array([[-27.0, 49, 33], [-25.0, -5, 28]]), code, aff)) == [0, 0]


def test_corridor_keeps_every_branch_and_drops_distractors(atlas):
    rng = np.random.default_rng(0)
    left, right = _fan(rng, -1), _fan(rng, +1)
    frontopontine = _jittered([(-9, -29, -38), (-11, -24, -27), (-10, -15, -12), (-16, 8, 6), (-24, 36, 26),
                               (-27, 49, 33)], rng, 10)
    # up the CST trunk, then through the corpus callosum to the other hemisphere's motor cortex
    callosal = _jittered(TRUNK + [(-12, -17, 28), (0, -16, 26), (20, -18, 40), (37, -22, 66)], rng, 5)
    # a thalamocortical stub: starts above the pons
    stub = _jittered([(-14, -20, -4), (-24, -16, 12), (-33, -20, 48), (-37, -22, 66)], rng, 5)
    streamlines = left + right + frontopontine + callosal + stub
    out = extract_corridor(streamlines, atlas, {})
    nl = len(left)
    kept_left = set(out["left"].tolist())
    kept_right = {i - nl for i in out["right"].tolist()}
    assert kept_left <= set(range(nl)) and kept_right <= set(range(len(right)))
    for lo, hi, name in ((0, 30, "hand"), (30, 50, "leg"), (50, 65, "face")):
        got = len([i for i in kept_left if lo <= i < hi])
        assert got >= 0.6 * (hi - lo), f"left {name} branch: {got} of {hi - lo} kept"
        got = len([i for i in kept_right if lo <= i < hi])
        assert got >= 0.6 * (hi - lo), f"right {name} branch: {got} of {hi - lo} kept"
    assert out["info"]["fov_truncated"] is False
    assert out["info"]["inferior_levels"][:2] == ["medulla", "pons"]


def test_truncated_field_of_view_starts_at_the_lowest_level_covered(atlas):
    rng = np.random.default_rng(1)
    # the image stops at MNI z = 0: every streamline starts in the internal capsule
    cut = [_polyline(*[np.array(p, float) + rng.normal(0, 0.8, 3)
                       for p in [(-22, -15, 1), (-24, -16, 12), (-27, -18, 25)] + ENDS["hand"]])
           for _ in range(25)]
    assert len(extract_corridor(cut, atlas, {})["left"]) == 0  # full coverage assumed: none
    out = extract_corridor(cut, atlas, {"coverage_z": 0.0})
    assert len(out["left"]) >= 20 and len(out["right"]) == 0
    assert out["info"]["fov_truncated"] is True
    assert out["info"]["inferior_levels"] == ["internal_capsule"]
    top, levels, truncated = inferior_levels(-30.0)
    assert truncated and levels == ["pons"] and top == -18.0
    assert inferior_levels(-75.0)[2] is False


def test_streamlines_that_stop_in_the_crus_cerebri_count_and_pons_turns_that_off(atlas):
    rng = np.random.default_rng(2)
    fan = _fan(rng, -1)
    # from the hand knob down the capsule into the left crus cerebri, lateral of the brainstem
    # ROI (|x| 20 at MNI z -13), where tracking on the atlas phantom stops
    crus = _jittered([(-20, -17, -13), (-21, -16, -4), (-24, -16, 12), (-27, -18, 25)] + ENDS["hand"], rng, 25,
                     sd=0.5)
    # a thalamocortical stub stopping above the crus's lower part
    stub = _jittered([(-16, -20, -4), (-24, -16, 12), (-27, -18, 25)] + ENDS["hand"], rng, 25, sd=0.5)
    streamlines = fan + crus + stub
    pons = extract_corridor(streamlines, atlas, {"extract_inferior": "pons"})
    assert set(pons["left"].tolist()) <= set(range(len(fan))) and "peduncle_streamlines_kept" not in pons["info"]
    out = extract_corridor(streamlines, atlas, {})  # the default since corridor version 8
    kept = set(out["left"].tolist())
    assert set(range(len(fan), len(fan) + len(crus))) <= kept
    assert not kept & set(range(len(fan) + len(crus), len(streamlines)))
    assert out["info"]["peduncle_streamlines_kept"] == {"left": len(crus), "right": 0}
    assert out["info"]["candidates"]["left"] == len(fan)
    assert out["info"]["inferior_levels"][-1] == "midbrain"
    assert out["info"]["fov_truncated"] is False


def test_peduncle_streamlines_share_the_density_image_but_not_the_floor():
    """Streamlines reaching only the crus count into the density image, so a crus part the
    pons-reaching ones leave empty can be dense, but they do not raise the floor (a share of the
    pons-reaching candidates): raising it let strays through on the sample study."""
    from cstbatch.steps.extract_corridor import clean_density

    rng = np.random.default_rng(3)
    core = _jittered(TRUNK + ENDS["hand"], rng, 150, sd=0.6)
    strays = _jittered([(-5, -33, -45), (-8, -25, -25), (-12, -19, -12), (-30, -5, 10), (-45, -10, 30),
                        (-50, -8, 40)], rng, 30, sd=0.6)
    crus = _jittered([(-20, -17, -13), (-21, -16, -4), (-24, -16, 12), (-27, -18, 25)] + ENDS["hand"], rng, 120,
                     sd=0.6)
    sl = core + strays + crus
    idx = np.arange(len(core) + len(strays))
    extra = np.arange(len(core) + len(strays), len(sl))
    opts = {"extract_tdi_keep": 0.0}
    alone = clean_density(sl, idx, opts)
    both = clean_density(sl, idx, opts, extra=extra)
    assert (alone < 150).sum() >= 60 and not np.isin(alone, strays_idx := np.arange(150, 180)).any()
    assert not np.isin(alone, extra).any()
    assert (both >= 180).sum() >= 40 and (both < 150).sum() >= 60   # the crus's own dense cells
    assert not np.isin(both, strays_idx).any()                       # the strays stay out
    # the floor is a share of the pons-reaching candidates: half of them stay, whatever the crus adds
    floor = clean_density(sl, idx, {"extract_tdi_keep": 0.5}, extra=extra)
    assert np.isin(floor, idx).sum() >= 90


def test_coverage_z_maps_the_lowest_covered_voxel_to_mni():
    fa = np.zeros((10, 10, 10), np.float32)
    fa[4:6, 4:6, 3:] = 0.5
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, -30, -20]
    assert coverage_z(fa, affine, np.eye(4)) == pytest.approx(-14.0)
    shift = np.eye(4)
    shift[2, 3] = -5.0
    assert coverage_z(fa, affine, shift) == pytest.approx(-19.0)
    assert coverage_z(np.zeros_like(fa), affine, np.eye(4)) is None


def test_slab_stopping_under_the_vertex_ends_the_tract_at_the_image_top(atlas):
    """An axial slab that stops at MNI z ~ 32: the CST can only reach the white matter under the
    precentral gyrus. With the image's top known, streamlines ending there under the gyrus count
    (and the session is flagged truncated); one ending as high but in the frontal lobe does not."""
    rng = np.random.default_rng(2)
    up_to_top = _jittered(TRUNK + [(-28, -19, 31)], rng, 30)
    frontal = _jittered(TRUNK[:-1] + [(-24, 10, 24), (-26, 24, 31)], rng, 10)
    streamlines = up_to_top + frontal
    assert len(extract_corridor(streamlines, atlas, {})["left"]) == 0  # full coverage assumed
    out = extract_corridor(streamlines, atlas, {"coverage_top_z": 33.0})
    kept = set(out["left"].tolist())
    assert len(kept) >= 25 and kept <= set(range(30)), sorted(kept)
    assert len(out["right"]) == 0
    assert out["info"]["fov_truncated"] is True and "image's top" in out["info"]["superior_end"]
    assert out["info"]["superior_end_at_image_top"] is True
    # covered to the top: the rule stays off and nothing changes
    assert superior_end_z(SUPERIOR_FULL_Z) is None and superior_end_z(None) is None
    assert superior_end_z(40.0) == pytest.approx(34.0)
    full = extract_corridor(streamlines, atlas, {"coverage_top_z": 80.0})
    assert len(full["left"]) == 0 and full["info"]["superior_end"].startswith("precentral gyrus, cut")
    assert full["info"]["superior_end_at_image_top"] is False


def test_coverage_top_z_is_the_highest_covered_level_under_the_gyrus():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-60, -60, 0]
    fa = np.zeros((60, 50, 45), np.float32)
    fa[:, :, :16] = 0.5               # the image's brain stops at z = 30 mm
    assert coverage_top_z(fa, affine, np.eye(4)) == pytest.approx(30.0)
    assert coverage_options(fa, affine, np.eye(4)) == {"coverage_z": coverage_z(fa, affine, np.eye(4)),
                                                       "coverage_top_z": pytest.approx(30.0)}
    fa[:, :, :] = 0.0
    fa[30, 5, :] = 0.5                # one column on the midline (x = 0): not under the gyrus
    assert coverage_top_z(fa, affine, np.eye(4)) is None


def test_streamlines_turning_out_of_the_pons_are_cut_at_the_turn(atlas):
    """Down the CST into the pons, then out through the middle cerebellar peduncle or back into
    the cerebellum: kept as CST, cut where they leave the brainstem; straight ones stay whole."""
    from cstbatch.steps.atlas import brainstem_section

    rng = np.random.default_rng(3)
    straight = _jittered(TRUNK + ENDS["hand"], rng, 40)
    # the same tract, but below the pons' top it turns out of the side of the pons
    lateral = _jittered(ENDS["hand"][::-1] + TRUNK[::-1][:-2] + [(-9, -26, -28), (-22, -30, -34), (-34, -38, -38)],
                        rng, 20)
    # ... or back into the cerebellum
    backward = _jittered(ENDS["hand"][::-1] + TRUNK[::-1][:-2] + [(-9, -27, -30), (-10, -44, -36), (-12, -56, -40)],
                         rng, 20)
    streamlines = straight + lateral + backward
    out = extract_corridor(streamlines, atlas, {"extract_clip_cortex": False})  # the brainstem end only
    kept = out["left"].tolist()
    assert set(range(40)) <= set(kept) and len(kept) >= 70, kept
    cut = dict(zip(kept, map(tuple, out["ranges"]["left"])))
    assert all(cut[i] == (0, len(streamlines[i])) for i in range(40))  # whole
    for i in range(40, 80):
        if i not in cut:
            continue
        a, b = cut[i]
        assert (a, b) != (0, len(streamlines[i]))
        part = streamlines[i][a:b]
        low = part[part[:, 2] < TRIM_BELOW_Z]
        assert brainstem_section(low[:, 0], low[:, 1], low[:, 2]).all()  # nothing outside kept
        assert part[:, 2].max() == streamlines[i][:, 2].max()              # the cortical end stays
        assert part[:, 2].min() < -20                                      # down into the pons
    assert sum(1 for i in cut if i >= 40) >= 30  # most turning ones kept (cut), not dropped
    assert out["info"]["trimmed_in_brainstem"]["left"] == sum(1 for i in cut if i >= 40)
    # the extract step saves exactly those parts
    saved = selected_streamlines(streamlines, out, "left")
    assert [len(x) for x in saved] == [b - a for a, b in out["ranges"]["left"]]
    # an extractor without ranges: whole streamlines
    assert [len(x) for x in selected_streamlines(streamlines, {"left": [0, 45]}, "left")] == \
        [len(streamlines[0]), len(streamlines[45])]
    assert brainstem_ranges(streamlines, np.array([], np.int64)).shape == (0, 2)
    # a field of view down to the foramen magnum: the tract ends at the brainstem ROI's lower end
    deep = _polyline((-4, -36, -75), *TRUNK, *ENDS["hand"])
    (a, b), = brainstem_ranges([deep], np.array([0]))
    assert deep[a:b, 2].min() >= -60.0 > deep[a - 1, 2] and b == len(deep)


def test_density_cleaning_drops_strays_and_keeps_a_floor_of_the_best_supported():
    """Tract-density cleaning: streamlines that leave the bundle for cells only they visit go,
    the bundle stays. When the share threshold sits above nearly every streamline's share (here
    streamlines that wander by ~3 mm along their length and an ``extract_tdi_inside`` of 1),
    ``extract_tdi_keep`` still keeps that share of the candidates, the best supported ones,
    instead of a handful."""
    from scipy import ndimage

    from cstbatch.steps.extract_corridor import clean_density

    rng = np.random.default_rng(5)
    base = _polyline(*TRUNK, *ENDS["hand"])
    bundle = [base + ndimage.gaussian_filter1d(rng.normal(0.0, 3.0, base.shape), 3, axis=0) for _ in range(160)]
    strays = [_polyline(*[np.array(p, float) + off for p in TRUNK[:4]], (-40 - 10 * k, -40, 20), (-45, -60, 45))
              for k, off in enumerate(rng.normal(0.0, 1.0, (40, 3)))]
    sl = bundle + strays
    idx = np.arange(len(sl))
    kept = clean_density(sl, idx, {})
    assert np.isin(np.arange(160), kept).mean() > 0.9
    assert not np.isin(np.arange(160, 200), kept).any()
    strict = clean_density(sl, idx, {"extract_tdi_inside": 1.0, "extract_tdi_keep": 0.0})
    floor = clean_density(sl, idx, {"extract_tdi_inside": 1.0, "extract_tdi_keep": 0.25})
    assert len(strict) < 0.1 * len(sl)
    assert len(floor) >= 0.25 * len(sl) and set(strict) <= set(floor)
    assert not np.isin(np.arange(160, 200), floor).any()  # the floor takes bundle streamlines


def test_branch_recovery_adds_the_core_of_a_minor_branch_off_the_trunk_not_a_stray():
    """A fan branch that carries few of the side's streamlines (the face area's) falls to the
    density cleaning with the strays; recover_branches adds back its core, because it runs in
    the kept tract's trunk up to the corona radiata, but not a group as large that leaves the
    trunk in the capsule for the white matter beside it."""
    from cstbatch.steps.extract_corridor import clean_density, recover_branches

    rng = np.random.default_rng(7)
    hand = _jittered(TRUNK + ENDS["hand"], rng, 300)
    face = _jittered(TRUNK + ENDS["face"], rng, 30)
    stray = _jittered(TRUNK[:3] + [(-34, -6, 4), (-46, 4, 24), (-50, 2, 46)], rng, 30)
    sl = hand + face + stray
    idx = np.arange(len(sl))
    v8 = {"extract_tdi_parts": False}  # the side's own judgement alone (version 8's cleaning)
    kept = clean_density(sl, idx, v8)
    face_ids, stray_ids = np.arange(300, 330), np.arange(330, 360)
    assert np.isin(face_ids, kept).sum() <= 3 and not np.isin(stray_ids, kept).any()
    out = recover_branches(sl, idx, kept)
    assert set(kept.tolist()) <= set(out.tolist())
    added = np.setdiff1d(out, kept)
    assert len(added) >= 1 and np.isin(added, face_ids).all(), added
    # without the minor branch nothing is added; a side too small to clean is left alone
    no_face = np.concatenate([np.arange(300), stray_ids])
    kept2 = clean_density(sl, no_face, v8)
    assert np.array_equal(recover_branches(sl, no_face, kept2), np.sort(kept2))
    few = np.arange(50)
    assert np.array_equal(recover_branches(sl, few, few[:10]), few[:10])


def test_clip_cortex_ends_each_streamline_where_it_enters_the_cortex(atlas):
    """extract_clip_cortex (the default): the same streamlines are selected, each kept part ends
    where it enters the precentral cortex, whichever way the streamline runs; with the option off
    the ends stay in the gyrus."""
    rng = np.random.default_rng(3)
    left, right = _fan(rng, -1), _fan(rng, +1)
    streamlines = left + [s[::-1] for s in right]  # the right side runs cortex -> brainstem
    plain = extract_corridor(streamlines, atlas, {"extract_clip_cortex": False})
    clipped = extract_corridor(streamlines, atlas, {})
    code, aff = precentral_rois(0.0, grey_only=True)
    for side in ("left", "right"):
        assert np.array_equal(plain[side], clipped[side]) and len(plain[side]) > 20
        ends = []
        for i, (a, b), (a0, b0) in zip(clipped[side], clipped["ranges"][side], plain["ranges"][side]):
            part = streamlines[i][a:b]
            end, before = (part[-1], part[-2]) if part[-1, 2] >= part[0, 2] else (part[0], part[1])
            codes = point_codes(np.array([end, before]), code, aff)
            if point_codes(streamlines[i][a0:b0], code, aff).any():
                assert codes[0] > 0 and codes[1] == 0  # the end is where it enters the cortex
            else:  # stopped short of the cortex (within the target's tolerance): end kept
                assert (a, b) == (a0, b0)
            ends.append(b - a < b0 - a0)
        assert np.mean(ends) > 0.8, np.mean(ends)  # most lose the part inside the cortex
    assert "extract_clip_cortex" in clipped["info"]["superior_end"]
    assert plain["info"]["candidates"]["left"] >= len(plain["left"])


def test_clip_cortex_cuts_at_the_last_entry_not_where_the_streamline_grazes_the_cortex():
    """A streamline that touches the cortex on its way up (a sulcus's depth, a registration a
    few mm off), leaves it and enters it again keeps everything up to the second entry, whichever
    way it runs; the cut at the first touch lost much of the upper fan on the phantoms."""
    code, aff = precentral_rois(0.0, grey_only=True)
    ijk = np.argwhere(code == 1)
    world = ijk @ aff[:3, :3].T + aff[:3, 3]
    low, high = world[np.argmin(world[:, 2])], world[np.argmax(world[:, 2])]
    outside = np.array([[-20.0, -20.0, 0.0], [-20.0, 10.0, 35.0], [-20.0, 10.0, 90.0]])
    assert list(point_codes(np.vstack([low, high]), code, aff)) == [1, 1]
    assert not point_codes(outside, code, aff).any()
    up = np.vstack([outside[0], low, outside[1], high, outside[2]])  # in, out, in, out
    for s, expect in ((up, (0, 4)), (up[::-1], (1, 5))):
        assert tuple(cortex_entry_ranges([s], np.array([0]), np.array([[0, 5]]))[0]) == expect
    # inside from its first point: two points stay, not one
    assert tuple(cortex_entry_ranges([np.vstack([low, high])], np.array([0]), np.array([[0, 2]]))[0]) == (0, 2)
    # never in the gyrus (an image that stops under it): the end stays
    assert tuple(cortex_entry_ranges([outside], np.array([0]), np.array([[0, 3]]))[0]) == (0, 3)


def test_extraction_inputs_give_each_streamline_its_mean_fa():
    from cstbatch.steps.extract_corridor import extraction_inputs

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fa = np.full((20, 20, 20), 0.2, np.float32)
    fa[:, :10] = 0.6                                   # y < 19 mm: coherent white matter
    inside = _polyline((4, 4, 4), (30, 4, 4))          # wholly in the FA 0.6 half
    across = _polyline((4, 4, 8), (4, 34, 8))          # half in each
    outside = _polyline((100, 100, 100), (120, 100, 100))
    sl = [inside, across, outside]
    for unset in ({}, {"extract_fa_keep": None}):
        assert set(extraction_inputs(fa, affine, np.eye(4), sl, unset)) == {"coverage_z", "coverage_top_z"}
    got = extraction_inputs(fa, affine, np.eye(4), sl, {"extract_fa_keep": 0.1})
    assert set(got) == {"coverage_z", "coverage_top_z", "streamline_fa"}
    assert got["streamline_fa"][0] == pytest.approx(0.6)
    assert 0.35 < got["streamline_fa"][1] < 0.45
    assert np.isnan(got["streamline_fa"][2])


def test_high_fa_candidates_the_density_cleaning_dropped_come_back(atlas):
    """A sparse fan branch in coherent white matter (high mean FA) is dropped by the density
    cleaning, like the strays through the background beside it; ``extract_fa_keep`` brings the
    branch back and leaves the strays out. Without the streamlines' FA (an extractor called
    outside the extract step) or with the share 0 the cleaning's choice stands."""
    rng = np.random.default_rng(11)
    hand = _jittered(TRUNK + ENDS["hand"], rng, 300)
    leg = _jittered(TRUNK + ENDS["leg"], rng, 25, sd=2.5)
    stray = _jittered(TRUNK[:4] + [(-34, -30, 20), (-40, -24, 48), (-42, -24, 62)], rng, 25, sd=2.5)
    sl = hand + leg + stray
    fa = np.concatenate([rng.uniform(0.45, 0.55, 300), rng.uniform(0.58, 0.62, 25), rng.uniform(0.25, 0.35, 25)])
    leg_ids, stray_ids = np.arange(300, 325), np.arange(325, 350)
    base = extract_corridor(sl, atlas, {"extract_fa_keep": 0.0, "streamline_fa": fa})
    assert np.isin(leg_ids, base["left"]).sum() <= 5
    out = extract_corridor(sl, atlas, {"extract_fa_keep": 0.1, "streamline_fa": fa})
    assert set(base["left"].tolist()) <= set(out["left"].tolist())
    assert np.isin(leg_ids, out["left"]).sum() >= 20
    assert not np.isin(stray_ids, np.setdiff1d(out["left"], base["left"])).any()
    assert out["info"]["high_fa_streamlines_kept"]["left"] == len(out["left"]) - len(base["left"])
    assert np.array_equal(extract_corridor(sl, atlas, {"extract_fa_keep": 0.1})["left"], base["left"])
    # null reads as the default (off) in the extractor, as extraction_inputs reads it
    assert np.array_equal(extract_corridor(sl, atlas, {"extract_fa_keep": None, "streamline_fa": fa})["left"],
                          base["left"])


def test_the_extract_step_hands_the_extractor_streamline_fa_only_when_asked(tmp_path):
    """Through the extract step itself (saved tractogram, FA map and transform): with
    ``extract_fa_keep`` > 0 the extractor gets each streamline's mean FA and keeps candidates by
    it (recorded in the step's info); by default the step samples nothing and records nothing."""
    import logging
    from types import SimpleNamespace

    import nibabel as nib

    from cstbatch.engine.context import implementation_for
    from cstbatch.engine.session_steps import extract
    from cstbatch.outputs.layout import SessionLayout
    from cstbatch.steps.register import save_itk_affine
    from cstbatch.steps.track import save_trk
    from cstbatch.study.options import defaults

    rng = np.random.default_rng(2)
    sl = [s.astype(np.float32) for s in _jittered(TRUNK + ENDS["hand"], rng, 300)
          + _jittered(TRUNK + ENDS["leg"], rng, 25, sd=2.5)]  # the leg's scatter falls to the cleaning
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-80, -110, -80]
    fa_img = nib.Nifti1Image(np.full((81, 96, 91), 0.5, np.float32), affine)
    layout = SessionLayout(tmp_path, "sub-01", tmp_path.relative_to(tmp_path))
    for path in (layout.tensor_map("fa"), layout.transform(defaults()["atlas"]), layout.tractogram):
        path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(fa_img, str(layout.tensor_map("fa")))
    save_itk_affine(np.eye(4), layout.transform(defaults()["atlas"]))
    save_trk(sl, fa_img, layout.tractogram)
    got = {}
    for share in (0.0, 0.1):
        options = {**defaults(), "extract_fa_keep": share}
        ctx = SimpleNamespace(spec=SimpleNamespace(input_path="/data/sub-01_dwi.nii.gz"), layout=layout,
                              options=options, log=logging.getLogger("test"), spec_plugins_dir=None,
                              implementation=implementation_for("extract", options, None))
        got[share] = extract(ctx)
    assert "high_fa_streamlines_kept" not in got[0.0]["extraction"]
    added = got[0.1]["extraction"]["high_fa_streamlines_kept"]
    assert added["left"] > 0 and added["right"] == 0  # every FA equal: the whole top share joins
    assert got[0.1]["cst_streamlines"]["left"] == got[0.0]["cst_streamlines"]["left"] + added["left"]


def test_fan_judged_per_gyrus_part_keeps_a_minor_leg_branch_but_not_strays_beside_the_trunk():
    """``extract_tdi_parts``: judged by the whole side's density, a leg branch carrying an eighth of
    the side's streamlines is sparse in the fan and goes as a whole; judged in the fan by the
    streamlines ending in the same part of the gyrus too, a good part of it stays. A group as
    large that leaves the trunk in the capsule still goes: below MNI z 20 every cell is judged by
    the whole side."""
    from cstbatch.steps.extract_corridor import clean_density, gyrus_parts

    rng = np.random.default_rng(12)
    hand = _jittered(TRUNK + ENDS["hand"], rng, 300, sd=0.3)
    leg = _jittered(TRUNK + ENDS["leg"], rng, 40, sd=0.3)
    stray = _jittered(TRUNK[:3] + [(-34, -6, 4), (-46, 4, 24), (-50, 2, 46)], rng, 40, sd=0.3)
    sl = hand + leg + stray
    idx = np.arange(len(sl))
    assert gyrus_parts(sl, idx).tolist() == [1] * 300 + [0] * 40 + [2] * 40
    hand_ids, leg_ids, stray_ids = np.arange(300), np.arange(300, 340), np.arange(340, 380)
    whole = clean_density(sl, idx, {"extract_tdi_parts": False})
    assert np.isin(hand_ids, whole).mean() > 0.4
    assert not np.isin(leg_ids, whole).any() and not np.isin(stray_ids, whole).any()
    parts = clean_density(sl, idx, {"extract_tdi_parts": True})
    assert set(whole.tolist()) <= set(parts.tolist())
    assert np.isin(leg_ids, parts).mean() >= 0.25
    assert not np.isin(stray_ids, parts).any()


def test_front_limit_drops_streamlines_that_end_in_front_of_the_crown(atlas):
    """extract_front_mm: a branch that leaves the trunk for the gyrus's front (premotor) half, where
    it enters the cortex 5-8 mm in front of the crown, passes the target and the cleaning; with a
    4 mm limit it goes, the branches that end behind the crown stay, and the info counts what went."""
    from cstbatch.steps.atlas import precentral_crown_y

    rng = np.random.default_rng(5)
    front_end = [(-26, -6, 38), (-28, -1, 58)]
    assert front_end[-1][1] - precentral_crown_y(front_end[-1][2]) == pytest.approx(15.1)
    left = _fan(rng, -1) + _jittered(TRUNK + front_end, rng, 30)
    streamlines = left + _fan(rng, +1)
    n_fan = 65
    plain = extract_corridor(streamlines, atlas, {"extract_front_mm": None})
    limited = extract_corridor(streamlines, atlas, {"extract_front_mm": 4.0})
    assert len([i for i in plain["left"] if i >= n_fan and i < len(left)]) >= 20  # passes without the limit
    kept = limited["left"]
    assert not any(n_fan <= i < len(left) for i in kept)
    assert set(kept) == {i for i in plain["left"] if i < n_fan}
    assert len(limited["ranges"]["left"]) == len(kept)
    assert np.array_equal(limited["right"], plain["right"])
    assert limited["info"]["front_streamlines_dropped"]["left"] == len(plain["left"]) - len(kept)
    assert "front_streamlines_dropped" not in plain["info"]
