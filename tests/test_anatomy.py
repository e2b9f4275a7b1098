"""Random phantom anatomies (the anatomy sweep of issue 14)."""
from __future__ import annotations

import numpy as np

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
