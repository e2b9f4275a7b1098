"""The truth-free rules of benchmarks/selection_rules.py: their verdicts go into RESULTS and the
README, so each must measure what it says (which end is the top, what smoothing keeps, and LiFE
handed streamlines in the frame its gradient table is in)."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from selection_rules import front_offsets, life_weights, smooth_along  # noqa: E402

from cstbatch.steps.atlas import precentral_crown_y  # noqa: E402


def test_front_offset_is_taken_at_the_superior_end_whichever_way_the_streamline_runs():
    top = np.array([-20.0, precentral_crown_y(60.0) + 7.0, 60.0])
    s = np.linspace([-22.0, -20.0, -30.0], top, 50)
    assert np.allclose(front_offsets([s, s[::-1]], np.eye(4)), [7.0, 7.0])
    shift = np.eye(4)
    shift[1, 3] = -4.0  # the subject's frame lies 4 mm in front of MNI's
    assert np.allclose(front_offsets([s], shift), [3.0])


def test_smoothing_keeps_the_ends_and_a_straight_line_and_flattens_a_zigzag():
    line = np.linspace([0.0, 0.0, 0.0], [0.0, 0.0, 60.0], 121)
    out = smooth_along(line, 3.0)
    assert np.allclose(out[[0, -1]], line[[0, -1]])
    assert np.abs(out[:, :2]).max() < 1e-9
    zig = line.copy()
    zig[:, 0] = 1.5 * np.sign(np.sin(np.linspace(0, 20 * np.pi, 121)))
    assert np.abs(smooth_along(zig, 3.0)[5:-5, 0]).max() < 0.5 * np.abs(zig[:, 0]).max()


def test_life_weights_the_streamline_along_the_fibres_over_one_across_them():
    from dipy.core.gradients import gradient_table
    from dipy.core.sphere import HemiSphere, disperse_charges
    from dipy.sims.voxel import single_tensor

    rng = np.random.default_rng(0)
    hemi, _ = disperse_charges(HemiSphere(theta=rng.uniform(0, np.pi, 30), phi=rng.uniform(0, 2 * np.pi, 30)), 500)
    bvecs = np.vstack([[0, 0, 0], hemi.vertices])
    bvals = np.r_[0, np.full(30, 1000.0)]
    gtab = gradient_table(bvals, bvecs=bvecs)
    # fibres along the image's first axis, which the affine maps to scanner -x (an LAS grid)
    sig = single_tensor(gtab, S0=100, evals=np.array([1.7e-3, 0.3e-3, 0.3e-3]), evecs=np.eye(3))
    data = np.broadcast_to(sig, (8, 8, 8, len(bvals))).copy()
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (14.0, -7.0, -7.0)
    along = np.array([affine[:3, :3] @ (i, 4.0, 4.0) + affine[:3, 3] for i in np.linspace(0.5, 6.5, 25)])
    across = np.array([affine[:3, :3] @ (4.0, j, 3.0) + affine[:3, 3] for j in np.linspace(0.5, 6.5, 25)])
    w = life_weights(data, gtab, [along, across], affine)
    assert w[0] > 0
    assert w[1] < 0.25 * w[0]
