"""The per-session chain, declared once: what each step reads, writes and is selected by.

Both the task generator (targets, file_dep, up-to-date checks) and the step runner (what to
write) read this table, so a new step is one entry here plus one function in ``session_steps``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from cstbatch.outputs.layout import NO_DENOISING, TENSOR_PARAMS, SessionLayout
from cstbatch.study.options import STEP_SELECTOR, STEPS, option_value  # noqa: F401  (STEP_SELECTOR: part of the chain's table)

#: step -> earlier steps whose outputs it reads (its records are the task's file_dep).
STEP_INPUTS: dict[str, tuple[str, ...]] = {
    "ingest": (),
    "denoise": ("ingest",),
    "mask": ("ingest", "denoise"),
    "model": ("ingest", "denoise", "mask"),
    "register": ("mask", "model"),
    "track": ("ingest", "denoise", "mask", "model", "register"),
    "extract": ("track", "register"),
    "metrics": ("model", "register", "extract"),
    "report": ("mask", "model", "register", "extract", "metrics"),
}

#: File label of each atlas ROI (``label-<name>_mask``), by the atlas's ROI name.
ROI_FILES = {"brainstem": "brainstem", "motor_left": "motorL", "motor_right": "motorR"}
ROI_NAMES = tuple(ROI_FILES.values())

#: Version of each step's built-in code: bump when the output of that step changes.
BUILTIN_STEP_VERSION: dict[str, str] = {step: "1" for step in STEPS}
# ingest 2: BIDS-valid names (session-level gradients, a sidecar); it reruns every later step
BUILTIN_STEP_VERSION["ingest"] = "2"
# 2: model fits b <= 1500, checks the gradient table, writes bvec_checked; metrics adds qc_flags
BUILTIN_STEP_VERSION.update(model="2", metrics="2")
# track 2: runs after register, in the CST corridor by default (track_region)
BUILTIN_STEP_VERSION["track"] = "2"
# metrics 3: a side with fewer than min_cst_streamlines is not measured (None), no laterality
BUILTIN_STEP_VERSION["metrics"] = "3"
# metrics 4: the cst_sparse and cst_course_asymmetric QC flags, course_asymmetry
BUILTIN_STEP_VERSION["metrics"] = "4"
# metrics 5: cortical_ends (which parts of the precentral gyrus each side reaches)
BUILTIN_STEP_VERSION["metrics"] = "5"
# metrics 6: regions the image does not cover get no values (regions_not_covered); the
# registration_ambiguous QC flag
BUILTIN_STEP_VERSION["metrics"] = "6"
# metrics 7: gyrus_coverage (how much of each part of the precentral gyrus the image holds), read
# by fov_truncated (the html reporter, version 5, says so in its summary)
BUILTIN_STEP_VERSION["metrics"] = "7"
# metrics 8: each side's template-space mask (dwi/*_space-<template>_desc-cst?_mask),
# from which the aggregation measures a subject's tract agreement between sessions
BUILTIN_STEP_VERSION["metrics"] = "8"
# metrics 9: with the corridor extraction's extract_inferior=peduncle (corridor version 8), the
# profiles average only the streamlines that start in the pons or lower
BUILTIN_STEP_VERSION["metrics"] = "9"
# metrics 10: that level is the extraction's own (inferior_top_z_mni), so on an image that stops
# in the pons the profiles keep the streamlines that start at its lowest level;
# profile_streamline_count; the cst_face_area_only QC flag
BUILTIN_STEP_VERSION["metrics"] = "10"
# metrics 11: the profiles start where every profiled streamline crosses that level (node 0 is one
# MNI z for every streamline and both sides); profile_z_mni, each node's level, and
# profile_start_z_mni (the html reporter, version 6, names both)
BUILTIN_STEP_VERSION["metrics"] = "11"

#: Version of the code a plugin-selected step runs around its plugin, where that code shapes
#: the result: the register step takes its atlas from a plugin but registers with cstbatch's
#: own code. Part of the step's up-to-date check; bump when that code's output changes.
#: (2: rigid → affine from the centre of mass, without the translation stage. 3: CST level
#: coverage in the record; an image without brainstem and internal capsule fails. 4: a slab's
#: affine stage runs from several starts; each start's MI and distance in the record.)
STEP_CODE_VERSION: dict[str, str] = {"register": "4"}


def step_outputs(step: str, layout: SessionLayout, options: Mapping) -> list[Path]:
    """Files ``step`` writes (besides its record) — the task's targets."""
    if step == "ingest":
        return [layout.dwi, layout.dwi_json, layout.bval, layout.bvec]
    if step == "denoise":  # denoiser "none": the next steps read ingest's DWI, nothing is written
        if option_value(options, "denoise_method") == NO_DENOISING:
            return []
        return [layout.denoised, layout.denoised_json]
    if step == "mask":
        return [layout.mask, layout.mask_json]
    if step == "model":
        return [layout.tensor_map(p) for p in TENSOR_PARAMS] + [layout.bvec_checked]
    if step == "track":
        return [layout.tractogram] + ([layout.tractogram_trx] if options.get("save_trx") else [])
    if step == "register":
        atlas = option_value(options, "atlas")
        syn = [layout.registration_cache(atlas)] if options.get("registration_method") == "syn" else []
        return [layout.transform(atlas), *syn, layout.registration_qc] + [
            path for r in ROI_NAMES for path in (layout.roi(r), layout.roi_json(r))]
    if step == "extract":
        return [layout.cst("left"), layout.cst("right")]
    if step == "metrics":
        atlas = option_value(options, "atlas")
        return [layout.metrics_json, layout.metrics_csv, layout.profiles_csv,
                *(layout.cst_template_mask(side, atlas) for side in ("left", "right"))]
    if step == "report":  # other reporters' files are listed in the step record
        if options.get("reporter") != "html":
            return []
        return [layout.report_html] + ([layout.report_pdf] if options.get("generate_pdf") else [])
    raise KeyError(step)


assert set(STEP_INPUTS) == set(STEPS)
