"""Built-in brain mask: ``func(data, gtab, options) -> bool (X, Y, Z)``."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cstbatch.study.bvalues import B0_THRESHOLD
from cstbatch.study.options import option_value


def mask_median_otsu(data: np.ndarray, gtab, options: Mapping[str, Any]) -> np.ndarray:
    """Brain mask by median filtering + Otsu thresholding of the mean b0 (dipy ``median_otsu``).

    Parameters
    ----------
    data : float32 (X, Y, Z, N), image voxel grid
    gtab : dipy GradientTable; volumes with b ≤ 50 s/mm² are averaged
    options : mapping
        ``mask_median_radius`` (default 2, voxels) and ``mask_numpass`` (default 2): the
        median filter's radius and number of passes before thresholding.

    Returns
    -------
    bool (X, Y, Z)

    Why the b0s: they have the highest SNR and CSF/tissue are both bright, so the brain
    separates cleanly from background. The mean b0 is computed here and a 3-D volume passed to
    ``median_otsu``: given the 4-D data it would also return a masked copy of the whole series.
    Small radius/pass defaults suit 2 mm data; dipy's (4, 4) erode the edges of small brains.
    """
    from dipy.segment.mask import median_otsu

    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"mask needs 4-D data (X, Y, Z, N), got shape {data.shape}")
    bvals = np.asarray(gtab.bvals)
    b0 = bvals <= B0_THRESHOLD
    if not b0.any():
        raise ValueError("no b0 volume to build a brain mask from")
    mean_b0 = np.zeros(data.shape[:3], dtype=np.float32)
    for i in np.flatnonzero(b0):
        mean_b0 += data[..., i]
    mean_b0 /= b0.sum()
    _, mask = median_otsu(
        mean_b0,
        median_radius=int(option_value(options, "mask_median_radius")),
        numpass=int(option_value(options, "mask_numpass")),
    )
    return np.asarray(mask, dtype=bool)
