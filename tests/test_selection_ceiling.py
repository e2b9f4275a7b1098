"""The oracle of benchmarks/selection_ceiling.py: it bounds what any extraction could choose, so
it must choose by the same visited voxels the sweep scores, and choose well."""
import sys
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from selection_ceiling import greedy_best_dice, voxel_incidence  # noqa: E402

from cstbatch.steps.metrics import visited_voxel_mask  # noqa: E402


def _rows(sets, n_cols):
    r = np.concatenate([np.full(len(s), i) for i, s in enumerate(sets)])
    c = np.concatenate([np.asarray(s) for s in sets])
    return csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(sets), n_cols))


def test_greedy_takes_the_parts_of_the_truth_and_leaves_the_wide_and_the_wrong_streamline():
    truth = np.zeros(40, bool)
    truth[:10] = True
    inc = _rows([np.arange(0, 5),           # half the truth
                 np.arange(5, 10),          # the other half
                 np.arange(0, 30),          # all the truth and twice as much beside it
                 np.arange(30, 40)],        # none of it
                40)
    dice, chosen = greedy_best_dice(inc, truth)
    assert dice == 1.0
    assert chosen.tolist() == [0, 1]


def test_greedy_stops_when_nothing_raises_the_dice():
    truth = np.zeros(20, bool)
    truth[:4] = True
    inc = _rows([np.arange(0, 4), np.arange(2, 20)], 20)  # the second only adds rim
    dice, chosen = greedy_best_dice(inc, truth)
    assert chosen.tolist() == [0]
    assert dice == 1.0


def test_each_row_is_what_the_sweep_counts_as_visited():
    rng = np.random.default_rng(3)
    affine = np.diag([-3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = (40.0, -30.0, -20.0)
    shape = (20, 22, 18)
    sl = [np.cumsum(rng.normal(0, 1.2, (40, 3)), axis=0) + (10.0, 3.0, 5.0) for _ in range(6)]
    inc = voxel_incidence(sl, shape, affine)
    for j, s in enumerate(sl):
        want = np.flatnonzero(visited_voxel_mask([s], shape, affine).ravel())
        assert inc[j].indices.tolist() == sorted(want.tolist())
