"""What each step of the chain does with files: load inputs, call the implementation, save.

Plugin implementations work on arrays (see ``hookspecs``); this module is the only place that
knows file formats and names (through ``SessionLayout``), so a plugin never handles paths of
the derivative dataset and every output is written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cstbatch.atomic import copy_file, save_nifti
from cstbatch.engine.context import StepContext, implementation_for
from cstbatch.errors import InputError, PluginError
from cstbatch.outputs.layout import TENSOR_PARAMS


def load_dwi(layout, which: str = "denoised"):
    """(image, float32 data (X,Y,Z,N), dipy GradientTable in voxel axes) of a session."""
    import nibabel as nib
    from dipy.core.gradients import gradient_table

    from cstbatch.steps.gradients import bids_to_voxel_axes, read_bvals_bvecs

    img = nib.load(str(layout.denoised if which == "denoised" else layout.dwi))
    data = np.asarray(img.dataobj, dtype=np.float32)
    bvals, bvecs = read_bvals_bvecs(layout.bval, layout.bvec, data.shape[-1])
    gtab = gradient_table(bvals, bvecs=bids_to_voxel_axes(bvecs, img.affine), b0_threshold=50)
    return img, data, gtab


def _load_mask(layout) -> np.ndarray:
    import nibabel as nib
    return np.asarray(nib.load(str(layout.mask)).dataobj) > 0


def _load_maps(layout) -> dict[str, np.ndarray]:
    import nibabel as nib
    return {p: np.asarray(nib.load(str(layout.tensor_map(p))).dataobj, dtype=np.float32) for p in TENSOR_PARAMS}


def _like(img, data, dtype=np.float32):
    import nibabel as nib
    out = nib.Nifti1Image(np.asarray(data, dtype=dtype), img.affine, img.header)
    out.set_data_dtype(dtype)
    return out


def ingest(ctx: StepContext) -> dict[str, Any]:
    from cstbatch.steps.ingest import check_nifti_dwi, convert_dicom, write_preproc

    spec, layout = ctx.spec, ctx.layout
    info: dict[str, Any] = {"input_type": spec.input_type}
    if spec.input_type == "dicom":
        conversion = convert_dicom(spec.input_path, layout.work_dir, series=ctx.options.get("series"))
        ctx.log.info("ingest: %s", conversion.log_message)
        info["dicom_series"] = conversion.series_description
        nifti, bval, bvec = conversion.nifti, conversion.bval, conversion.bvec
    else:
        nifti = spec.input_path
        if spec.bval is None or spec.bvec is None:
            kind = "bval" if spec.bval is None else "bvec"
            raise InputError(nifti, f"no .{kind} file found (same name, or inherited by BIDS rules)")
        bval, bvec = spec.bval, spec.bvec
    checked = check_nifti_dwi(Path(nifti), Path(bval), Path(bvec))
    write_preproc(checked, layout.dwi, layout.bval, layout.bvec)
    from cstbatch.outputs.records import input_sha256
    # the inputs as the user gave them (never dcm2niix's scratch files), named relative to the
    # study root: provenance, and what the ingest task's up-to-date check compares
    info["inputs"] = {label: input_sha256(path) for label, path in spec.inputs}
    info["shape"] = list(checked.img.shape)
    info["voxel_mm"] = [round(float(z), 4) for z in checked.img.header.get_zooms()[:3]]
    info["n_b0"] = int(np.sum(checked.bvals <= 50))
    return info


def denoise(ctx: StepContext) -> dict[str, Any]:
    img, data, gtab = load_dwi(ctx.layout, which="preproc")
    result = ctx.implementation.func(data, gtab, ctx.options)
    if not isinstance(result, np.ndarray) or result.shape != data.shape:
        raise PluginError(f"denoiser {ctx.implementation.name} returned "
                          f"{getattr(result, 'shape', type(result).__name__)}, expected shape {data.shape}")
    if result is data and img.get_data_dtype() == np.float32:
        # nothing changed (denoiser "none"): copy the file rather than re-encode 100 MB of gzip
        copy_file(ctx.layout.dwi, ctx.layout.denoised)
    else:
        save_nifti(_like(img, result), ctx.layout.denoised)
    return {}


def mask(ctx: StepContext) -> dict[str, Any]:
    img, data, gtab = load_dwi(ctx.layout)
    brain = np.asarray(ctx.implementation.func(data, gtab, ctx.options)).astype(bool)
    if brain.shape != data.shape[:3] or not brain.any():
        raise PluginError(f"mask {ctx.implementation.name} gave an empty or mis-shaped mask")
    save_nifti(_like(img, brain, np.uint8), ctx.layout.mask)
    return {"mask_voxels": int(brain.sum())}


def model(ctx: StepContext) -> dict[str, Any]:
    from cstbatch.steps.model import fit_tensor_maps

    img, data, gtab = load_dwi(ctx.layout)
    maps = fit_tensor_maps(data, gtab, _load_mask(ctx.layout))
    for param in TENSOR_PARAMS:
        save_nifti(_like(img, np.nan_to_num(maps[param])), ctx.layout.tensor_map(param))
    return {}


def track(ctx: StepContext) -> dict[str, Any]:
    from cstbatch.steps.track import save_trk

    img, data, gtab = load_dwi(ctx.layout)
    streamlines = ctx.implementation.func(data, gtab, _load_mask(ctx.layout), _load_maps(ctx.layout),
                                          img.affine, ctx.options)
    save_trk(streamlines, img, ctx.layout.tractogram)
    if ctx.options.get("save_trx"):
        _save_trx(streamlines, img, ctx.layout.tractogram_trx)
    return {"streamlines": len(streamlines)}


def _save_trx(streamlines, img, target: Path) -> None:
    from dipy.io.stateful_tractogram import Space, StatefulTractogram
    from trx.trx_file_memmap import TrxFile, save

    from cstbatch.atomic import atomic_path
    sft = StatefulTractogram(streamlines, img, Space.RASMM)
    with atomic_path(target) as tmp:
        save(TrxFile.from_sft(sft), str(tmp))


ROI_FILES = {"brainstem": "brainstem", "motor_left": "motorL", "motor_right": "motorR"}


def _atlas(ctx: StepContext):
    """The atlas the session's options name (the register step's own implementation)."""

    impl = ctx.implementation if ctx.implementation and ctx.implementation.kind == "atlas" else \
        implementation_for("register", ctx.options, ctx.spec_plugins_dir)
    return impl.func(ctx.options)


def _load_streamlines(path: Path) -> list[np.ndarray]:
    """Streamlines of a .trk in RAS+ mm (nibabel applies the header's voxel→RAS+ mapping)."""
    import nibabel as nib

    return [np.asarray(s, dtype=np.float64) for s in nib.streamlines.load(str(path)).streamlines]


def register(ctx: StepContext) -> dict[str, Any]:
    import nibabel as nib

    from cstbatch.steps.register import qc_figure, register_template, save_registration

    atlas = ctx.implementation.func(ctx.options)
    fa_img = nib.load(str(ctx.layout.tensor_map("fa")))
    reg = register_template(fa_img, atlas, ctx.options)
    save_registration(reg, ctx.layout.transform)
    rois = reg.warp_rois(atlas, fa_img)
    for name, short in ROI_FILES.items():
        save_nifti(_like(fa_img, rois[name], np.uint8), ctx.layout.roi(short))
    qc_figure(fa_img, reg.warp_template(atlas.registration_template, fa_img), ctx.layout.registration_qc,
              rois=rois, title=f"{ctx.spec.key}: {atlas.name} template on FA")
    return {"atlas": atlas.name, "atlas_version": atlas.version, "quality": reg.quality,
            "quality_metric": reg.quality_metric, "roi_voxels": {k: int(v.sum()) for k, v in rois.items()}}


def extract(ctx: StepContext) -> dict[str, Any]:
    import nibabel as nib

    from cstbatch.steps.register import load_registration, streamlines_to_mni
    from cstbatch.steps.track import save_trk

    atlas = _atlas(ctx)
    reg = load_registration(ctx.layout.transform)
    streamlines = _load_streamlines(ctx.layout.tractogram)
    selected = ctx.implementation.func(streamlines_to_mni(streamlines, reg), atlas, ctx.options)
    fa_img = nib.load(str(ctx.layout.tensor_map("fa")))
    counts = {}
    for side in ("left", "right"):
        idx = np.asarray(selected[side], dtype=int)
        save_trk([streamlines[i] for i in idx], fa_img, ctx.layout.cst(side))
        counts[side] = int(len(idx))
    return {"whole_brain": len(streamlines), "cst_streamlines": counts}


def metrics(ctx: StepContext) -> dict[str, Any]:
    import nibabel as nib

    from cstbatch.outputs.tables import write_csv
    from cstbatch.steps.metrics import (
        compute_metrics,
        metrics_to_rows,
        profiles_to_rows,
    )
    from cstbatch.steps.register import load_registration

    fa_img = nib.load(str(ctx.layout.tensor_map("fa")))
    brainstem = np.asarray(nib.load(str(ctx.layout.roi("brainstem"))).dataobj) > 0
    result = compute_metrics(_load_streamlines(ctx.layout.cst("left")), _load_streamlines(ctx.layout.cst("right")),
                             _load_maps(ctx.layout), fa_img.affine, ctx.options,
                             mni=load_registration(ctx.layout.transform), brainstem_mask=brainstem)
    from cstbatch.atomic import write_json
    from cstbatch.outputs.provenance import session_provenance

    # no "subject"/"session" keys: pybids reads this JSON as the CSV's sidecar and would see
    # them as entity values conflicting with the file name
    write_json(ctx.layout.metrics_json, {"key": ctx.spec.key, "participant_id": ctx.spec.subject_id,
                                         "session_id": ctx.spec.session_id, "metrics": result,
                                         "provenance": session_provenance(ctx)})
    write_csv(ctx.layout.metrics_csv, metrics_to_rows(result))
    write_csv(ctx.layout.profiles_csv, profiles_to_rows(result))
    return {"fa_mean": {s: result[s]["fa_mean"] for s in ("left", "right")},
            "fa_laterality": result["laterality"].get("fa_mean")}


def report(ctx: StepContext) -> dict[str, Any]:
    from cstbatch.steps.report import SessionReportInput

    session = SessionReportInput.from_layout(ctx.spec, ctx.layout, ctx.options)
    written = ctx.implementation.func(session, ctx.layout.report_html.parent, ctx.options)
    files = [Path(p) for p in written or []]
    missing = [p for p in files if not p.exists()]
    if missing:
        raise PluginError(f"reporter {ctx.implementation.name} said it wrote {missing[0]}, which does not exist")
    from cstbatch.outputs.records import content_digest
    return {"files": {str(p.relative_to(ctx.layout.out_dir)): content_digest(p) for p in sorted(files)}}


STEP_FUNCTIONS = {
    "ingest": ingest,
    "denoise": denoise,
    "mask": mask,
    "model": model,
    "track": track,
    "register": register,
    "extract": extract,
    "metrics": metrics,
    "report": report,
}
