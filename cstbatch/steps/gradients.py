"""Reading b-values/b-vectors and converting them between coordinate conventions.

Three frames appear in this pipeline; mixing them up silently mirrors every oblique fibre, so
every array of directions in cstbatch is named after the frame it lives in.

BIDS / FSL convention (``*.bvec`` files, what dcm2niix writes)
    Each column of the 3-row ``.bvec`` file is a unit vector expressed along the image's *voxel*
    axes (i, j, k) -- not in scanner or world coordinates -- **except** that FSL treats every
    image as if it were stored radiologically: when the voxel-to-world matrix has a positive
    determinant ("neurological" storage such as RAS or LPS) the first component refers to
    ``-i`` instead of ``+i``. When the determinant is negative
    (LAS, the usual FSL/dcm2niix storage) the vector is used as is.

Voxel axes (what ``gtab`` holds inside cstbatch and what plugins get)
    Unit vectors along the image's (i, j, k) axes, after undoing the x flip above. dipy's models
    and trackers assume exactly this: a direction computed from the signal is then a direction
    in the voxel grid, so stepping along it in voxel coordinates and applying the affine gives
    the right place in the world for RAS, LAS and oblique images alike.

World (RAS+ mm)
    Directions in scanner/world space. A voxel-axis direction ``v`` maps to the world direction
    ``R @ v`` where ``R`` is ``affine[:3, :3]`` with its columns normalised to unit length
    (normalising removes the voxel size, which scales positions but not physical directions;
    for anisotropic voxels the voxel-axis components are already physical, so only the
    rotation/reflection part is applied).

The x flip is its own inverse, so :func:`bids_to_voxel_axes` and :func:`voxel_axes_to_bids`
apply the same operation; they exist as two names so that call sites say which way they go.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cstbatch.errors import InputError
from cstbatch.study.bvalues import B0_THRESHOLD

#: allowed deviation of a diffusion-weighted b-vector's norm from 1.
UNIT_TOLERANCE = 1e-2
#: a diffusion-weighted volume whose b-vector is shorter than this has no direction at all
DERIVED_NORM = 1e-3


def derived_isotropic(bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """Bool per volume: diffusion-weighted (b > 50) with a zero b-vector.

    Why: Philips (and some older GE) exports append the scanner's own isotropic image -- the
    trace-weighted or ADC map computed from the acquired directions -- to the series, with the
    shell's b-value and no direction. It is not a measurement: a tensor or CSD fit that took it
    for one would be biased toward isotropy. dcm2niix usually drops it, but not from every
    export, so ingest leaves it out and says so.
    """
    bvals = np.asarray(bvals, float)
    return (bvals > B0_THRESHOLD) & (np.linalg.norm(np.asarray(bvecs, float), axis=1) < DERIVED_NORM)


def _read_numbers(path: Path, what: str) -> list[list[float]]:
    """Parse a whitespace/comma separated text file into rows of floats.

    Raises ``InputError`` naming the file for a missing/unreadable/empty file or a token that
    is not a number; rows that are empty (blank lines) are skipped.
    """
    if not path.exists():
        raise InputError(path, f"{what} file not found")
    if not path.is_file():
        raise InputError(path, f"{what} path is not a file")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InputError(path, f"cannot parse {what} file: not a text file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read {what} file: {exc.strerror or exc}") from None
    rows: list[list[float]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.replace(",", " ").split()
        if not tokens:
            continue
        row = []
        for tok in tokens:
            try:
                val = float(tok)
            except ValueError:
                shown = tok if len(tok) <= 20 else tok[:20] + "..."
                raise InputError(
                    path, f"cannot parse {what} file: line {lineno}: {shown!r} is not a number"
                ) from None
            if not np.isfinite(val):
                raise InputError(path, f"cannot parse {what} file: line {lineno}: value {tok!r} is not finite")
            row.append(val)
        rows.append(row)
    if not rows:
        raise InputError(path, f"{what} file is empty")
    return rows


def read_bvals_bvecs(
    bval_path: str | Path, bvec_path: str | Path, n_volumes: int, allow_derived: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate an FSL/BIDS ``.bval``/``.bvec`` pair.

    Parameters
    ----------
    bval_path, bvec_path : path
        Text files: b-values (s/mm²) on one row (or one column); b-vectors as 3 rows × N
        columns in the BIDS/FSL convention (see module docstring).
    n_volumes : int
        Number of volumes in the DWI the files belong to; both files must have exactly that
        many entries, because a mismatch means the gradients belong to a different series (or
        volumes were dropped) and every model fit downstream would be wrong without any error.
    allow_derived : bool
        Accept diffusion-weighted volumes with a zero vector (:func:`derived_isotropic`, the
        scanner's trace image); the caller must then leave them out. Ingest does; every later
        step reads the ingested files, which no longer hold them.

    Returns
    -------
    bvals : float64 (N,)
    bvecs_bids : float64 (N, 3)
        Still in the BIDS/FSL convention; use :func:`bids_to_voxel_axes` before building a
        gradient table.

    Raises
    ------
    InputError
        Naming the offending file for: missing/unparseable files, a bvec file that does not
        have 3 rows, counts that differ from ``n_volumes``, negative b-values, no b0 volume
        (b ≤ 50 s/mm²; models need an unweighted reference), or diffusion-weighted vectors
        whose norm is not 1 within 1e-2 (zero vectors are allowed for b0s only, and with
        ``allow_derived`` for derived isotropic volumes).
    """
    bval_path, bvec_path = Path(bval_path), Path(bvec_path)

    rows = _read_numbers(bval_path, "b-value")
    if len(rows) == 1 or all(len(r) == 1 for r in rows):
        bvals = np.array([v for r in rows for v in r], dtype=float)
    else:
        raise InputError(
            bval_path,
            f"b-value file must be a single row (or column) of numbers, found {len(rows)} rows",
        )

    rows = _read_numbers(bvec_path, "b-vector")
    if len(rows) != 3:
        # one row of three numbers per volume is MRtrix's and some converters' layout: say so
        # rather than guess, a transposed table read the wrong way round is a silent error
        transposed = len(rows) == n_volumes and all(len(r) == 3 for r in rows)
        raise InputError(
            bvec_path, f"b-vector file must have 3 rows (x, y, z; FSL layout), found {len(rows)}"
            + (f" rows of 3 values, one per volume: the table looks transposed (transpose it to 3 rows "
               f"of {n_volumes})" if transposed else "")
        )
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise InputError(
            bvec_path, f"b-vector rows have different lengths {sorted(len(r) for r in rows)}"
        )
    bvecs = np.array(rows, dtype=float).T  # (N, 3)

    if bvals.size != n_volumes:
        raise InputError(
            bval_path, f"{bvals.size} b-values but the image has {n_volumes} volumes"
        )
    if bvecs.shape[0] != n_volumes:
        raise InputError(
            bvec_path, f"{bvecs.shape[0]} b-vectors but the image has {n_volumes} volumes"
        )
    if np.any(bvals < 0):
        i = int(np.flatnonzero(bvals < 0)[0])
        raise InputError(bval_path, f"negative b-value {bvals[i]:g} at volume {i}")
    is_b0 = bvals <= B0_THRESHOLD
    if is_b0.all() and 0 < bvals.max() <= 10:
        raise InputError(
            bval_path,
            f"b-values look like ms/um^2 (largest {bvals.max():g}); BIDS/FSL .bval files hold s/mm^2 "
            "(e.g. 1000)",
        )
    if not is_b0.any():
        raise InputError(
            bval_path,
            f"no b0 volume (no b-value <= {B0_THRESHOLD:g} s/mm^2; smallest is {bvals.min():g})",
        )
    norms = np.linalg.norm(bvecs, axis=1)
    bad = (~is_b0) & (np.abs(norms - 1.0) > UNIT_TOLERANCE)
    if allow_derived:
        bad &= ~derived_isotropic(bvals, bvecs)
    if bad.any():
        idx = np.flatnonzero(bad)
        i = int(idx[0])
        raise InputError(
            bvec_path,
            f"{idx.size} diffusion-weighted b-vector(s) are not unit length "
            f"(volume {i} has norm {norms[i]:.4f})",
        )
    return bvals, bvecs


def _flip_x_if_proper(vecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    vecs = np.array(vecs, dtype=float, copy=True)
    if np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]) > 0:
        vecs[..., 0] *= -1.0
    return vecs


def bids_to_voxel_axes(bvecs_bids: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """BIDS/FSL b-vectors → unit vectors along the image voxel axes.

    Parameters
    ----------
    bvecs_bids : (N, 3) or (..., 3)
        b-vectors as read from a ``.bvec`` file (transposed to one row per volume).
    affine : (4, 4)
        The image's voxel→RAS+ mm affine (the one the bvecs were written for).

    Returns a new float64 array: the x component negated when ``det(affine[:3, :3]) > 0``
    (FSL's radiological assumption undone), otherwise unchanged.
    """
    return _flip_x_if_proper(bvecs_bids, affine)


def voxel_axes_to_bids(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`bids_to_voxel_axes` (the flip is an involution); used when writing."""
    return _flip_x_if_proper(bvecs, affine)


def voxel_to_world_dirs(vecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Directions along voxel axes → unit directions in RAS+ world space.

    Parameters
    ----------
    vecs : (..., 3)
        Directions in the voxel-axis frame (e.g. tensor eigenvectors from a voxel-axis gtab).
    affine : (4, 4)
        voxel→RAS+ mm.

    Returns float64 (..., 3) unit vectors (zero vectors stay zero). Only the column directions
    of ``affine[:3, :3]`` are used: voxel size must not change a physical direction.
    """
    return _unit(np.asarray(vecs, dtype=float) @ _axis_directions(affine).T)


def world_to_voxel_dirs(vecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`voxel_to_world_dirs`: RAS+ directions → unit directions on the voxel axes."""
    return _unit(np.asarray(vecs, dtype=float) @ np.linalg.inv(_axis_directions(affine)).T)


def _axis_directions(affine: np.ndarray) -> np.ndarray:
    """The affine's voxel axes as unit RAS+ columns (voxel size removed)."""
    lin = np.asarray(affine, dtype=float)[:3, :3]
    return lin / np.linalg.norm(lin, axis=0, keepdims=True)


def _unit(out: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    np.divide(out, norm, out=out, where=norm > 0)
    return out
