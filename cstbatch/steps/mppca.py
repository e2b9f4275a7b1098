"""Marchenko-Pastur PCA denoising (Veraart et al. 2016), many patches at a time.

Why our own loop: dipy's ``mppca`` is the reference algorithm, but it visits one patch per
voxel in Python (a slice, an eigendecomposition and three accumulations each); on a 2 mm,
21-volume session that took 74 CPU s, more than the rest of the session together. This runs
the same algorithm as dipy's ``genpca`` (``sigma=None``, ``pca_method="eig"``,
``tau_factor=None``) on thousands of patches at once: the patches are gathered with one fancy
index, their covariances built with one batched matrix product and decomposed together
(:func:`_eigh`); the noise classification of
``dipy.denoise.localpca._pca_classifier`` is evaluated for every candidate cut at once. The
overlapping reconstructions are accumulated offset by offset (within a batch each offset hits
every voxel at most once). ``tests/test_steps.py`` compares the result with dipy's.
"""
from __future__ import annotations

import numpy as np

#: patches per batch: with a 27-voxel patch and 21 volumes, ~19 MB of float64 patches per batch
BATCH = 4096


def _patch_offsets(radius: int) -> np.ndarray:
    """(P, 3) offsets of a cubic patch, in the C order of ``arr[i0:i1, j0:j1, k0:k1]``."""
    r = np.arange(-radius, radius + 1)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)


#: above this matrix size numpy's batched eigh switches to divide and conquer, which is ~6x
#: slower per 26-40 x 26-40 matrix than LAPACK's QR algorithm (dsyev) called per matrix
BATCHED_EIGH_MAX = 25


def _eigh(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending eigenvalues and eigenvectors of each symmetric matrix in (B, N, N)."""
    if C.shape[1] <= BATCHED_EIGH_MAX:
        return np.linalg.eigh(C)
    from scipy.linalg.lapack import dsyev

    d = np.empty(C.shape[:2])
    W = np.empty_like(C)
    for i in range(len(C)):
        d[i], W[i], info = dsyev(C[i])
        if info:
            d[i], W[i] = np.linalg.eigh(C[i])
    return d, W


def noise_variance(evals: np.ndarray, n_samples: int) -> np.ndarray:
    """Per row of ascending eigenvalues (B, N), dipy's Marchenko-Pastur noise variance.

    dipy's loop, from the top: ``c = n - 1``; while ``L[c] - L[0] - 4 sqrt((c + 1) / n_samples)
    · mean(L[:c + 1]) > 0``, ``c -= 1``; the variance is ``mean(L[:c + 1])`` at the first ``c``
    where the test fails, i.e. the largest ``c`` where it fails.
    """
    L = evals
    if L.shape[1] > n_samples - 1:  # rank lost to the mean subtraction
        L = L[:, -(n_samples - 1):]
    n = L.shape[1]
    c = np.arange(n)
    mean = np.cumsum(L, axis=1) / (c + 1.0)
    r = L - L[:, :1] - 4.0 * np.sqrt((c + 1.0) / n_samples) * mean
    fails = r <= 0
    last = n - 1 - np.argmax(fails[:, ::-1], axis=1)
    last = np.where(fails.any(axis=1), last, 0)
    return mean[np.arange(len(L)), last]


def mppca_batched(arr: np.ndarray, mask: np.ndarray, radius: int, batch: int = BATCH,
                  stride: int = 1) -> np.ndarray:
    """Denoised float32 copy of ``arr`` (X, Y, Z, N); patches of ``radius`` centred on the
    ``mask`` voxels at least ``radius`` from the grid's edge, as dipy. Voxels no patch
    reaches keep their input value.

    ``stride`` > 1 centres patches only on every ``stride``-th voxel along each axis (each voxel
    is still covered by several overlapping patches while ``stride`` ≤ 2 ``radius`` + 1):
    ``stride**3`` times fewer eigendecompositions, no longer dipy's output voxel for voxel.
    """
    arr = np.asarray(arr, np.float32)
    shape, dim = arr.shape[:3], arr.shape[3]
    offs = _patch_offsets(radius)
    n_samples = len(offs)
    tau_factor = 1.0 + np.sqrt(dim / n_samples)
    centres = np.argwhere(np.asarray(mask, bool))
    inner = np.all((centres >= radius) & (centres < np.array(shape) - radius), axis=1)
    centres = centres[inner]
    if stride > 1:
        centres = centres[np.all(centres % stride == 0, axis=1)]
    theta = np.zeros(shape, np.float32)
    thetax = np.zeros(arr.shape, np.float32)  # the output: with the input, two copies of the data
    for a in range(0, len(centres), batch):
        cen = centres[a:a + batch]
        idx = cen[:, None, :] + offs[None]
        X = arr[idx[..., 0], idx[..., 1], idx[..., 2]].astype(np.float64)  # (B, P, N)
        mean = X.mean(axis=1, keepdims=True)
        X -= mean
        C = np.matmul(X.transpose(0, 2, 1), X) / n_samples
        d, W = _eigh(C)
        tau = tau_factor ** 2 * noise_variance(d, n_samples)
        keep = d >= tau[:, None]
        Wk = W * keep[:, None, :]
        est = np.matmul(np.matmul(X, Wk), W.transpose(0, 2, 1)) + mean
        th = 1.0 / (1.0 + keep.sum(axis=1))
        est *= th[:, None, None]
        for o in range(n_samples):
            pos = tuple(idx[:, o, :].T)
            theta[pos] += th
            thetax[pos] += est[:, o, :]
    hit = theta > 0
    thetax[hit] /= theta[hit, None]
    np.clip(thetax, 0, None, out=thetax)
    thetax[~hit] = arr[~hit]
    return thetax
