"""Built-in denoisers: ``func(data, gtab, options) -> ndarray`` (see :mod:`cstbatch.hookspecs`).

All take float32 (X, Y, Z, N) in the image voxel grid and return float32 of the same shape.

Everything here is single-threaded on purpose: cstbatch gets its parallelism from running
sessions side by side in doit's process pool. dipy's ``parallel=True`` paths switch
multiprocessing to the *spawn* start method globally, which breaks that pool, and OpenMP
``num_threads > 1`` oversubscribes the cores the other sessions are using.

Options used (defaults in :mod:`cstbatch.study.options`):

``denoise_patch_radius`` (int, voxels)
    Patch radius of nlmeans (similarity patch) and mppca (local PCA patch). mppca needs more
    voxels in a patch than there are volumes, so its radius is raised to the smallest one that
    satisfies that (radius 2 for ≤ 124 volumes).
``patch2self_model`` ("ols" or "ridge")
    Regressor of Patch2Self.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from cstbatch.study.bvalues import B0_THRESHOLD
from cstbatch.study.options import option_value


def _as_float32(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"denoising needs 4-D data (X, Y, Z, N), got shape {data.shape}")
    return data if data.dtype == np.float32 else data.astype(np.float32)


def denoise_none(data: np.ndarray, gtab, options: Mapping[str, Any]) -> np.ndarray:
    """No denoising: returns ``data`` as float32 (no copy when it already is)."""
    return _as_float32(data)


@contextmanager
def _quiet_progress(module):
    """Silence a dipy module's tqdm progress bar: it floods the per-step log of a batch run
    with carriage-return lines. Restored afterwards (one session per process at a time)."""
    original = getattr(module, "tqdm", None)
    if original is None:
        yield
        return
    module.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        module.tqdm = original


def denoise_patch2self(data: np.ndarray, gtab, options: Mapping[str, Any]) -> np.ndarray:
    """Patch2Self (self-supervised regression of each volume from all the others).

    Parameters
    ----------
    data : float32 (X, Y, Z, N)
    gtab : dipy GradientTable
        Only ``bvals`` are used (b0s and DWIs are regressed separately).
    options : mapping
        ``patch2self_model``: "ols" (default) or "ridge".

    Why: it needs no noise model or noise estimate (unlike nlmeans) and uses the redundancy
    across volumes rather than across neighbouring voxels, so it does not blur the narrow
    CST. dipy's version 3 (count-sketch, memory-mapped temporaries) keeps memory bounded for
    large sessions. Negative outputs are clipped to 0 because a log-signal tensor fit cannot use
    them (dipy 1.12's ``shift_intensity`` computes a zero shift, so it is left off).

    Measured (``benchmarks/denoise_bias.py``, 2 mm phantom, 37 volumes): FA within 0.015 of
    the noise-free FA at SNR 30, but 0.08-0.13 too *low* at SNR 15 -- the regression from noisy
    predictors shrinks the angular contrast. Use it only on high-SNR data.
    """
    import dipy.denoise.patch2self as p2s_module

    from cstbatch.study.options import require_choice

    data = _as_float32(data)
    model = require_choice("patch2self_model", str(options.get("patch2self_model", "ols")).lower())
    with warnings.catch_warnings(), _quiet_progress(p2s_module):
        warnings.simplefilter("ignore", UserWarning)  # "< 10 volumes" advice on tiny tests
        out = p2s_module.patch2self(
            data,
            np.asarray(gtab.bvals, dtype=float),
            model=model,
            b0_threshold=B0_THRESHOLD,
            out_dtype=np.float32,
            alpha=1.0,
            verbose=False,
            b0_denoising=True,
            clip_negative_vals=True,
            shift_intensity=False,
            version=3,
        )
    out = np.asarray(out, dtype=np.float32)
    b0_idx = np.flatnonzero(np.asarray(gtab.bvals) <= B0_THRESHOLD)
    if b0_idx.size == 1:
        # dipy 1.12 skips b0 denoising for a single b0 but then copies volume *0* into its
        # place (an index bug): put the true b0 back, undenoised
        out[..., b0_idx[0]] = data[..., b0_idx[0]]
    return out


def _foreground(ref: np.ndarray) -> np.ndarray:
    """Voxels well inside the object: mean b0 above 20 % of its 99th percentile, eroded once.

    High-signal voxels are where Rician noise is close to Gaussian with the scanner's sigma;
    background (Rayleigh) and edges (partial volume, structure) would bias the estimate.
    """
    hi = np.percentile(ref, 99)
    fg = ref > 0.2 * hi
    inner = ndimage.binary_erosion(fg)
    if inner.sum() >= 100:
        fg = inner
    if fg.sum() < 10:
        fg = np.ones(ref.shape, bool)
    return fg


def estimate_noise_sigma(data: np.ndarray, gtab=None) -> float:
    """Robust noise standard deviation of a 4-D DWI (same units as the signal).

    With two or more b0 volumes: the b0s image the same signal, so their deviations from the
    voxel's b0 mean are pure noise; sigma is the median absolute deviation of those residuals
    in the foreground (robust to a moved volume), scaled by 1.4826 and corrected for the
    residual's variance ``(k-1)/k`` with ``k`` b0s. This is unbiased by anatomy.

    With a single b0: for every volume the voxel minus the mean of its 6 face neighbours,
    scaled by ``sqrt(6/7)``, has the noise's standard deviation where the signal is smooth (the
    estimator of dipy's ``estimate_sigma``, which averages it over the whole volume and so mixes
    Rayleigh background with tissue edges). Its median absolute deviation inside the foreground
    is taken, and the median over volumes returned (one acquisition has one noise level).
    Structure leaks in, so this path over-estimates by ~10-20 % on brain-like data.
    """
    data = np.asarray(data)
    bvals = None if gtab is None else np.asarray(gtab.bvals)
    b0_idx = np.flatnonzero(bvals <= B0_THRESHOLD) if bvals is not None else np.array([0])
    if b0_idx.size == 0:
        b0_idx = np.array([0])
    ref = np.zeros(data.shape[:3], dtype=np.float64)
    for i in b0_idx:
        ref += data[..., i]
    ref /= b0_idx.size
    fg = _foreground(ref)

    k = b0_idx.size
    if k >= 2:
        resid = np.concatenate([np.asarray(data[..., i], np.float64)[fg] - ref[fg] for i in b0_idx])
        mad = np.median(np.abs(resid - np.median(resid)))
        return float(1.4826 * mad / np.sqrt((k - 1) / k))

    kernel = np.zeros((3, 3, 3), dtype=np.float64)
    kernel[0, 1, 1] = kernel[2, 1, 1] = kernel[1, 0, 1] = 1
    kernel[1, 2, 1] = kernel[1, 1, 0] = kernel[1, 1, 2] = 1
    kernel /= 6.0
    sigmas = []
    conv = np.empty(ref.shape, dtype=np.float64)
    for i in range(data.shape[-1]):
        vol = np.asarray(data[..., i], dtype=np.float64)
        ndimage.convolve(vol, kernel, output=conv, mode="nearest")
        resid = np.sqrt(6.0 / 7.0) * (vol - conv)[fg]
        mad = np.median(np.abs(resid - np.median(resid)))
        sigmas.append(1.4826 * mad)
    return float(np.median(sigmas))


def signal_mask(data: np.ndarray, gtab, sigma: float | None = None) -> np.ndarray:
    """Generous object mask for the spatial denoisers: mean b0 > 3 sigma, dilated by 2 voxels.

    Not a brain mask (that step runs after denoising); it only skips pure background, often
    over half of the field of view, where nlmeans/mppca would spend most of their time
    denoising noise. Rician background has mean ~1.25 sigma, so 3 sigma keeps every voxel
    with real signal (including dark CSF-free tissue at b0); the dilation covers the patches
    reaching the object's edge.
    """
    data = np.asarray(data)
    bvals = np.asarray(gtab.bvals) if gtab is not None else np.array([0.0])
    b0_idx = np.flatnonzero(bvals <= B0_THRESHOLD)
    if b0_idx.size == 0:
        b0_idx = np.array([0])
    ref = np.zeros(data.shape[:3], np.float64)
    for i in b0_idx:
        ref += data[..., i]
    ref /= b0_idx.size
    if sigma is None:
        sigma = estimate_noise_sigma(data, gtab)
    mask = ref > 3.0 * sigma
    mask = ndimage.binary_dilation(mask, iterations=2)
    return ndimage.binary_fill_holes(mask)


def _restore_outside(out: np.ndarray, data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.asarray(out, dtype=np.float32)
    out[~mask] = data[~mask]
    bad = ~np.isfinite(out)
    if bad.any():  # never hand NaN to the tensor fit; fall back to the input there
        out[bad] = data[bad]
    return out


def denoise_nlmeans(data: np.ndarray, gtab, options: Mapping[str, Any]) -> np.ndarray:
    """Non-local means (dipy blockwise, Rician-corrected), noise level estimated from the data.

    Parameters
    ----------
    data : float32 (X, Y, Z, N)
    gtab : dipy GradientTable (b0s define the foreground for the noise estimate)
    options : mapping
        ``denoise_patch_radius`` (default 1): similarity patch radius in voxels.

    Why: a classic, well-understood spatial denoiser; sigma comes from
    :func:`estimate_noise_sigma` so no scanner coil information is needed. ``num_threads=1``
    keeps it single-threaded (see module doc). Only :func:`signal_mask` voxels are
    processed; the background is returned unchanged.

    Measured (``benchmarks/denoise_bias.py``): CST FA 0.065 (SNR 30) to 0.095 (SNR 15) too
    low -- spatial averaging mixes the narrow CST with its surroundings. Not recommended for
    tract FA.
    """
    from dipy.denoise.nlmeans import nlmeans

    data = _as_float32(data)
    radius = int(option_value(options, "denoise_patch_radius"))
    sigma = estimate_noise_sigma(data, gtab)
    if not np.isfinite(sigma) or sigma <= 0:
        return data.copy()
    mask = signal_mask(data, gtab, sigma)
    out = nlmeans(
        data,
        sigma=sigma,
        mask=mask,
        patch_radius=max(1, radius),
        block_radius=None,
        rician=True,
        num_threads=1,
        method="blockwise",
    )
    return _restore_outside(out, data, mask)


def mppca_patch_radius(requested: int, n_volumes: int) -> int:
    """Smallest patch radius ≥ ``requested`` whose patch has more voxels than volumes.

    Marchenko-Pastur PCA estimates the noise from the eigenvalue spectrum of a (voxels ×
    volumes) matrix; with fewer voxels than volumes the spectrum is rank-deficient and the
    noise estimate breaks down.
    """
    r = max(1, int(requested))
    while (2 * r + 1) ** 3 <= n_volumes:
        r += 1
    return r


def denoise_mppca(data: np.ndarray, gtab, options: Mapping[str, Any]) -> np.ndarray:
    """Marchenko-Pastur PCA denoising (dipy's ``mppca`` algorithm), noise level estimated from
    the data.

    Parameters
    ----------
    data : float32 (X, Y, Z, N)
    gtab : dipy GradientTable (b0s locate the object for :func:`signal_mask`)
    options : mapping
        ``denoise_patch_radius`` (default 1), raised by :func:`mppca_patch_radius` as needed.

    Why: the standard local-PCA denoiser (as in MRtrix ``dwidenoise``); it estimates the
    noise itself from the eigenvalue spectrum, so no sigma is needed. Only
    :func:`signal_mask` voxels are processed; the background is returned unchanged. Computed
    by :func:`cstbatch.steps.mppca.mppca_batched` (dipy's algorithm, many patches at once).

    Measured (``benchmarks/denoise_bias.py``): mean FA bias below 0.01 in CST and WM at SNR 30
    and 15, and the lowest mean |FA error| of all methods.
    """
    from cstbatch.steps.mppca import mppca_batched

    data = _as_float32(data)
    radius = mppca_patch_radius(int(option_value(options, "denoise_patch_radius")), data.shape[-1])
    radius = min(radius, max(1, (min(data.shape[:3]) - 1) // 2))
    mask = signal_mask(data, gtab)
    return _restore_outside(mppca_batched(data, mask, radius), data, mask)
