"""Processing steps on small synthetic phantoms (dipy.sims): conventions, crossings, denoising."""
from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.core.sphere import HemiSphere, disperse_charges
from dipy.sims.voxel import multi_tensor, single_tensor

from cstbatch.steps.gradients import voxel_to_world_dirs
from cstbatch.steps.denoise import (
    denoise_mppca,
    denoise_nlmeans,
    denoise_none,
    denoise_patch2self,
    estimate_noise_sigma,
    signal_mask,
)
from cstbatch.steps.ingest import check_nifti_dwi, load_dwi_data
from cstbatch.steps.mask import mask_median_otsu
from cstbatch.steps.model import fit_tensor_maps
from cstbatch.steps.track import save_trk, track_deterministic, track_tensor_eudx

EVALS = np.array([1.7e-3, 0.3e-3, 0.3e-3])
OPTIONS = {
    "denoise_patch_radius": 1,
    "patch2self_model": "ols",
    "mask_median_radius": 2,
    "mask_numpass": 2,
    "track_seed_density": 1,
    "track_seed_fa": 0.2,
    "track_stop_fa": 0.15,
    "track_step_size": 0.5,
    "track_max_angle": 30.0,
    "track_min_length": 4.0,
    "track_random_seed": 42,
}


def _directions(n, seed=0):
    rng = np.random.default_rng(seed)
    hs = HemiSphere(theta=np.arccos(rng.uniform(0, 1, n)), phi=rng.uniform(0, 2 * np.pi, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hs, _ = disperse_charges(hs, 1000, const=0.05)
    return hs.vertices


def _scheme(n_dirs=30, n_b0=3, b=1000.0):
    """A clinical-like single shell: b0s + ``n_dirs`` well spread unit directions."""
    bvals = np.r_[np.zeros(n_b0), np.full(n_dirs, b)]
    bvecs = np.r_[np.zeros((n_b0, 3)), _directions(n_dirs)]
    return bvals, bvecs


def _rician(signal, sd, seed):
    rng = np.random.default_rng(seed)
    return np.sqrt((signal + rng.normal(0, sd, signal.shape)) ** 2
                   + rng.normal(0, sd, signal.shape) ** 2).astype(np.float32)


def _crossing_phantom(shape=(24, 24, 6), snr=30, frac_b=60, seed=1):
    """Bundle A along voxel axis i, bundle B along j, crossing at 90° in the middle.

    B is the larger bundle in the crossing (60 %), as the corpus callosum is where it crosses
    the CST: a tensor there points along B. Returns data, gtab (voxel axes), labels
    (0 isotropic tissue, 1 A only, 2 B only, 3 crossing) and the noise-free signal.
    """
    bvals, bvecs = _scheme()
    gtab = gradient_table(bvals, bvecs=bvecs)
    lab = np.zeros(shape, int)
    a = np.zeros(shape, bool)
    a[:, 9:15, :] = True
    b = np.zeros(shape, bool)
    b[9:15, :, :] = True
    lab[a], lab[b], lab[a & b] = 1, 2, 3
    sig = {
        0: single_tensor(gtab, 100, evals=np.array([0.8e-3] * 3)),
        1: multi_tensor(gtab, np.array([EVALS]), S0=100, angles=[(90, 0)], fractions=[100], snr=None)[0],
        2: multi_tensor(gtab, np.array([EVALS]), S0=100, angles=[(90, 90)], fractions=[100], snr=None)[0],
        3: multi_tensor(gtab, np.array([EVALS, EVALS]), S0=100, angles=[(90, 0), (90, 90)],
                        fractions=[100 - frac_b, frac_b], snr=None)[0],
    }
    clean = np.zeros(shape + (bvals.size,), np.float32)
    for k, s in sig.items():
        clean[lab == k] = s
    data = _rician(clean, 100.0 / snr, seed) if snr else clean
    return data, gtab, lab, clean


@pytest.fixture(scope="module")
def crossing():
    data, gtab, lab, _ = _crossing_phantom()
    mask = np.ones(lab.shape, bool)
    maps = fit_tensor_maps(data, gtab, mask)
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [30.0, -20.0, -5.0]
    return data, gtab, lab, mask, maps, affine


def _to_vox(sl, affine):
    return (sl - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T


def _through_fraction(streamlines, affine):
    """Of the streamlines inside bundle A on one side of the crossing, the fraction that come
    out along bundle A on the other side."""
    touching = through = 0
    for sl in streamlines:
        v = _to_vox(sl, affine)
        in_a = (v[:, 1] > 8.5) & (v[:, 1] < 14.5)
        left = in_a & (v[:, 0] < 7.0)
        right = in_a & (v[:, 0] > 16.0)
        if left.any() or right.any():
            touching += 1
            through += bool(left.any() and right.any())
    return through / max(touching, 1), touching


# ---------------------------------------------------------------------------------------------
# gradient convention: LAS / RAS / oblique images give the same world fibre direction
# ---------------------------------------------------------------------------------------------

def _rot(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _affine(kind):
    base = {"LAS": np.diag([-2.0, 2.0, 2.0]), "RAS": np.diag([2.0, 2.0, 2.0])}[kind[:3]]
    lin = base if not kind.endswith("oblique") else _rot([0.3, 0.2, 1.0], 25) @ base
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = [-10, 5, 3]
    return aff


def _write_single_fibre(tmp_path, kind, fibre_world):
    """Noise-free single-fibre DWI of a fibre along ``fibre_world`` (RAS+), stored with the
    affine ``kind``; the .bvec holds the scanner's world gradients in the BIDS convention
    (voxel axes, x negated when det > 0), computed here independently of cstbatch."""
    affine = _affine(kind)
    bvals, g_world = _scheme()
    w = np.asarray(fibre_world, float) / np.linalg.norm(fibre_world)
    d = EVALS[1] * np.eye(3) + (EVALS[0] - EVALS[1]) * np.outer(w, w)
    sig = 100 * np.exp(-bvals * np.einsum("ni,ij,nj->n", g_world, d, g_world))
    data = np.broadcast_to(sig, (5, 5, 5, bvals.size)).astype(np.float32)
    lin = affine[:3, :3]
    rot = lin / np.linalg.norm(lin, axis=0)
    bvec = g_world @ rot  # components along the voxel axes (rot orthonormal: R^T g)
    if np.linalg.det(lin) > 0:
        bvec[:, 0] *= -1
    paths = [tmp_path / f"{kind}.nii.gz", tmp_path / f"{kind}.bval", tmp_path / f"{kind}.bvec"]
    nib.save(nib.Nifti1Image(data, affine), str(paths[0]))
    paths[1].write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    paths[2].write_text("".join(" ".join(f"{x:.8f}" for x in bvec[:, i]) + "\n" for i in range(3)))
    return paths, affine, w


@pytest.mark.parametrize("kind", ["LAS", "RAS", "LAS-oblique", "RAS-oblique"])
@pytest.mark.parametrize("fibre", [(1.0, 0.0, 0.0), (0.8, 0.5, 0.3)], ids=["x", "oblique"])
def test_gradient_convention_world_direction(tmp_path, kind, fibre):
    paths, affine, w = _write_single_fibre(tmp_path, kind, fibre)
    checked = check_nifti_dwi(*paths)
    data = load_dwi_data(checked)
    maps = fit_tensor_maps(data, checked.gtab, np.ones(data.shape[:3], bool))
    e1 = voxel_to_world_dirs(maps["evecs"][2, 2, 2, :, 0], affine)
    assert abs(e1 @ w) > 0.95, (kind, e1, w)
    assert maps["fa"][2, 2, 2] > 0.7
    if np.linalg.det(affine[:3, :3]) > 0 and abs(w[0]) < 0.99:
        # the test is sensitive: forgetting the BIDS x flip mirrors the oblique fibre
        naive = fit_tensor_maps(data, gradient_table(checked.bvals, bvecs=checked.bvecs_bids),
                                np.ones(data.shape[:3], bool))
        e1_naive = voxel_to_world_dirs(naive["evecs"][2, 2, 2, :, 0], affine)
        assert abs(e1_naive @ w) < 0.95


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

def test_tensor_maps_shapes_and_mask(crossing):
    data, gtab, lab, _, _, _ = crossing
    mask = np.zeros(lab.shape, bool)
    mask[2:-2, 2:-2, 1:-1] = True
    data = data.copy()
    data[5, 5, 2] = 0.0  # degenerate voxel: all-zero signal
    maps = fit_tensor_maps(data, gtab, mask)
    for k in ("fa", "md", "rd", "ad"):
        assert maps[k].shape == lab.shape and maps[k].dtype == np.float32
        assert np.isfinite(maps[k]).all()
        assert (maps[k][~mask] == 0).all()
    assert maps["evecs"].shape == lab.shape + (3, 3) and maps["evecs"].dtype == np.float32
    assert np.isfinite(maps["evecs"]).all()
    inner = mask & (lab == 1)
    assert 0.6 < maps["fa"][inner].mean() < 0.95
    assert 0.5e-3 < maps["md"][inner].mean() < 1.0e-3
    np.testing.assert_allclose(maps["md"][inner], ((maps["ad"] + 2 * maps["rd"]) / 3)[inner], rtol=1e-4)
    assert (maps["fa"] <= 1).all() and (maps["fa"] >= 0).all()


def test_tensor_normal_equations_match_dipy_wls(crossing):
    """The batched WLS solve is dipy's WLS: same eigenvalues, also in degenerate voxels."""
    from dipy.reconst.dti import TensorModel

    from cstbatch.steps.model import wls_normal_equations

    data, gtab, lab, _, _, _ = crossing
    data = data.copy()
    data[5, 5, 2] = 0.0                      # all-zero signal
    data[6, 5, 2, 1:] = 1e-6 * data[6, 5, 2, 1:]  # diffusion signal vanishing: weights span decades
    ours = TensorModel(gtab, fit_method=wls_normal_equations).fit(data)
    dipy = TensorModel(gtab, fit_method="WLS").fit(data)
    np.testing.assert_allclose(ours.evals, dipy.evals, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.abs((ours.evecs[..., :, 0] * dipy.evecs[..., :, 0]).sum(-1))[lab == 1], 1.0,
                               atol=1e-9)


# ---------------------------------------------------------------------------------------------
# tracking
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def csd_streamlines(crossing):
    data, gtab, _, mask, maps, affine = crossing
    return track_deterministic(data, gtab, mask, maps, affine, OPTIONS)


def test_csd_gets_through_crossing_tensor_does_not(crossing, csd_streamlines):
    data, gtab, _, mask, maps, affine = crossing
    dti = track_tensor_eudx(data, gtab, mask, maps, affine, OPTIONS)
    csd_frac, n_csd = _through_fraction(csd_streamlines, affine)
    dti_frac, n_dti = _through_fraction(dti, affine)
    assert n_csd > 50 and n_dti > 50
    assert csd_frac > 0.6, csd_frac
    assert dti_frac < csd_frac - 0.4, (dti_frac, csd_frac)


def test_streamlines_are_world_mm(crossing, csd_streamlines):
    _, _, lab, _, _, affine = crossing
    assert all(s.dtype == np.float32 and s.ndim == 2 and s.shape[1] == 3 for s in csd_streamlines)
    pts = np.concatenate(csd_streamlines)
    vox = _to_vox(pts, affine)
    assert (vox > -1).all() and (vox < np.array(lab.shape)).all()
    # step size is in mm (voxels are 2 mm) and the minimum length is honoured
    steps = np.concatenate([np.linalg.norm(np.diff(s, axis=0), axis=1) for s in csd_streamlines])
    np.testing.assert_allclose(steps, OPTIONS["track_step_size"], rtol=1e-3)
    lengths = [np.linalg.norm(np.diff(s, axis=0), axis=1).sum() for s in csd_streamlines]
    assert min(lengths) >= OPTIONS["track_min_length"]


def test_same_phantom_las_and_ras_give_same_world_streamlines(crossing):
    """Storing the same world-space object flipped along x (LAS vs RAS) must not move tracks."""
    data, gtab, lab, mask, maps, las = crossing
    ras = las.copy()
    ras[0, 0] = 2.0
    ras[0, 3] = las[0, 3] - 2.0 * (lab.shape[0] - 1)  # voxel 0 of RAS = last voxel of LAS
    flip_data = np.ascontiguousarray(data[::-1])
    flip_bvecs = gtab.bvecs * [-1, 1, 1]  # voxel axis i reversed
    gtab_ras = gradient_table(gtab.bvals, bvecs=flip_bvecs)
    maps_ras = fit_tensor_maps(flip_data, gtab_ras, mask[::-1])
    opts = dict(OPTIONS, track_seed_density=1)
    a = track_tensor_eudx(data, gtab, mask, maps, las, opts)
    b = track_tensor_eudx(flip_data, gtab_ras, mask[::-1], maps_ras, ras, opts)
    pa, pb = np.concatenate(a), np.concatenate(b)
    np.testing.assert_allclose(pa.min(0), pb.min(0), atol=1.0)
    np.testing.assert_allclose(pa.max(0), pb.max(0), atol=1.0)
    np.testing.assert_allclose(pa.mean(0), pb.mean(0), atol=1.0)


def test_fixed_seed_identical_streamlines(crossing, csd_streamlines):
    data, gtab, _, mask, maps, affine = crossing
    again = track_deterministic(data, gtab, mask, maps, affine, OPTIONS)
    assert len(again) == len(csd_streamlines)
    assert all(np.array_equal(x, y) for x, y in zip(again, csd_streamlines))
    no_evecs = {k: v for k, v in maps.items() if k != "evecs"}  # as re-read from saved maps
    refit = track_tensor_eudx(data, gtab, mask, no_evecs, affine, OPTIONS)
    other = track_tensor_eudx(data, gtab, mask, maps, affine, dict(OPTIONS, track_random_seed=7))
    same = track_tensor_eudx(data, gtab, mask, maps, affine, OPTIONS)
    same2 = track_tensor_eudx(data, gtab, mask, maps, affine, OPTIONS)
    assert all(np.array_equal(x, y) for x, y in zip(same, same2)) and len(same) == len(same2)
    assert all(np.array_equal(x, y) for x, y in zip(same, refit)) and len(same) == len(refit)
    assert len(other) != len(same) or any(not np.array_equal(x, y) for x, y in zip(other, same))


def test_cropping_to_the_region_changes_no_streamline(crossing, monkeypatch):
    """The tracker works on the region's bounding box (memory, speed); the streamlines must be
    where tracking on the whole grid puts them."""
    from cstbatch.steps import track as track_mod

    data, gtab, lab, mask, maps, affine = crossing
    region = mask.copy()
    region[: lab.shape[0] // 4] = False  # a region smaller than the grid: the box is a real crop
    seeds = region.copy()
    seeds[:, : lab.shape[1] // 2] = False
    region_maps = {**maps, "seed_mask": seeds}
    cropped = track_deterministic(data, gtab, region, region_maps, affine, OPTIONS)
    monkeypatch.setattr(track_mod, "crop_to_region", lambda d, m, mp, a: (d, m, mp, a))
    whole = track_deterministic(data, gtab, region, region_maps, affine, OPTIONS)
    assert len(cropped) == len(whole) > 20
    assert all(np.allclose(x, y, atol=1e-3) for x, y in zip(cropped, whole))
    # seeded only in the seed mask: every streamline passes through it
    starts = [_to_vox(s, affine) for s in cropped]
    assert all(seeds[tuple(np.clip(np.rint(v), 0, np.array(lab.shape) - 1).astype(int).T)].any() for v in starts)


def _reproducible_and_through(tracker, crossing) -> list[np.ndarray]:
    """A random tracker's streamlines, after checking that a second run gives the same ones and
    that most get through the crossing."""
    data, gtab, _, mask, maps, affine = crossing
    a = tracker(data, gtab, mask, maps, affine, OPTIONS)
    b = tracker(data, gtab, mask, maps, affine, OPTIONS)
    assert len(a) == len(b) > 50 and all(np.array_equal(x, y) for x, y in zip(a, b))
    frac, _ = _through_fraction(a, affine)
    assert frac > 0.5, frac
    return a


def test_probabilistic_tracking_is_reproducible_and_gets_through(crossing):
    from cstbatch.steps.track import track_probabilistic

    _reproducible_and_through(track_probabilistic, crossing)


def test_ptt_is_reproducible_gets_through_and_joins_the_deterministic_tracker(crossing, csd_streamlines):
    """PTT (an option, and half of csd_deterministic_ptt): same seed, same streamlines; through
    the crossing; its own short steps; and the combined tracker is the deterministic tracker's
    streamlines followed by PTT's, from one fODF fit."""
    from cstbatch.steps.track import PTT_STEP_MM, track_deterministic_ptt, track_ptt

    a = _reproducible_and_through(track_ptt, crossing)
    data, gtab, _, mask, maps, affine = crossing
    steps = np.concatenate([np.linalg.norm(np.diff(s, axis=0), axis=1) for s in a])
    np.testing.assert_allclose(np.median(steps), PTT_STEP_MM, rtol=0.05)
    both = track_deterministic_ptt(data, gtab, mask, maps, affine, OPTIONS)
    assert len(both) == len(csd_streamlines) + len(a)
    assert all(np.array_equal(x, y) for x, y in zip(both, list(csd_streamlines) + list(a)))


def _step_angles_in(streamlines, affine, labels, label):
    """Angles (degrees) between voxel axis i and each step that starts in a voxel of ``label``."""
    out = []
    for sl in streamlines:
        v = _to_vox(sl, affine)
        d = np.diff(v, axis=0)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        idx = np.floor(v[:-1] + 0.5).astype(int)
        inside = (idx >= 0).all(1) & (idx < labels.shape).all(1)
        keep = np.zeros(len(d), bool)
        keep[inside] = labels[tuple(idx[inside].T)] == label
        out.append(np.degrees(np.arccos(np.clip(np.abs(d[keep, 0]), 0.0, 1.0))))
    return np.concatenate(out)


def test_probabilistic_steps_keep_to_the_lobe_core(crossing, monkeypatch):
    """Drawing from the whole lobe (10 % floor) scatters the steps, and streamlines drift over a
    thin tract's rim; the probabilistic tracker draws from the lobe's core (50 %)."""
    from cstbatch.steps import track

    data, gtab, lab, mask, maps, affine = crossing
    core = _step_angles_in(track.track_probabilistic(data, gtab, mask, maps, affine, OPTIONS), affine, lab, 1)
    monkeypatch.setattr(track, "PROBABILISTIC_PMF_THRESHOLD", track.PMF_THRESHOLD)
    whole = _step_angles_in(track.track_probabilistic(data, gtab, mask, maps, affine, OPTIONS), affine, lab, 1)
    assert len(core) > 1000 and len(whole) > 1000
    # measured: 90th percentile 20.0° against 29.2°, mean 13.2° against 17.8°
    assert np.percentile(core, 90) < 24.0 < np.percentile(whole, 90)
    assert core.mean() < whole.mean() - 2.5


def test_save_trk_roundtrip(tmp_path, crossing, csd_streamlines):
    from dipy.io.streamline import load_tractogram

    data, _, _, _, _, affine = crossing
    ref = nib.Nifti1Image(np.zeros(data.shape[:3], np.float32), affine)
    out = tmp_path / "sub" / "tracks.trk"
    save_trk(csd_streamlines[:200], ref, out)
    assert out.exists() and [p.name for p in out.parent.iterdir()] == ["tracks.trk"]
    sft = load_tractogram(str(out), ref, bbox_valid_check=False)
    assert len(sft.streamlines) == 200
    for a, b in zip(sft.streamlines, csd_streamlines[:200]):
        np.testing.assert_allclose(a, b, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# mask and denoising
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def noisy_object():
    """Crossing phantom inside an ellipsoidal object in a zero background, Rician SNR 12."""
    _, gtab, lab, clean = _crossing_phantom(shape=(18, 18, 14), snr=None)
    grid = np.indices(lab.shape).astype(float)
    centre = (np.array(lab.shape) - 1) / 2.0
    radii = np.array([7.5, 7.5, 5.5])
    obj = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    clean = np.where(obj[..., None], clean, 0).astype(np.float32)
    noisy = _rician(clean, 100.0 / 12, seed=3)
    return noisy, clean, gtab, obj


def test_mask_median_otsu(noisy_object):
    from scipy import ndimage

    noisy, _, gtab, obj = noisy_object
    mask = mask_median_otsu(noisy, gtab, OPTIONS)
    assert mask.dtype == bool and mask.shape == obj.shape
    # no background (noise) voxels, the object's core fully inside; the median filter rounds
    # the edges of this small object a little
    assert not (mask & ~ndimage.binary_dilation(obj)).any()
    assert mask[ndimage.binary_erosion(obj, iterations=2)].all()
    assert (mask & obj).sum() > 0.6 * obj.sum()


def test_noise_estimate(noisy_object):
    noisy, _, gtab, _ = noisy_object
    sigma = estimate_noise_sigma(noisy, gtab)  # 3 b0s: from b0 residuals
    assert 0.85 * 100 / 12 < sigma < 1.15 * 100 / 12, sigma
    one_b0 = np.r_[0, np.arange(3, noisy.shape[-1])]
    g1 = gradient_table(gtab.bvals[one_b0], bvecs=gtab.bvecs[one_b0])
    sigma1 = estimate_noise_sigma(noisy[..., one_b0], g1)  # spatial residual fallback
    assert 0.6 * 100 / 12 < sigma1 < 1.5 * 100 / 12, sigma1


@pytest.mark.parametrize("denoiser,options", [
    (denoise_patch2self, {"patch2self_model": "ols"}),
    (denoise_patch2self, {"patch2self_model": "ridge"}),
    (denoise_nlmeans, {"denoise_patch_radius": 1}),
    (denoise_mppca, {"denoise_patch_radius": 1}),
], ids=["patch2self-ols", "patch2self-ridge", "nlmeans", "mppca"])
def test_denoisers_lower_error(noisy_object, denoiser, options):
    noisy, clean, gtab, obj = noisy_object
    out = denoiser(noisy, gtab, options)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    err_before = np.sqrt(np.mean((noisy[obj] - clean[obj]) ** 2))
    err_after = np.sqrt(np.mean((out[obj] - clean[obj]) ** 2))
    assert err_after < 0.9 * err_before, (err_after, err_before)


@pytest.mark.parametrize("radius,batch", [(1, 4096), (1, 37), (2, 500)])
def test_mppca_matches_dipy(noisy_object, radius, batch):
    """The batched Marchenko-Pastur PCA must be dipy's ``mppca`` (to float rounding), across
    batch sizes (a batch boundary must not change an accumulation) and patch sizes; and it
    must really remove noise (not return its input)."""
    from dipy.denoise.localpca import mppca

    from cstbatch.steps.mppca import mppca_batched, noise_variance

    noisy, clean, gtab, obj = noisy_object
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = mppca(noisy, mask=obj, patch_radius=radius, pca_method="eig", out_dtype=np.float64,
                    suppress_warning=True)
    ours = mppca_batched(noisy, obj, radius, batch=batch)
    seen = obj & np.isfinite(ref).all(axis=-1)  # dipy leaves 0/0 where no patch reaches
    assert seen.sum() > 0.9 * obj.sum()
    np.testing.assert_allclose(ours[seen], ref[seen], rtol=1e-4, atol=1e-3)
    assert np.abs(ours[obj] - noisy[obj]).mean() > 1.0
    # the classifier, against dipy's loop on random spectra
    from dipy.denoise.localpca import _pca_classifier

    rng = np.random.default_rng(0)
    spectra = np.sort(rng.gamma(1.0, 1.0, (50, 12)) * np.r_[np.ones(9), 20, 40, 80], axis=1)
    expect = [_pca_classifier(L, 27)[0] for L in spectra]
    np.testing.assert_allclose(noise_variance(spectra, 27), expect, rtol=1e-12)
    # matrices above the batched-eigh size take the per-matrix LAPACK path: same decomposition
    from cstbatch.steps.mppca import BATCHED_EIGH_MAX, _eigh

    X = rng.normal(size=(5, 60, BATCHED_EIGH_MAX + 8))
    C = np.matmul(X.transpose(0, 2, 1), X)
    d, W = _eigh(C)
    d_ref, W_ref = np.linalg.eigh(C)
    np.testing.assert_allclose(d, d_ref, rtol=1e-10)
    np.testing.assert_allclose(W[:, :, -3:] @ W[:, :, -3:].transpose(0, 2, 1),
                               W_ref[:, :, -3:] @ W_ref[:, :, -3:].transpose(0, 2, 1), atol=1e-8)


def test_patch2self_single_b0_not_first(noisy_object):
    noisy, _, gtab, _ = noisy_object
    keep = np.r_[3:10, 0, 10:noisy.shape[-1]]  # one b0, at index 7
    g = gradient_table(gtab.bvals[keep], bvecs=gtab.bvecs[keep])
    data = np.ascontiguousarray(noisy[..., keep])
    out = denoise_patch2self(data, g, {"patch2self_model": "ols"})
    np.testing.assert_array_equal(out[..., 7], data[..., 7])


def test_signal_mask_covers_object_not_background(noisy_object):
    noisy, _, gtab, obj = noisy_object
    m = signal_mask(noisy, gtab)
    assert m[obj].all()
    assert m.sum() < 0.8 * m.size  # the corners of the field of view are skipped


def test_denoise_none_is_identity(noisy_object):
    noisy, _, gtab, _ = noisy_object
    out = denoise_none(noisy, gtab, {})
    assert out.dtype == np.float32 and np.array_equal(out, noisy)
    assert denoise_none(noisy.astype(np.float64), gtab, {}).dtype == np.float32


def test_csd_fit_matches_dipy_model_fit(crossing):
    """The batched CSD solve must give dipy's own coefficients (to rounding)."""
    import warnings

    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel

    from cstbatch.steps.track import _fit_csd_voxels, _response

    data, gtab, _, mask, maps, _ = crossing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ConstrainedSphericalDeconvModel(gtab, _response(gtab, data, maps["fa"], mask), sh_order_max=6)
        fit_mask = mask & (maps["fa"] > 0.15)
        expected = np.asarray(model.fit(data, mask=fit_mask).shm_coeff)
    got = _fit_csd_voxels(model, data, fit_mask)
    assert fit_mask.sum() > 20 and np.abs(got).sum() > 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    # the constraint was active: voxels needed the augmented solve, not just least squares
    unconstrained = np.linalg.solve(model._P, (data[fit_mask][:, model._where_dwi] @ model._X).T).T
    assert np.abs(unconstrained - expected[fit_mask]).max() > 1e-3 * np.abs(expected).max()
    # chunk boundaries change nothing
    np.testing.assert_allclose(_fit_csd_voxels(model, data, fit_mask, chunk=7), got, rtol=0,
                               atol=1e-12 * np.abs(expected).max())



def test_denoising_for_tracking_lowers_error_inside_the_region_only(noisy_object):
    from cstbatch.steps.track import denoise_for_tracking

    noisy, clean, gtab, obj = noisy_object
    region = obj.copy()
    region[: obj.shape[0] // 2] = False
    out = denoise_for_tracking(noisy, region, "mppca")
    inner = region.copy()
    inner[: obj.shape[0] // 2 + 2] = False  # away from the region's cut, fully inside patches
    err = lambda d, m: np.sqrt(np.mean((d[m] - clean[m]) ** 2))  # noqa: E731
    assert err(out, inner) < 0.9 * err(noisy, inner)
    from scipy import ndimage

    reach = ndimage.binary_dilation(region, np.ones((5, 5, 5), bool))  # patch radius 2 (33 volumes)
    assert np.array_equal(out[~reach], noisy[~reach])  # no patch centre outside the region
    assert denoise_for_tracking(noisy, region, "none") is noisy
    from cstbatch.errors import OptionError
    with pytest.raises(OptionError, match="track_denoise"):
        denoise_for_tracking(noisy, region, "gaussian")


def test_tracking_with_and_without_denoising_gets_through(crossing):
    """Both settings track through the crossing; they differ (the option does something), and
    each is reproducible."""
    data, gtab, lab, mask, maps, affine = crossing
    on = track_deterministic(data, gtab, mask, maps, affine, {**OPTIONS, "track_denoise": "mppca"})
    off = track_deterministic(data, gtab, mask, maps, affine, {**OPTIONS, "track_denoise": "none"})
    again = track_deterministic(data, gtab, mask, maps, affine, {**OPTIONS, "track_denoise": "mppca"})
    assert len(on) > 20 and len(off) > 20
    assert len(on) == len(again) and all(np.array_equal(x, y) for x, y in zip(on, again))
    assert len(on) != len(off) or any(not np.array_equal(x, y) for x, y in zip(on, off))


def test_patch2self_unknown_model_is_an_option_error(noisy_object):
    """Called directly (as a plugin would), a bad model is the one-line option error the
    batch summary reports, not a bare ValueError."""
    from cstbatch.errors import OptionError

    noisy, _, gtab, _ = noisy_object
    with pytest.raises(OptionError, match="patch2self_model.*'lasso'"):
        denoise_patch2self(noisy, gtab, {"patch2self_model": "lasso"})


def test_fodf_smoothing_steadies_noisy_peaks_and_stays_inside_the_fit():
    """A field of one fibre direction with noisy SH coefficients: after smoothing, each voxel's
    peak lies nearer the true direction; a constant field is unchanged (normalised kernel), and
    voxels without a fit stay empty and lend nothing to their neighbours."""
    from dipy.data import default_sphere
    from dipy.reconst.shm import sf_to_sh, sh_to_sf

    from cstbatch.steps.track import smooth_fodf

    true = np.array([1.0, 0.0, 0.0])
    lobe = np.exp(-((1 - np.abs(default_sphere.vertices @ true)) / 0.05))
    coef = sf_to_sh(lobe, default_sphere, sh_order_max=6)
    rng = np.random.default_rng(3)
    shm = np.zeros((10, 10, 10, coef.size))
    fitted = np.zeros((10, 10, 10), bool)
    fitted[1:9, 1:9, 1:9] = True
    shm[fitted] = coef + rng.normal(0, 0.5 * np.abs(coef).max(), (int(fitted.sum()), coef.size))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])

    def error_deg(field):
        sf = sh_to_sf(field[fitted], default_sphere, sh_order_max=6)
        peaks = default_sphere.vertices[np.argmax(sf, axis=-1)]
        return np.degrees(np.arccos(np.clip(np.abs(peaks @ true), 0, 1)))

    smooth = smooth_fodf(shm, affine, 3.5)
    assert np.mean(error_deg(smooth)) < 0.6 * np.mean(error_deg(shm))
    assert not smooth[~fitted].any()
    const = np.where(fitted[..., None], coef, 0.0)
    np.testing.assert_allclose(smooth_fodf(const, affine, 3.5)[fitted], const[fitted], rtol=1e-10, atol=1e-12)
    assert smooth_fodf(shm, affine, 0.0) is shm
    from cstbatch.errors import OptionError
    with pytest.raises(OptionError, match=r"track_fodf_fwhm: -1.0 is outside \[0, \)"):
        smooth_fodf(shm, affine, -1.0)


def test_tracking_with_smoothed_fodfs_gets_through_and_is_reproducible(crossing):
    data, gtab, lab, mask, maps, affine = crossing
    opts = {**OPTIONS, "track_fodf_fwhm": 3.5}
    on = track_deterministic(data, gtab, mask, maps, affine, opts)
    again = track_deterministic(data, gtab, mask, maps, affine, opts)
    off = track_deterministic(data, gtab, mask, maps, affine, {**OPTIONS, "track_fodf_fwhm": 0.0})
    assert len(on) > 20
    assert len(on) == len(again) and all(np.array_equal(x, y) for x, y in zip(on, again))
    assert len(on) != len(off) or any(not np.array_equal(x, y) for x, y in zip(on, off))


def _tube_in_background(order: int = 6, n: int = 20, seed: int = 3):
    """Noisy SH field: a tube two voxels wide along x inside a background running along y."""
    from dipy.data import default_sphere
    from dipy.reconst.shm import sf_to_sh

    def lobe(direction):
        return sf_to_sh(np.exp(-((1 - np.abs(default_sphere.vertices @ direction)) / 0.05)),
                        default_sphere, sh_order_max=order)

    along_x, along_y = lobe(np.array([1.0, 0, 0])), lobe(np.array([0, 1.0, 0]))
    fitted = np.zeros((n, n, n), bool)
    fitted[1:-1, 1:-1, 1:-1] = True
    tube = np.zeros_like(fitted)
    tube[:, n // 2 - 1:n // 2 + 1, n // 2 - 1:n // 2 + 1] = True
    rng = np.random.default_rng(seed)
    shm = np.where(tube[..., None], along_x, along_y) * fitted[..., None]
    shm[fitted] += rng.normal(0, 0.5 * np.abs(along_x).max(), (int(fitted.sum()), along_x.size))
    return shm, fitted, tube & fitted, np.diag([2.0, 2.0, 2.0, 1.0])


def _peak_error_deg(field, where, direction, order: int = 6):
    from dipy.data import default_sphere
    from dipy.reconst.shm import sh_to_sf

    sf = sh_to_sf(field[where], default_sphere, sh_order_max=order)
    peaks = default_sphere.vertices[np.argmax(sf, axis=-1)]
    return np.degrees(np.arccos(np.clip(np.abs(peaks @ direction), 0, 1)))


def test_fodf_smoothing_along_the_fibre_keeps_a_thin_tract_that_a_ball_blurs_away():
    """A tract two voxels wide in a background of another direction: averaging whole fODFs over
    a ball turns the tract's peaks towards the background's, averaging each direction along its
    own line keeps them (and still steadies the noisy peaks of both)."""
    from cstbatch.steps.track import smooth_fodf, smooth_fodf_along

    shm, fitted, tube, affine = _tube_in_background()
    x, y = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    background = fitted & ~tube
    raw_tube, raw_bg = _peak_error_deg(shm, tube, x).mean(), _peak_error_deg(shm, background, y).mean()
    along = smooth_fodf_along(shm, affine, 5.0)
    ball = smooth_fodf(shm, affine, 5.0)
    assert np.mean(_peak_error_deg(ball, tube, x) > 45) > 0.9  # the ball hands the tract to the background
    assert np.mean(_peak_error_deg(along, tube, x) > 45) < 0.03
    assert _peak_error_deg(along, tube, x).mean() < 0.6 * raw_tube
    assert _peak_error_deg(along, background, y).mean() < 0.6 * raw_bg
    assert not along[~fitted].any()
    assert smooth_fodf_along(shm, affine, 0.0) is shm
    # a field of one fODF everywhere in the fit stays what it was (normalised weights)
    const = np.where(fitted[..., None], shm[tube][0], 0.0)
    np.testing.assert_allclose(smooth_fodf_along(const, affine, 5.0)[fitted], const[fitted], rtol=0.02,
                               atol=0.02 * np.abs(const).max())


def test_tracking_with_fodfs_smoothed_along_fibres_is_reproducible(crossing):
    data, gtab, lab, mask, maps, affine = crossing
    opts = {**OPTIONS, "track_fodf_fwhm": 3.5, "track_fodf_kernel": "along"}
    on = track_deterministic(data, gtab, mask, maps, affine, opts)
    again = track_deterministic(data, gtab, mask, maps, affine, opts)
    ball = track_deterministic(data, gtab, mask, maps, affine, {**opts, "track_fodf_kernel": "isotropic"})
    assert len(on) > 20
    assert len(on) == len(again) and all(np.array_equal(x, y) for x, y in zip(on, again))
    assert len(on) != len(ball) or any(not np.array_equal(x, y) for x, y in zip(on, ball))
    from cstbatch.errors import OptionError
    with pytest.raises(OptionError, match="track_fodf_kernel: 'gaussian' is not one of along, isotropic"):
        track_deterministic(data, gtab, mask, maps, affine, {**opts, "track_fodf_kernel": "gaussian"})
