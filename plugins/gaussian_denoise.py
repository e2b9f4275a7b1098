"""Example plugin: Gaussian smoothing as a denoiser (scipy), registered as ``gaussian``.

A file in the project's ``plugins/`` folder is loaded automatically; select it per study or
per session with ``"options": {"denoise_method": "gaussian"}``. It smooths each volume in
space only (never across volumes, which would mix diffusion directions). It is here to show
the contract, not as a recommendation: smoothing blurs the CST edges and lowers FA there.
"""
import numpy as np
from scipy import ndimage

from cstbatch.hookspecs import hookimpl

SIGMA_VOXELS = 0.5


def gaussian_denoise(data, gtab, options):
    """data: float32 (X, Y, Z, N) → same shape; ``gtab`` and ``options`` unused."""
    out = np.empty_like(data, dtype=np.float32)
    for i in range(data.shape[-1]):
        out[..., i] = ndimage.gaussian_filter(data[..., i], SIGMA_VOXELS, mode="nearest")
    return out


@hookimpl
def register_denoisers(register):
    register("gaussian", gaussian_denoise, version="1",
             description="Gaussian smoothing (sigma 0.5 voxel) per volume, scipy; an example plugin")
