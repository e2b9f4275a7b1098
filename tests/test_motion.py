"""Head motion between volumes (steps/motion.py): estimates, correction, b-vectors turned with the head."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cstbatch.steps.gradients import bids_to_voxel_axes, voxel_to_world_dirs
from cstbatch.steps.motion import Motion, apply_motion, estimate_motion, rotate_bvecs, should_correct


def _rot_x(deg):
    t = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


def _head(shape=(40, 44, 32), seed=0):
    """A head-like textured blob (smooth random tissue inside an ellipsoid, zero outside)."""
    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    ijk = np.indices(shape).astype(float)
    c = (np.array(shape) - 1) / 2
    inside = sum(((ijk[a] - c[a]) / (0.42 * shape[a])) ** 2 for a in range(3)) <= 1
    return np.where(inside, 100 + 400 * (tex - tex.min()) / np.ptp(tex), 0).astype(np.float32)


def _affine():
    a = np.eye(4)
    a[:3, :3] = np.diag([-2.0, 2.0, 2.0]) @ _rot_x(10)  # LAS-like, oblique
    a[:3, 3] = [40, -60, -20]
    return a


def _move(vol, affine, m):
    """The volume as a head moved by world transform m would look on the same grid."""
    vox = np.linalg.inv(affine) @ np.linalg.inv(m) @ affine
    return ndimage.affine_transform(vol, vox[:3, :3], vox[:3, 3], order=1)


def _world_motion(affine, shape, deg, shift):
    centre = affine @ np.r_[(np.array(shape) - 1) / 2, 1]
    m = np.eye(4)
    m[:3, :3] = _rot_x(deg)
    m[:3, 3] = centre[:3] - m[:3, :3] @ centre[:3] + np.asarray(shift, float)
    return m


@pytest.fixture(scope="module")
def series():
    head, affine = _head(), _affine()
    bvals = np.array([0] + [1000] * 7, float)
    vols = [head] + [head * (0.35 + 0.03 * k) for k in range(7)]
    true = {3: _world_motion(affine, head.shape, 4.0, [2.0, 0.0, 1.5])}
    data = np.stack([_move(v, affine, true[i]) if i in true else v for i, v in enumerate(vols)], axis=-1)
    return data, bvals, affine, true, np.stack(vols, axis=-1)


def test_estimate_finds_the_moved_volume_and_leaves_the_still_ones(series):
    data, bvals, affine, true, _ = series
    motion = estimate_motion(data, bvals, affine)
    d = motion.displacement_mm
    # the moved volume: ~2.5 mm shift plus 4 degrees about the centre
    assert d[3] > 2.0
    assert abs(motion.rotation_deg[3] - 4.0) < 1.0
    # the still ones move only as much as the mean reference is blurred by the moved one
    assert max(d[i] for i in (1, 2, 4, 5, 6, 7)) < 0.6
    assert d[0] == 0.0  # the single b0 is its own reference
    s = motion.summary()
    assert s["max_displacement_mm"] == pytest.approx(d.max(), abs=1e-3) and len(s["displacement_mm"]) == 8


def test_correction_brings_the_moved_volume_back(series):
    data, bvals, affine, _, still = series
    motion = estimate_motion(data, bvals, affine)
    fixed = apply_motion(data, motion, affine)
    core = ndimage.binary_erosion(still[..., 0] > 0, iterations=4)

    def err(a):
        return float(np.abs(a[..., 3][core] - still[..., 3][core]).mean())

    assert err(fixed) < 0.5 * err(data)
    # a still volume is resampled by its small estimate only (the mean reference holds the moved
    # volume too, so it is a little off): far less change than the moved volume's error
    assert np.abs(fixed[..., 1][core] - data[..., 1][core]).mean() < 0.3 * err(data)


def test_bvecs_turn_back_with_the_head():
    affine = _affine()
    rng = np.random.default_rng(3)
    original = rng.normal(size=(4, 3))
    original /= np.linalg.norm(original, axis=1, keepdims=True)
    original[0] = 0.0  # a b0
    m = _world_motion(affine, (40, 44, 32), 12.0, [1, 2, 3])
    transforms = np.repeat(np.eye(4)[None], 4, axis=0)
    transforms[2] = m
    # the scanner applied the file's vector in the scanner frame; the head was turned by R, so
    # the file of a moved volume holds R·g for a head-frame direction g
    world = voxel_to_world_dirs(bids_to_voxel_axes(original, affine), affine)
    from cstbatch.steps.gradients import voxel_axes_to_bids, world_to_voxel_dirs
    recorded = original.copy()
    recorded[2] = voxel_axes_to_bids(world_to_voxel_dirs(m[:3, :3] @ world[2], affine), affine)
    motion = Motion(transforms, np.zeros(4), np.zeros(4))
    back = rotate_bvecs(recorded, motion, affine)
    assert np.allclose(back, original, atol=1e-9)
    assert not np.allclose(recorded[2], original[2], atol=1e-3)


def test_auto_corrects_only_beyond_half_a_voxel():
    m = Motion(np.repeat(np.eye(4)[None], 3, axis=0), np.array([0.0, 0.4, 0.9]), np.zeros(3))
    assert not should_correct("auto", m, (2.0, 2.0, 2.0))
    assert should_correct("auto", m, (1.5, 1.5, 3.0))
    assert should_correct("rigid", m, (2.0, 2.0, 2.0))
    assert not should_correct("estimate", m, (1.0, 1.0, 1.0))


def _bids_dirs(affine, world_dirs):
    from cstbatch.steps.gradients import voxel_axes_to_bids, world_to_voxel_dirs
    return voxel_axes_to_bids(world_to_voxel_dirs(world_dirs, affine), affine)


@pytest.mark.parametrize("method", ["estimate", "rigid"])
def test_ingest_step_writes_corrected_data_and_turned_bvecs(series, tmp_path, method):
    """The whole ingest step: the record says what moved; ``rigid`` writes the moved volume back
    in place and its b-vector turned back to the head's; ``estimate`` leaves both as given."""
    import logging
    from pathlib import Path
    from types import SimpleNamespace

    import nibabel as nib

    from cstbatch.engine.session_steps import ingest as ingest_step
    from cstbatch.outputs.layout import SessionLayout
    from cstbatch.steps.ingest import check_nifti_dwi

    data, bvals, affine, true, still = series
    head_dirs = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0.6, 0.8], [0.6, 0.8, 0], [0.6, 0, 0.8],
                          [0, 0, 1], [0.48, 0.6, 0.64]], float)
    recorded = head_dirs.copy()
    recorded[3] = true[3][:3, :3] @ head_dirs[3]  # the scanner's direction while the head was turned
    nifti = tmp_path / "sub-01_dwi.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(nifti))
    bval, bvec = tmp_path / "sub-01_dwi.bval", tmp_path / "sub-01_dwi.bvec"
    bval.write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    file_vecs = _bids_dirs(affine, recorded)
    bvec.write_text("".join(" ".join(f"{v:.8f}" for v in file_vecs[:, ax]) + "\n" for ax in range(3)))
    layout = SessionLayout(tmp_path / "deriv", "sub-01", Path("sub-01"))
    spec = SimpleNamespace(input_type="nifti", input_path=nifti, bval=bval, bvec=bvec, inputs=[("dwi", nifti)])
    info = ingest_step(SimpleNamespace(spec=spec, layout=layout, options={"motion_correction": method},
                                       log=logging.getLogger("t")))
    assert info["motion"]["max_displacement_mm"] > 2.0
    assert info["motion"]["corrected"] is (method == "rigid")
    written = check_nifti_dwi(layout.dwi, layout.bval, layout.bvec)
    out = np.asarray(written.img.dataobj, dtype=np.float32)
    world = voxel_to_world_dirs(written.bvecs_voxel, affine)
    angle = np.degrees(np.arccos(np.clip(abs(world[3] @ head_dirs[3]), 0, 1)))
    if method == "estimate":
        np.testing.assert_array_equal(out, data)
        np.testing.assert_allclose(written.bvecs_bids, file_vecs, atol=1e-7)
        assert angle > 3.0
    else:
        core = ndimage.binary_erosion(still[..., 0] > 0, iterations=4)
        assert np.abs(out[..., 3][core] - still[..., 3][core]).mean() < 0.5 * np.abs(data[..., 3][core] - still[..., 3][core]).mean()
        assert angle < 1.5
        assert "motion corrected" in layout.dwi_json.read_text()


def test_head_motion_flag_only_beyond_a_voxel():
    from cstbatch.steps import qc

    def codes(moved, corrected):
        ingest = {"voxel_mm": [2.0, 2.0, 2.0], "n_directions": 30,
                  "motion": {"max_displacement_mm": moved, "max_rotation_deg": 1.0, "corrected": corrected}}
        return qc.session_flags({"left": 400, "right": 400}, {}, ingest=ingest)

    assert codes(1.5, False) == []
    flagged = codes(3.2, False)
    assert [f["code"] for f in flagged] == ["head_motion"] and "not corrected" in flagged[0]["message"]
    assert "3.2 mm" in codes(3.2, True)[0]["message"] and "not corrected" not in codes(3.2, True)[0]["message"]
