"""The plugin author's contract: one hook per swappable step kind.

Each hook hands the plugin a ``register`` callback (the pattern of simonw/llm): a plugin calls
``register(name, func, version=..., description=...)`` once per implementation it provides.
Built-in implementations register through exactly these hooks (``cstbatch.steps.builtin``), so a
third-party implementation is never a special case. The user picks one by name through an
option (``denoise_method``, ``track_method``, ``atlas``, ``extraction_method``, ``reporter``);
an unknown name fails at planning time with the list of known names.

``version`` is part of every task's up-to-date check: bump it when your implementation's
output changes and exactly the tasks that used it rerun.

Arrays are numpy, in the image's voxel grid unless stated. World coordinates are RAS+ mm.
Gradient directions in the ``gtab`` given to plugins are unit vectors along the image's voxel
axes (the BIDS/FSL x-flip has already been undone), b-values in s/mm².

Signatures of ``func`` per kind:

denoise
    ``func(data, gtab, options) -> ndarray``. ``data``: float32 (X, Y, Z, N); returns the same
    shape. Must be single-threaded (parallelism comes from running sessions side by side).
mask
    ``func(data, gtab, options) -> ndarray``: bool (X, Y, Z) brain mask.
track
    ``func(data, gtab, mask, maps, affine, options) -> list[ndarray]``: streamlines, each
    (n_points, 3) in RAS+ mm. ``mask`` is the region to track in (bool (X, Y, Z): the brain, or
    with ``track_region=cst`` the brain inside the CST corridor); ``maps`` holds the tensor maps
    (``fa``, ``md``, ``rd``, ``ad`` float32 (X, Y, Z)) and, with ``track_region=cst``,
    ``seed_mask`` (bool (X, Y, Z), where to start streamlines; a tracker that ignores it seeds
    in ``mask``); ``affine`` voxel→RAS+ mm.
atlas
    ``func(options) -> cstbatch.steps.atlas.Atlas``: an MNI-space template and brainstem / left motor /
    right motor ROI masks, all from installed files (no network).
extract
    ``func(streamlines_mni, atlas, options) -> dict``: ``{"left": idx, "right": idx}``, integer
    indices into ``streamlines_mni`` (streamlines already mapped to the atlas's MNI mm space).
    Optional: ``"ranges": {"left": (n, 2) int, "right": ...}``, a ``[start, stop)`` point range
    per index (the part of the streamline that is CST; the extract step saves only that part),
    and ``"info"``, a JSON-ready dict recorded in ``metrics.json``. Besides the user's options,
    the extract step puts in ``options``: ``coverage_z`` and ``coverage_top_z`` (the lowest and
    highest MNI z the image covers in the brainstem column and under the precentral gyrus, or
    None) and, when ``extract_fa_keep`` > 0, ``streamline_fa`` (a float array, each
    streamline's mean FA, NaN where none).
report
    ``func(session, out_dir, options) -> list[pathlib.Path]``: writes the session report
    (``session`` is a ``cstbatch.report.SessionReportInput``) and returns the files written.
"""
from __future__ import annotations

import pluggy

PROJECT = "cstbatch"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: step kind -> hook name; the single place that lists what is swappable.
KIND_HOOKS = {
    "denoise": "register_denoisers",
    "mask": "register_maskers",
    "track": "register_trackers",
    "atlas": "register_atlases",
    "extract": "register_extractors",
    "report": "register_reporters",
}


@hookspec
def register_denoisers(register):
    """Register denoisers: ``register(name, func, version=, description=)``; see module doc."""


@hookspec
def register_maskers(register):
    """Register brain-mask methods."""


@hookspec
def register_trackers(register):
    """Register tractography methods (whole brain, or the region they are given)."""


@hookspec
def register_atlases(register):
    """Register atlas providers (MNI template + CST ROIs)."""


@hookspec
def register_extractors(register):
    """Register CST extraction methods (streamline selection by ROIs)."""


@hookspec
def register_reporters(register):
    """Register per-session report formats."""
