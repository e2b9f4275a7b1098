"""Shared fixtures: paths to the real BIDS layouts and a tiny, real-shaped DWI writer."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
BIDS_EXAMPLES = SHARED / "bids-examples"


@pytest.fixture(scope="module")
def atlas():
    """The default atlas (ICBM 2009a with cstbatch's CST ROIs), as the extract tests read it."""
    from cstbatch.steps.atlas import icbm_atlas

    return icbm_atlas({})


@pytest.fixture
def bids_examples() -> Path:
    if not BIDS_EXAMPLES.is_dir():
        pytest.skip("../shared/bids-examples not present")
    return BIDS_EXAMPLES


def tiny_gradients(n_dirs: int = 12, n_b0: int = 2):
    """b-values (s/mm²) and unit directions: n_b0 zeros then a spread of n_dirs at b=1000."""
    i = np.arange(n_dirs) + 0.5
    phi = np.arccos(1 - i / n_dirs)          # hemisphere
    theta = np.pi * (1 + 5 ** 0.5) * i
    dirs = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)
    bvals = np.r_[np.zeros(n_b0), np.full(n_dirs, 1000.0)]
    bvecs = np.r_[np.zeros((n_b0, 3)), dirs]
    return bvals, bvecs


def write_tiny_dwi(stem: Path, shape=(10, 10, 10), seed: int = 0, snr: float = 40.0) -> Path:
    """Write ``stem``.nii.gz/.bval/.bvec: a cube of fibre along voxel x in an isotropic shell.

    Real DTI signal (single tensor, closed form) with Rician noise, LAS 2 mm voxels; bvecs in
    the BIDS/FSL convention (LAS: determinant < 0, so no x flip).
    """
    import nibabel as nib

    rng = np.random.default_rng(seed)
    bvals, bvecs = tiny_gradients()
    evals_fibre = np.array([1.7e-3, 0.3e-3, 0.3e-3])
    adc_fibre = bvals * (evals_fibre[0] * bvecs[:, 0] ** 2 + evals_fibre[1] * (bvecs[:, 1] ** 2 + bvecs[:, 2] ** 2))
    adc_iso = bvals * 0.8e-3
    data = np.zeros(shape + (len(bvals),), np.float32)
    data[...] = 100 * np.exp(-adc_iso)
    data[2:-2, 3:-3, 3:-3] = 100 * np.exp(-adc_fibre)
    sigma = 100 / snr
    noisy = np.sqrt((data + rng.normal(0, sigma, data.shape)) ** 2 + rng.normal(0, sigma, data.shape) ** 2)
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [10, -10, -10]
    stem.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(noisy.astype(np.float32), affine), str(stem) + ".nii.gz")
    np.savetxt(str(stem) + ".bval", bvals[None], fmt="%g")
    np.savetxt(str(stem) + ".bvec", bvecs.T, fmt="%.6f")
    return Path(str(stem) + ".nii.gz")


def bids_validate(dataset: Path) -> dict:
    """bids-validator 3.x (schema-based; PyPI bids-validator-deno, runs offline): its JSON report."""
    validator = shutil.which("bids-validator-deno")
    if validator is None:
        if os.environ.get("CI"):
            pytest.fail("bids-validator-deno must be installed in CI (test extras)")
        pytest.skip("bids-validator-deno not installed (pip install -e '.[test]')")
    result = subprocess.run([validator, str(dataset), "--format", "json"], capture_output=True, text=True,
                            timeout=600)
    return json.loads(result.stdout)


def bids_errors(report: dict) -> list[tuple[str, str]]:
    """(code, location) of every error of a :func:`bids_validate` report."""
    return [(i["code"], i.get("location", "")) for i in report["issues"]["issues"] if i["severity"] == "error"]


def write_tiny_dicom(folder: Path, seed: int = 0, key: str = "tiny") -> Path:
    """``folder``: the tiny DWI of :func:`write_tiny_dwi` as one classic DICOM series (one file
    per slice and volume, standard diffusion tags), as a scanner would export it."""
    import shutil
    import tempfile

    import nibabel as nib

    from cstbatch.sample.dicom import write_dicom_series
    from cstbatch.sample.phantom import bids_bvecs_to_world

    with tempfile.TemporaryDirectory() as tmp:
        image = write_tiny_dwi(Path(tmp) / "dwi", seed=seed)
        img = nib.load(str(image))
        bvals, bvecs = tiny_gradients()
        write_dicom_series(folder, np.asarray(img.dataobj), img.affine, bvals,
                           bids_bvecs_to_world(bvecs, img.affine), key=key,
                           patient_id="P" + key)
        shutil.rmtree(tmp, ignore_errors=True)
    return Path(folder)


def write_empty_manifest(root: Path, n: int, options: dict | None = None, name: str = "many") -> Path:
    """A manifest of ``n`` sessions with 0-byte inputs: planning never opens them, a run fails
    them at ingest (large studies for planning and cluster tests)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(1, n + 1):
        for ext in (".nii.gz", ".bval", ".bvec"):
            (root / "data" / f"s{i}_dwi{ext}").touch()
        entries.append({"id": f"sub-{i:02d}", "session": "ses-01", "nifti": f"data/s{i}_dwi.nii.gz"})
    manifest = root / "study.json"
    manifest.write_text(json.dumps({"name": name, "options": options or {}, "subjects": entries}))
    return manifest


@pytest.fixture
def default_limits(monkeypatch):
    """Dry runs plan with SLURM's default limits, not those of whatever cluster the environment has
    (the cluster's configuration is a system boundary; the CI cluster's MaxArraySize is 3)."""
    from cstbatch.cluster import slurm as slurm_module
    from cstbatch.cluster.arrays import SlurmLimits

    monkeypatch.setattr(slurm_module, "slurm_limits", lambda: SlurmLimits())
