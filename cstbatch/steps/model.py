"""Diffusion tensor fit: the scalar maps the CST profiles sample, and the eigenvectors."""
from __future__ import annotations

import numpy as np

from cstbatch.study.bvalues import B0_THRESHOLD


def fit_tensor_maps(data: np.ndarray, gtab, mask: np.ndarray | None) -> dict[str, np.ndarray]:
    """Fit a diffusion tensor in every mask voxel.

    Parameters
    ----------
    data : float32 (X, Y, Z, N), image voxel grid
    gtab : dipy GradientTable with b-vectors along the voxel axes (as built at ingest)
    mask : bool (X, Y, Z) or None (None: every voxel)

    Returns
    -------
    dict
        ``fa`` (dimensionless), ``md``, ``rd``, ``ad`` (mm²/s, since b is in s/mm²): float32
        (X, Y, Z), NaN/Inf replaced by 0 and 0 outside the mask, so means over ROIs are never
        poisoned by a single degenerate voxel; FA clipped to [0, 1].
        ``evecs``: float32 (X, Y, Z, 3, 3), ``evecs[..., :, k]`` is the unit eigenvector of the
        k-th largest eigenvalue, in voxel-axis coordinates (map to the world with
        :func:`cstbatch.steps.gradients.voxel_to_world_dirs`); 0 outside the mask.

    Why weighted least squares (dipy's default "WLS"): unbiased enough at clinical SNR and
    an order of magnitude faster than non-linear fits. The weighted solve is
    :func:`wls_normal_equations` (dipy's WLS, solved without a per-voxel SVD). dipy fits only the masked voxels
    (``data[mask]``), so the only large temporary is that (n_mask, N) matrix; outputs are
    assembled straight into float32 arrays.
    """
    from dipy.reconst.dti import TensorModel

    data = np.asarray(data)
    shape = data.shape[:3]
    if mask is None:
        mask = np.ones(shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match data grid {shape}")

    model = TensorModel(gtab, fit_method=wls_normal_equations)
    idx = np.nonzero(mask)
    out = {k: np.zeros(shape, dtype=np.float32) for k in ("fa", "md", "rd", "ad")}
    out["evecs"] = np.zeros(shape + (3, 3), dtype=np.float32)
    if not idx[0].size:
        return out
    # fit the masked voxels only, in slabs to bound the temporaries of big sessions
    flat_idx = np.ravel_multi_index(idx, shape)
    fa_f, md_f, rd_f, ad_f = (out[k].reshape(-1) for k in ("fa", "md", "rd", "ad"))
    ev_f = out["evecs"].reshape(-1, 3, 3)
    step = 100_000
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, flat_idx.size, step):
            sel = flat_idx[start:start + step]
            vox = tuple(i[start:start + step] for i in idx)
            fit = model.fit(np.asarray(data[vox], dtype=np.float64))
            evals = fit.evals  # (n, 3) descending
            md = evals.mean(axis=-1)
            fa = np.sqrt(1.5 * ((evals - md[:, None]) ** 2).sum(-1) / (evals ** 2).sum(-1))
            fa_f[sel] = np.clip(np.nan_to_num(fa, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)
            md_f[sel] = np.nan_to_num(md, nan=0.0, posinf=0.0, neginf=0.0)
            ad_f[sel] = np.nan_to_num(evals[:, 0], nan=0.0, posinf=0.0, neginf=0.0)
            rd_f[sel] = np.nan_to_num(evals[:, 1:].mean(-1), nan=0.0, posinf=0.0, neginf=0.0)
            ev_f[sel] = np.nan_to_num(fit.evecs, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def wls_normal_equations(design_matrix, data, *args, return_S0_hat=False, **kwargs):
    """dipy's WLS tensor fit (``dipy.reconst.dti.wls_fit_tensor``), usable as ``fit_method``.

    Same estimator: weights from an OLS fit of the log signal, then the weighted
    least-squares tensor (Chung et al. 2006). dipy solves every voxel's weighted problem by a
    pseudo-inverse, i.e. an SVD of each (N, 7) matrix: 4.6 s of the Elition model step's 8 s.
    Here the 7×7 normal equations of all voxels are solved as one batch (7.5 → 2.4 s for the
    whole fit). Normal equations square the conditioning, so voxels whose weights span more
    than three decades (signal vanishing in some volumes), or whose solve is not finite, keep
    dipy's pseudo-inverse. The float32 maps match dipy's in all but a handful of voxels, by
    one unit in the last place (``tests/test_steps.py`` compares the eigenvalues).
    """
    from dipy.reconst.dti import eig_from_lo_tri, ols_fit_tensor

    X = np.asarray(design_matrix, dtype=np.float64)
    log_s = np.log(data)
    ols, _ = ols_fit_tensor(X, data, return_lower_triangular=True)
    w = np.exp(ols @ X.T)
    xw = X[None] * w[..., None]                      # (n, N, 7)
    normal = np.einsum("nji,njk->nik", xw, xw)       # X' W² X
    rhs = np.einsum("nji,nj->ni", xw, w * log_s)     # X' W² log S
    with np.errstate(all="ignore"):
        try:
            beta = np.linalg.solve(normal, rhs[..., None])[..., 0]
            bad = ~np.isfinite(beta).all(axis=1)
        except np.linalg.LinAlgError:  # a singular system somewhere: find it, solve the rest
            bad = ~np.isfinite(normal).all(axis=(1, 2)) | (np.linalg.cond(normal) > 1e12)
            beta = np.zeros(rhs.shape)
            beta[~bad] = np.linalg.solve(normal[~bad], rhs[~bad][..., None])[..., 0]
        bad |= ~(w.max(axis=1) < 1e3 * w.min(axis=1))
        if bad.any():
            beta[bad] = np.einsum("nij,nj->ni", np.linalg.pinv(xw[bad]), (w * log_s)[bad])
    min_diffusivity = 1e-6 / -X.min()
    if return_S0_hat:
        return (eig_from_lo_tri(beta, min_diffusivity=min_diffusivity), np.exp(-beta[:, -1])), None
    return eig_from_lo_tri(beta, min_diffusivity=min_diffusivity), None


#: The tensor is fitted on volumes with b ≤ this (s/mm²) only. Above ~1500 the signal is no
#: longer mono-exponential (restricted diffusion, kurtosis), so a tensor fitted on b 3000 shells
#: underestimates MD and shifts FA; b ≤ 1500 keeps FA/MD comparable with single-shell b 1000
#: studies. Data with no shell at or below it are fitted on the lowest shell instead.
TENSOR_MAX_B = 1500.0


def tensor_volumes(bvals: np.ndarray, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Indices of the volumes the tensor is fitted on: b0s plus shells ≤ :data:`TENSOR_MAX_B`."""
    bvals = np.asarray(bvals, float)
    b0 = bvals <= b0_threshold
    keep = b0 | (bvals <= TENSOR_MAX_B + 50.0)  # +50: shells are nominal (1500 is often 1495–1505)
    if not (keep & ~b0).any() and (~b0).any():
        lowest = bvals[~b0].min()
        keep = b0 | (np.abs(bvals - lowest) <= 50.0)
    return np.flatnonzero(keep)


def white_matter_snr(data: np.ndarray, gtab, fa: np.ndarray, mask: np.ndarray, n_voxels: int = 2000) -> float | None:
    """b0 SNR in white matter: median b0 over the noise left by a tensor fit, in high-FA voxels.

    Why residuals: real scans often have one b0 and a zero-filled or masked background, so
    neither b0 differences nor the background give the noise; the tensor explains white-matter
    signal at b ≤ 1500 well, so its residual RMS (corrected for the 7 fitted parameters) is
    close to the noise σ (an upper bound: model error adds to it, so the SNR is a lower
    bound). Up to ``n_voxels`` voxels with FA ≥ 0.3, evenly spaced: cheap and deterministic.
    None when fewer than 20 such voxels or too few volumes.
    """
    from dipy.reconst.dti import TensorModel

    idx = np.argwhere(np.asarray(mask, bool) & (np.asarray(fa) >= 0.3))
    n_vol = data.shape[-1]
    if len(idx) < 20 or n_vol <= 7:
        return None
    if len(idx) > n_voxels:
        idx = idx[np.linspace(0, len(idx) - 1, n_voxels).round().astype(int)]
    sig = np.asarray(data[tuple(idx.T)], dtype=np.float64)
    with np.errstate(all="ignore"):
        fit = TensorModel(gtab, fit_method="WLS").fit(sig)
        s0 = sig[:, gtab.b0s_mask].mean(axis=1)
        pred = fit.predict(gtab, S0=s0)
        rms = np.sqrt(((sig - pred) ** 2).sum(axis=1) / (n_vol - 7))
    ok = np.isfinite(rms) & (rms > 0) & np.isfinite(s0) & (s0 > 0)
    if ok.sum() < 20:
        return None
    return round(float(np.median(s0[ok]) / np.median(rms[ok])), 2)
