"""The CST corridor and seed regions (steps/track_region.py) and the fixed seed budget."""
from __future__ import annotations

import numpy as np
import pytest

from cstbatch.errors import OptionError
from cstbatch.steps.track import spread_seeds
from cstbatch.steps.track_region import (
    corridor_mni,
    cst_region,
    mni_coordinates,
    seeds_mni,
    tracking_inputs,
)

# MNI mm points on the CST (from atlases of the tract) and points it never visits
ON_CST = {
    "medulla": (-4, -38, -50), "pons": (-10, -26, -28), "peduncle": (-14, -18, -10),
    "posterior limb": (-22, -16, 6), "corona radiata": (-26, -18, 30), "hand knob": (-38, -22, 56),
    "leg area": (-8, -30, 72), "face area": (-58, -4, 24),
}
OFF_CST = {"frontal pole": (-20, 60, 0), "occipital lobe": (-20, -90, 10), "cerebellum": (-30, -62, -35),
           "temporal pole": (-40, 10, -30), "genu of the corpus callosum": (0, 28, 6)}


@pytest.mark.parametrize("side", [1, -1])
def test_corridor_holds_the_whole_tract_and_not_the_rest(side):
    for where, (x, y, z) in ON_CST.items():
        assert corridor_mni(np.array([side * -x, y, z], float)), where
    for where, (x, y, z) in OFF_CST.items():
        assert not corridor_mni(np.array([side * x, y, z], float)), where


def test_seeds_lie_in_the_corridor_at_both_ends_of_the_tract():
    grid = np.stack(np.meshgrid(*(np.arange(-90, 91, 3.0),) * 3, indexing="ij"), -1)
    seeds, corridor = seeds_mni(grid), corridor_mni(grid)
    assert seeds.any() and not (seeds & ~corridor).any()
    for where in ("pons", "posterior limb", "hand knob", "face area"):
        assert seeds_mni(np.array(ON_CST[where], float)), where
    assert not seeds_mni(np.array(ON_CST["corona radiata"], float))  # crossings: followed, not seeded
    # the seeds are a small part of the corridor, the corridor a part of the brain box
    assert seeds.sum() < 0.5 * corridor.sum() < 0.25 * grid[..., 0].size


def test_region_follows_the_registration_on_a_las_oblique_grid():
    """The same MNI regions on the subject grid, whatever the grid's orientation: each voxel's
    MNI position is registration @ affine applied to its index."""
    rng = np.random.default_rng(0)
    affine = np.diag([-2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [90, -120, -80]
    c, s = np.cos(0.3), np.sin(0.3)
    to_mni = np.eye(4)
    to_mni[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    to_mni[:3, 3] = [3, -5, 8]
    shape = (40, 48, 36)
    p = mni_coordinates(shape, affine, to_mni)
    for ijk in rng.integers(0, 36, size=(20, 3)):
        expect = (to_mni @ affine @ np.r_[ijk, 1.0])[:3]
        assert np.allclose(p[tuple(ijk)], expect, atol=1e-3)
    corridor, seeds = cst_region(shape, affine, to_mni)
    assert corridor.any() and seeds.any() and not (seeds & ~corridor).any()


def test_tracking_inputs_by_region():
    shape = (30, 36, 30)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-45, -70, -60]
    brain = np.ones(shape, bool)
    maps = {"fa": np.full(shape, 0.5, np.float32)}
    mask, out, info = tracking_inputs(brain, maps, affine, lambda: np.eye(4), {"track_region": "brain"})
    assert mask.all() and "seed_mask" not in out and info["region"] == "brain"
    mask, out, info = tracking_inputs(brain, maps, affine, lambda: np.eye(4), {})  # default: cst
    assert info["region"] == "cst" and 0 < info["seed_voxels"] < info["region_voxels"] < brain.sum()
    assert not (out["seed_mask"] & ~mask).any()
    with pytest.raises(OptionError, match="track_region"):
        tracking_inputs(brain, maps, affine, lambda: np.eye(4), {"track_region": "hemisphere"})


def test_seed_budget_is_exact_spread_and_reproducible():
    m = np.zeros((10, 10, 10), bool)
    m[2:5, 3:7, 4:6] = True  # 24 voxels
    a = spread_seeds(m, 1000, 7)
    assert len(a) == 1000 and np.array_equal(a, spread_seeds(m, 1000, 7))
    vox = np.rint(a).astype(int)
    assert m[tuple(vox.T)].all()
    counts = np.bincount(np.ravel_multi_index(tuple(vox.T), m.shape), minlength=m.size)[m.ravel()]
    assert counts.min() >= 1000 // 24 and counts.max() <= 1000 // 24 + 1
    assert len(spread_seeds(m, 5, 7)) == 5 and len(spread_seeds(np.zeros_like(m), 5, 7)) == 0
