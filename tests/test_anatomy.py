"""Random phantom anatomies (the anatomy sweep of issue 14)."""
from __future__ import annotations

import numpy as np
import pytest

from cstbatch.sample.anatomy import random_anatomy
from cstbatch.sample.phantom import make_phantom_session


def test_a_seed_fixes_the_anatomy_and_another_seed_changes_it():
    a, b, c = random_anatomy(3), random_anatomy(3), random_anatomy(4)
    assert a == b
    assert a.bundles != c.bundles
    hand = np.array(a.bundles["cst_left_hand"])
    assert not np.allclose(hand, np.array(c.bundles["cst_left_hand"]))
    # the two sides are drawn on their own: the right CST is not the left one mirrored
    right = np.array(a.bundles["cst_right_hand"]) * [-1, 1, 1, 1]
    assert not np.allclose(hand, right)


def test_cst_fans_out_and_branches_share_one_truth_mask():
    ends = {"leg": [], "face": []}
    for seed in range(12):
        a = random_anatomy(seed)
        assert {a.groups[k] for k in a.bundles if k.startswith("cst_left")} == {"cst_left"}
        for branch in ends:
            name = f"cst_left_{branch}"
            if name in a.bundles:
                ends[branch].append(a.bundles[name][-1])
    leg, face = np.array(ends["leg"]), np.array(ends["face"])
    assert len(leg) >= 6 and len(face) >= 4  # drawn with probability 0.85 / 0.7
    assert np.all(leg[:, 2] > 60) and np.all(np.abs(leg[:, 0]) < 20)   # medial, near the vertex
    assert np.all(face[:, 2] < 42) and np.all(np.abs(face[:, 0]) > 44)  # lateral and low


def test_session_from_an_anatomy_has_union_truth_masks():
    a = random_anatomy(5)
    s = make_phantom_session(seed=5, voxel_mm=4.0, snr=20.0, orientation="RAS", anatomy=a,
                             compute_fa=False)
    for side in ("left", "right"):
        assert s.masks[f"cst_{side}"].sum() > 20
        branches = [k for k in a.bundles if k.startswith(f"cst_{side}_")]
        assert all(k in s.fractions for k in branches)
    assert not (s.masks["cst_left"] & s.masks["cst_right"]).any()
    assert s.masks["distractor"].any()
    assert s.truth()["anatomy"]["seed"] == 5
    again = make_phantom_session(seed=5, voxel_mm=4.0, snr=20.0, orientation="RAS",
                                 anatomy=random_anatomy(5), compute_fa=False)
    assert np.array_equal(s.data, again.data)


def test_each_anatomy_draws_its_own_background_white_matter():
    """Before anatomy version 2 every anatomy had the sample phantom's fixed background, which
    runs nearly along the right CST in the corona radiata and across the left one: every tube
    set asked the same question of its right sides."""
    from cstbatch.sample.phantom import wm_orientation_mni

    beside = np.array([[25.0, -20.0, 30.0], [-25.0, -20.0, 30.0]])  # right, left corona radiata

    def off_vertical(waves):
        v = wm_orientation_mni(beside, waves)
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
        return np.degrees(np.arccos(np.abs(v[:, 2])))

    drawn = np.array([off_vertical(random_anatomy(seed).background) for seed in range(12)])
    assert np.ptp(drawn[:, 0]) > 40 and np.ptp(drawn[:, 1]) > 40
    fixed = off_vertical(None)
    assert fixed[0] < 30 < 40 < fixed[1]
    old = random_anatomy(7, version=1)
    assert old.background == () and old.bundles == random_anatomy(7).bundles
    assert random_anatomy(7).background == random_anatomy(7).background != random_anatomy(8).background


def test_the_background_changes_the_signal_and_not_the_truth():
    a1, a2 = random_anatomy(5, version=1), random_anatomy(5)
    s1, s2 = (make_phantom_session(seed=5, voxel_mm=4.0, snr=0.0, orientation="LAS", anatomy=a,
                                   compute_fa=False) for a in (a1, a2))
    for k in ("cst_left", "cst_right", "distractor"):
        assert np.array_equal(s1.masks[k], s2.masks[k])
    differs = np.any(np.abs(s1.data - s2.data) > 1e-3, axis=-1)
    assert differs.sum() > 0.3 * s1.masks["brain"].sum()
    no_background = s1.masks["brain"] & (s1.fractions["wm"] == 0)  # CSF, grey matter, whole tubes
    assert no_background.sum() > 100 and not differs[no_background].any()
    assert s2.truth()["anatomy"]["version"] == 2 and s1.truth()["anatomy"]["version"] == 1


def test_cst_width_widens_the_cst_alone():
    a, w = random_anatomy(6), random_anatomy(6, cst_width=1.5)
    assert w.cst_width == 1.5 and w.describe()["cst_width"] == 1.5
    for name, pts in a.bundles.items():
        wide = np.array(w.bundles[name])
        assert np.allclose(wide[:, :3], np.array(pts)[:, :3])  # the same course
        factor = 1.5 if name.startswith("cst_") else 1.0
        assert np.allclose(wide[:, 3], np.array(pts)[:, 3] * factor), name
    s1, s2 = (make_phantom_session(seed=6, voxel_mm=4.0, snr=0.0, orientation="RAS", anatomy=x,
                                   compute_fa=False) for x in (a, w))
    for side in ("left", "right"):
        assert s2.masks[f"cst_{side}"].sum() > 1.5 * s1.masks[f"cst_{side}"].sum()
    assert np.array_equal(s1.masks["distractor"] & ~s2.masks["cst_left"] & ~s2.masks["cst_right"],
                          s2.masks["distractor"] & ~s2.masks["cst_left"] & ~s2.masks["cst_right"])
    with pytest.raises(ValueError, match="cst_width"):
        random_anatomy(6, cst_width=0)
