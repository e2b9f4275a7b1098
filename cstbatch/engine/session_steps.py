"""What each step of the chain does with files: load inputs, call the implementation, save.

Plugin implementations work on arrays (see ``hookspecs``); this module is the only place that
knows file formats and names (through ``SessionLayout``), so a plugin never handles paths of
the derivative dataset and every output is written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cstbatch.atomic import copy_file, save_nifti, write_json
from cstbatch.engine.context import StepContext, implementation_for
from cstbatch.errors import InputError, OptionError, PluginError
from cstbatch.engine.chain import ROI_FILES
from cstbatch.outputs.layout import TENSOR_PARAMS
from cstbatch.study.bvalues import B0_THRESHOLD
from cstbatch.study.options import option_value


def load_dwi(layout, path: Path | None = None, checked: bool = False):
    """(image, float32 data (X,Y,Z,N), dipy GradientTable in voxel axes) of the session's DWI at
    ``path`` (default: the preprocessed one); the gradients are the session's.

    ``checked``: use the b-vectors the model step's gradient check left (steps after model)."""
    import nibabel as nib
    from dipy.core.gradients import gradient_table

    from cstbatch.steps.gradients import bids_to_voxel_axes, read_bvals_bvecs

    img = nib.load(str(path or layout.dwi))
    data = np.asarray(img.dataobj, dtype=np.float32)
    bvals, bvecs = read_bvals_bvecs(layout.bval, layout.bvec_checked if checked else layout.bvec, data.shape[-1])
    gtab = gradient_table(bvals, bvecs=bids_to_voxel_axes(bvecs, img.affine), b0_threshold=B0_THRESHOLD)
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
        from cstbatch.steps.qc import conversion_warnings
        info["dcm2niix_warnings"] = conversion_warnings(conversion.log_message)
        for warning in info["dcm2niix_warnings"]:
            ctx.log.warning("ingest: dcm2niix: %s", warning)
        info["dicom_series"] = conversion.series_description
        nifti, bval, bvec = conversion.nifti, conversion.bval, conversion.bvec
    else:
        nifti = spec.input_path
        if spec.bval is None or spec.bvec is None:
            kind = "bval" if spec.bval is None else "bvec"
            raise InputError(nifti, f"no .{kind} file found (same name, or inherited by BIDS rules)")
        bval, bvec = spec.bval, spec.bvec
    checked = check_nifti_dwi(Path(nifti), Path(bval), Path(bvec))
    if checked.derived:
        info["derived_volumes_dropped"] = list(checked.derived)
        ctx.log.warning("ingest: %s: left out volume(s) %s: b > 0 with a zero b-vector (the scanner's "
                        "derived isotropic/trace image, not a measurement)", Path(nifti).name,
                        ", ".join(str(i) for i in checked.derived))
    from cstbatch.steps.qc import MIN_DIRECTIONS, shells, unique_directions
    n_dirs = unique_directions(checked.bvals, checked.bvecs_bids)
    if n_dirs < MIN_DIRECTIONS:
        raise InputError(bvec, f"only {n_dirs} non-collinear diffusion directions; a tensor needs at least "
                               f"{MIN_DIRECTIONS}")
    data, bvecs, moved = _head_motion(ctx, checked)
    if moved is not None:
        info["motion"] = moved
    write_preproc(checked, layout.dwi, layout.bval, layout.bvec, data=data, bvecs_bids=bvecs)
    write_json(layout.dwi_json, {
        "Description": "The input DWI as accepted by cstbatch (checked; float32; gradients in the "
                       "BIDS convention of this image, in the session's dwi.bval/dwi.bvec); "
                       + ("head motion corrected (rigid, b-vectors turned with the head)."
                          if moved and moved["corrected"] else "not otherwise processed."),
        "SkullStripped": False})
    for old in layout.superseded("ingest"):
        old.unlink(missing_ok=True)
    from cstbatch.outputs.records import input_sha256
    # the inputs as the user gave them (never dcm2niix's scratch files), named relative to the
    # study root: provenance, and what the ingest task's up-to-date check compares
    info["inputs"] = {label: input_sha256(path) for label, path in spec.inputs}
    info["shape"] = list(checked.img.shape[:3]) + [int(checked.bvals.size)]  # as written (derived volumes out)
    info["voxel_mm"] = [round(float(z), 4) for z in checked.img.header.get_zooms()[:3]]
    info["n_b0"] = int(np.sum(checked.bvals <= B0_THRESHOLD))
    info["n_directions"], info["shells"] = n_dirs, shells(checked.bvals)
    return info


def _head_motion(ctx: StepContext, checked):
    """(data to write, b-vectors to write, the motion summary), each None when unchanged, for the
    ``motion_correction`` option."""
    method = option_value(ctx.options, "motion_correction", null_is_default=True)
    if method == "none":
        return None, None, None
    from cstbatch.steps.ingest import load_dwi_data
    from cstbatch.steps.motion import apply_motion, estimate_motion, rotate_bvecs, should_correct

    data = load_dwi_data(checked)
    affine = checked.img.affine
    motion = estimate_motion(data, checked.bvals, affine)
    motion.corrected = should_correct(method, motion, checked.img.header.get_zooms()[:3])
    summary = motion.summary()
    ctx.log.info("ingest: head motion (%s): mean %.2f mm, largest %.2f mm / %.2f deg; %s", method,
                 summary["mean_displacement_mm"], summary["max_displacement_mm"], summary["max_rotation_deg"],
                 "corrected" if motion.corrected else "left as it is")
    if not motion.corrected:
        return data, None, summary
    return apply_motion(data, motion, affine), rotate_bvecs(checked.bvecs_bids, motion, affine), summary


def denoise(ctx: StepContext) -> dict[str, Any]:
    layout = ctx.layout
    if layout.analysis_dwi(ctx.options) == layout.dwi:
        # denoiser "none": the later steps read the preprocessed DWI; no second copy of it
        for stale in (layout.denoised, layout.denoised_json):  # from an earlier denoiser
            stale.unlink(missing_ok=True)
        return {"dwi": str(layout.dwi.relative_to(layout.out_dir))}
    img, data, gtab = load_dwi(layout)
    result = ctx.implementation.func(data, gtab, ctx.options)
    if not isinstance(result, np.ndarray) or result.shape != data.shape:
        raise PluginError(f"denoiser {ctx.implementation.name} returned "
                          f"{getattr(result, 'shape', type(result).__name__)}, expected shape {data.shape}")
    save_nifti(_like(img, result), layout.denoised)
    write_json(layout.denoised_json, {
        "Description": f"The preprocessed DWI denoised by {ctx.implementation.name} "
                       f"{ctx.implementation.version}; gradients in the session's dwi.bval/dwi.bvec.",
        "SkullStripped": False})
    return {"dwi": str(layout.denoised.relative_to(layout.out_dir))}


def mask(ctx: StepContext) -> dict[str, Any]:
    img, data, gtab = load_dwi(ctx.layout, ctx.layout.analysis_dwi(ctx.options))
    brain = np.asarray(ctx.implementation.func(data, gtab, ctx.options)).astype(bool)
    if brain.shape != data.shape[:3] or not brain.any():
        raise PluginError(f"mask {ctx.implementation.name} gave an empty or mis-shaped mask")
    save_nifti(_like(img, brain, np.uint8), ctx.layout.mask)
    write_json(ctx.layout.mask_json, {
        "Description": f"Brain mask by {ctx.implementation.name} {ctx.implementation.version}.",
        "Type": "Brain"})
    return {"mask_voxels": int(brain.sum())}


def model(ctx: StepContext) -> dict[str, Any]:
    """Tensor fit on b ≤ 1500, the gradient-table check, and the b-vectors later steps use.

    With ``gradient_check=fix`` the maps need no refit: a flip/permutation of the table only
    rotates the tensor (same FA/MD/RD/AD, see ``steps.gradcheck``); the corrected table is
    written to ``bvec_checked``, which track (and anything after) reads.
    """
    from dipy.core.gradients import gradient_table

    from cstbatch.atomic import write_text
    from cstbatch.steps.model import TENSOR_MAX_B, fit_tensor_maps, tensor_volumes, white_matter_snr

    from cstbatch.study.options import require_choice

    mode = require_choice("gradient_check", str(option_value(ctx.options, "gradient_check")))
    img, data, gtab = load_dwi(ctx.layout, ctx.layout.analysis_dwi(ctx.options))
    keep = tensor_volumes(gtab.bvals)
    info: dict[str, Any] = {"tensor_max_b": TENSOR_MAX_B, "tensor_volumes": int(keep.size)}
    if keep.size != data.shape[-1]:
        data = data[..., keep]
        gtab = gradient_table(gtab.bvals[keep], bvecs=gtab.bvecs[keep], b0_threshold=B0_THRESHOLD)
    brain = _load_mask(ctx.layout)
    maps = fit_tensor_maps(data, gtab, brain)
    for param in TENSOR_PARAMS:
        save_nifti(_like(img, np.nan_to_num(maps[param])), ctx.layout.tensor_map(param))
    info["snr"] = white_matter_snr(data, gtab, maps["fa"], brain)
    applied = None
    if mode != "off":
        from cstbatch.steps.gradcheck import candidate_by_name, check_gradients

        check = check_gradients(maps["evecs"], maps["fa"], brain, img.affine)
        info["gradient_check"] = {"mode": mode, **check.to_json()}
        if check.suspect:
            ctx.log.warning("model: gradient table suspect: %s gives %.2fx longer streamlines%s", check.best,
                            check.ratio, " (applied)" if mode == "fix" else "")
            if mode == "fix":
                applied = candidate_by_name(check.best)
                info["gradient_check"]["applied"] = check.best
    if applied is None:
        copy_file(ctx.layout.bvec, ctx.layout.bvec_checked)
    else:
        from cstbatch.steps.gradients import read_bvals_bvecs
        _, bvecs = read_bvals_bvecs(ctx.layout.bval, ctx.layout.bvec, img.shape[-1])
        fixed = applied.apply_bids(bvecs) + 0.0  # + 0.0: no "-0"
        write_text(ctx.layout.bvec_checked, "".join(" ".join(f"{v:.6g}" for v in fixed[:, ax]) + "\n"
                                                    for ax in range(3)))
    return info


def track(ctx: StepContext) -> dict[str, Any]:
    from cstbatch.steps.track import ResponseError, save_trk

    from cstbatch.steps.track_region import tracking_inputs

    img, data, gtab = load_dwi(ctx.layout, ctx.layout.analysis_dwi(ctx.options), checked=True)
    brain = _load_mask(ctx.layout)
    maps = _load_maps(ctx.layout)
    region, maps, region_info = tracking_inputs(brain, maps, img.affine,
                                                lambda: load_session_registration(ctx).subject_to_mni, ctx.options)
    try:
        streamlines = ctx.implementation.func(data, gtab, region, maps, img.affine, ctx.options)
    except ResponseError as exc:
        where = np.asarray(region, bool)  # the corridor, or the brain for track_region=brain
        raise InputError(ctx.spec.input_path, f"no white matter to estimate the CSD fibre response from ({exc}; "
                         f"tracking region '{region_info.get('region', 'brain')}' {int(where.sum())} voxels, "
                         f"{int((maps['fa'][where] > 0.4).sum())} with FA > 0.4; brain mask {int(brain.sum())}): "
                         "the image covers too little brain (a thin slab?) or the b-values/vectors "
                         "do not match it") from exc
    save_trk(streamlines, img, ctx.layout.tractogram)
    if ctx.options.get("save_trx"):
        _save_trx(streamlines, img, ctx.layout.tractogram_trx)
    return {"streamlines": len(streamlines), **region_info}


def _save_trx(streamlines, img, target: Path) -> None:
    """The tractogram as TRX too (RAS+ mm, the DWI as reference), through the trx extra."""
    from dipy.io.stateful_tractogram import Space, StatefulTractogram

    from cstbatch.atomic import atomic_path
    from cstbatch.study.options import extra_error
    try:
        from trx.trx_file_memmap import TrxFile, save
    except ImportError:  # planning checks this too; a job started elsewhere may lack it
        raise OptionError(extra_error("save_trx")) from None
    sft = StatefulTractogram(streamlines, img, Space.RASMM)
    with atomic_path(target) as tmp:
        save(TrxFile.from_sft(sft), str(tmp))


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

    from cstbatch.steps.register import qc_figure, register_template, save_itk_affine, save_registration

    layout, atlas_option = ctx.layout, option_value(ctx.options, "atlas")
    atlas = ctx.implementation.func(ctx.options)
    fa_img = nib.load(str(layout.tensor_map("fa")))
    reg = register_template(fa_img, atlas, ctx.options)
    transform = save_itk_affine(reg.subject_to_mni, layout.transform(atlas_option))
    current = {transform}
    if reg.mapping is not None:  # SyN: the displacement fields only cstbatch reads
        current.add(save_registration(reg, layout.registration_cache(atlas_option)))
    # another atlas's or method's transforms, and 0.1's names, would look current
    for old in [*transform.parent.glob(f"{layout.key}_from-*_xfm.*"), *layout.superseded("register")]:
        if old not in current:
            old.unlink(missing_ok=True)
    rois = reg.warp_rois(atlas, fa_img)
    for name, short in ROI_FILES.items():
        save_nifti(_like(fa_img, rois[name], np.uint8), layout.roi(short))
        write_json(layout.roi_json(short), {
            "Description": f"{name.replace('_', ' ')} ROI of the {atlas.name} atlas ({atlas.version}) "
                           f"resampled onto the DWI grid (nearest neighbour) through "
                           f"xfm/{transform.name}" + (" and the SyN warp" if reg.mapping is not None else "") + ".",
            "Type": "ROI"})
    qc_figure(fa_img, reg.warp_template(atlas.registration_template, fa_img), layout.registration_qc,
              rois=rois, title=f"{ctx.spec.key}: {atlas.name} template on FA")
    from cstbatch.steps.coverage import coverage, describe
    from cstbatch.steps.qc import MIN_REGISTRATION_R
    cov = coverage(fa_img.shape, fa_img.affine, reg.subject_to_mni)
    # only a registration that lines up can say where the image is; a poor one leaves flags
    # (fov_truncated, registration_poor) instead of a verdict that may be wrong
    if not cov["usable"] and reg.quality >= MIN_REGISTRATION_R:
        raise InputError(ctx.spec.input_path, "the image covers too little to find any CST (no brainstem level and "
                         "no internal capsule); it covers "
                         + (describe(cov["covered"]) if cov["covered"] else "none of the CST levels")
                         + f" (registration r = {reg.quality:.2f})")
    return {"atlas": atlas.name, "atlas_version": atlas.version, "quality": reg.quality,
            "quality_metric": reg.quality_metric,
            **{k: reg.info.get(k) for k in ("affine_stage", "slab_refine_mm", "affine_start_mm", "affine_start_mi")},
            "roi_voxels": {k: int(v.sum()) for k, v in rois.items()},
            "transform": str(transform.relative_to(layout.out_dir)),
            "transform_kind": "affine" if reg.mapping is None else "affine (ITK file) + SyN warp (cstbatch .npz)",
            "coverage": cov}


def load_session_registration(ctx: StepContext):
    """The session's template registration as the register step saved it: the ITK affine, or
    cstbatch's .npz (affine and warp) for SyN."""
    from cstbatch.steps.register import Registration, load_itk_affine, load_registration

    atlas = option_value(ctx.options, "atlas")
    if ctx.options.get("registration_method") == "syn":
        return load_registration(ctx.layout.registration_cache(atlas))
    return Registration(subject_to_mni=load_itk_affine(ctx.layout.transform(atlas)))


def extract(ctx: StepContext) -> dict[str, Any]:
    import nibabel as nib

    from cstbatch.steps.extract import selected_streamlines
    from cstbatch.steps.extract_corridor import extraction_inputs
    from cstbatch.steps.register import streamlines_to_mni
    from cstbatch.steps.track import save_trk

    atlas = _atlas(ctx)
    reg = load_session_registration(ctx)
    streamlines = _load_streamlines(ctx.layout.tractogram)
    fa_img = nib.load(str(ctx.layout.tensor_map("fa")))
    # how low and how high the image reaches in MNI space: an extractor may start the tract at
    # the lowest brainstem level covered when the field of view stops above the medulla, and
    # end it at the image's top when the slab stops under the vertex
    cover = extraction_inputs(np.asarray(fa_img.dataobj), fa_img.affine, reg.subject_to_mni, streamlines,
                              ctx.options)
    selected = ctx.implementation.func(streamlines_to_mni(streamlines, reg), atlas, {**ctx.options, **cover})
    counts = {}
    for side in ("left", "right"):
        cst = selected_streamlines(streamlines, selected, side)
        save_trk(cst, fa_img, ctx.layout.cst(side))
        counts[side] = len(cst)
    out = {"whole_brain": len(streamlines), "cst_streamlines": counts, "coverage_z_mni": cover["coverage_z"],
           "coverage_top_z_mni": cover["coverage_top_z"]}
    if isinstance(selected.get("info"), dict):  # e.g. which inferior levels were used
        out["extraction"] = selected["info"]
    return out


def metrics(ctx: StepContext) -> dict[str, Any]:
    import nibabel as nib

    from cstbatch.outputs.tables import write_csv
    from cstbatch.steps.metrics import (
        compute_metrics,
        metrics_to_rows,
        profiles_to_rows,
        template_mask,
    )
    fa_img = nib.load(str(ctx.layout.tensor_map("fa")))
    from cstbatch.atomic import write_json
    from cstbatch.outputs.provenance import session_provenance
    from cstbatch.outputs.records import read_record
    from cstbatch.steps.coverage import gyrus_fractions, gyrus_points
    from cstbatch.steps.qc import failing, session_flags

    infos = {s: (read_record(ctx.layout.record(s)) or {}).get("info") or {} for s in ("ingest", "model", "register")}
    brainstem = np.asarray(nib.load(str(ctx.layout.roi("brainstem"))).dataobj) > 0
    reg = load_session_registration(ctx)
    gyrus = gyrus_fractions(gyrus_points(_atlas(ctx).registration_template), fa_img.shape, fa_img.affine,
                            reg.subject_to_mni)
    sides = {s: _load_streamlines(ctx.layout.cst(s)) for s in ("left", "right")}
    extract_info = ((read_record(ctx.layout.record("extract")) or {}).get("info") or {})
    result = compute_metrics(sides["left"], sides["right"],
                             _load_maps(ctx.layout), fa_img.affine, ctx.options,
                             mni=reg, brainstem_mask=brainstem,
                             uncovered_levels=(infos["register"].get("coverage") or {}).get("missing") or (),
                             gyrus_coverage=gyrus,
                             profile_from_z=(extract_info.get("extraction") or {}).get("inferior_top_z_mni"))
    flags = session_flags({s: result[s]["streamline_count"] for s in ("left", "right")}, ctx.options, **infos,
                          course=result.get("course_asymmetry"), gyrus=gyrus,
                          ends={s: result[s].get("cortical_ends") for s in ("left", "right")})
    # no "subject"/"session" keys: pybids reads this JSON as the CSV's sidecar and would see
    # them as entity values conflicting with the file name
    result["extraction"] = {"method": ctx.options.get("extraction_method"),
                            "cst_streamlines": extract_info.get("cst_streamlines"),
                            "coverage_z_mni": extract_info.get("coverage_z_mni"),
                            **(extract_info.get("extraction") or {})}
    write_json(ctx.layout.metrics_json, {"key": ctx.spec.key, "participant_id": ctx.spec.subject_id,
                                         "session_id": ctx.spec.session_id, "metrics": result,
                                         "qc_flags": flags, "provenance": session_provenance(ctx)})
    write_csv(ctx.layout.metrics_csv, metrics_to_rows(result))
    write_csv(ctx.layout.profiles_csv, profiles_to_rows(result))
    for side, streamlines in sides.items():
        mask, affine = template_mask(streamlines, reg)
        save_nifti(nib.Nifti1Image(mask, affine),
                   ctx.layout.cst_template_mask(side, option_value(ctx.options, "atlas")))
    for f in flags:
        ctx.log.warning("QC %s: %s", f["code"], f["message"])
    chosen = failing(flags, ctx.options.get("qc_fail"))
    if chosen:
        from cstbatch.errors import QcFailure
        raise QcFailure(chosen)
    return {"fa_mean": {s: result[s]["fa_mean"] for s in ("left", "right")},
            "fa_laterality": result["laterality"].get("fa_mean"), "qc_flags": [f["code"] for f in flags]}


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
