"""Quality-control flags: what a session's numbers cannot be trusted for, as data.

A session can run every step and still say nothing about its CST: a partial slab, an empty
side, a flipped gradient table, a failed registration. Each such finding becomes a flag
``{"code": ..., "message": ...}`` in metrics.json, batch_summary.json (per session),
batch_metrics.csv (``qc_flags``: codes joined by ``;``) and both reports. The option
``qc_fail`` turns chosen codes into failures of category ``qc``.

The codes (:data:`QC_CODES`) and their thresholds are documented here; the inputs are the
step records' ``info`` (ingest, model, register) and the extracted streamline counts, so the
flags are computed from saved state and never need the images again.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from cstbatch.errors import OptionError
from cstbatch.study.bvalues import B0_THRESHOLD
from cstbatch.study.options import OPTIONS, option_value

#: A side with fewer CST streamlines than this (option ``min_cst_streamlines``) is "not found".
DEFAULT_MIN_CST_STREAMLINES = OPTIONS["min_cst_streamlines"].default
#: A found side with fewer CST streamlines than this (option ``sparse_cst_streamlines``) is
#: flagged ``cst_sparse``. Measured: phantom sides (healthy, or with the default moderate
#: lesion) keep at least 63 (fresh sets at 2–3 mm, b 1000–2500, benchmarks/RESULTS.md), the shared real scans
#: 239–596; a capsular lesion whose core falls below the tracker's stopping FA left 20–54 on the
#: lesioned side (``benchmarks/anatomy_sweep.py --lesion alternate --lesion-eig 1.1,0.85``). So
#: few streamlines are a finding in themselves (an interrupted tract), and the side's volume,
#: shape and profile rest on a handful of paths.
DEFAULT_SPARSE_CST_STREAMLINES = OPTIONS["sparse_cst_streamlines"].default
#: Median distance (mm) between the two CSTs' courses, one mirrored, from the cerebral peduncle to
#: the centrum semiovale (:func:`cstbatch.steps.metrics.course_asymmetry`) above which the session
#: is flagged ``cst_course_asymmetric``. Measured: the shared real scans 2.0–2.7 mm; 83 phantoms
#: (healthy, or lesions down to FA 0.26), whose two sides are drawn independently, 1.5–7.4 mm;
#: tracts that detour around a blocked path (anatomy 19107's sharp bend, lesions below the
#: stopping FA) 7.1–9.9 mm: 3 of the 4 severe-lesion sessions above 8, 19107 at 7.5–7.9 (README,
#: "Quality control flags").
COURSE_ASYMMETRY_MM = 8.0
#: A found side with less than this share of its cortical ends in the leg area and the hand knob
#: (MNI |x| < 45 mm, :data:`cstbatch.steps.coverage.GYRUS_PARTS_MNI_X`), both inside the image,
#: is flagged ``cst_face_area_only``. Measured on the corridor's kept streamlines of 76 phantom
#: subjects (2-3 mm, both families): every other side 0.33-1.0, the shared real scans and their
#: clinical and regridded copies 0.98-1.0; atlas anatomy 1400's left side 0.0,
#: where the tracker left the tract at the top of the midbrain and the 54 streamlines that passed
#: every test ran from the face area down the midline (Dice 0.06). That phantom's fibres ran
#: across their bundle (atlas phantom version 1; benchmarks/RESULTS.md, "Landing 30"), but a
#: tracker that leaves the tract on any scan leaves such a side behind, and no other flag saw it.
FACE_ONLY_SHARE = 0.1
#: Registration quality (Pearson r of subject FA and warped template FA, see
#: :class:`cstbatch.steps.register.Registration`) below this: ``registration_poor``. Measured:
#: the shared real scans register at r 0.50–0.53 (noisy FA against a smooth template; the sample
#: phantom at 0.9); moving the template of the registered Philips scan 10 mm along z or turning
#: it 10° drops r to 0.35–0.37, 20 mm / 20° to 0.24; tiny test cubes that match nothing give
#: r ≤ 0.2. Below 0.35 the ROIs are likely a centimetre or more off.
MIN_REGISTRATION_R = 0.35
#: A slab's affine stage runs from several starts (:data:`cstbatch.steps.register.AFFINE_STARTS_MM`);
#: when one of them ends at least :data:`AMBIGUOUS_MM` (median over the brain) from the placement
#: taken with a mutual information within :data:`AMBIGUOUS_MI` of it: ``registration_ambiguous``.
#: Measured on 48 slabs cut from the shared scans (MNI z -30 to -15 up; 3 mm, b 1000 and 2500;
#: ``benchmarks/slab_registration.py``, benchmarks/RESULTS.md), with the 12-parameter slab stage:
#: every Trio or Elition slab that landed within 2.8 mm of its whole scan's registration stayed
#: unflagged (36 of 40); the flag fired on the 4 that landed 4.3-6.9 mm off and on 4 of Toshiba's
#: 8 (5.6-8.4 mm off). The similarity slab stage now used leaves none of the 48 ambiguous; the flag
#: stays as a safety net. It says the slab cannot fix its own vertical placement, not which
#: placement is right.
AMBIGUOUS_MM = 5.0
AMBIGUOUS_MI = 0.02
#: Fewer diffusion directions than this: ``few_directions``. CSD needs 15 for SH order 4
#: (:func:`cstbatch.steps.track.sh_order_for`); below it tracking cannot resolve fibre crossings.
FEW_DIRECTIONS = 15
#: A tensor needs 6 non-collinear directions; fewer is an input error.
MIN_DIRECTIONS = 6
#: Directions closer than this angle (degrees, either sign) count as one.
COLLINEAR_DEG = 3.0
#: White-matter SNR (b0 over the tensor fit's residual noise, see ``model`` step) below this: ``low_snr``.
MIN_SNR = 8.0

QC_CODES: dict[str, str] = {
    "cst_not_found": "a side has fewer than min_cst_streamlines CST streamlines: no tract, so its metrics and the "
                     "laterality indices are left empty",
    "cst_sparse": "a side was found but has fewer than sparse_cst_streamlines streamlines: its volume, shape and "
                  "profile rest on few paths (a lesion may interrupt the tract)",
    "cst_course_asymmetric": f"the two CSTs' courses (peduncle to centrum semiovale, one mirrored) lie more than "
                             f"{COURSE_ASYMMETRY_MM:g} mm apart: a detour around a blocked path, or a displaced tract",
    "cst_face_area_only": "a found side's streamlines end (almost) only in the face area of the precentral gyrus, none "
                          "in the leg area or the hand knob, which the image holds and where most CST fibres start: "
                          "what was found is probably not the tract's main body",
    "fov_truncated": "the image does not hold every CST level whole (medulla → precentral gyrus, MNI z ranges in "
                     "cstbatch.steps.coverage; whole: 90 % inside) or every part of the precentral gyrus (leg area, "
                     "hand knob, face area): the tract is cut and its metrics are partial",
    "gradient_table_suspect": "another sign flip / axis permutation of the b-vectors gives clearly longer "
                              "streamlines than the given table (gradient_check=flag)",
    "gradient_table_fixed": "the b-vectors were replaced by a better flip/permutation (gradient_check=fix)",
    "registration_poor": f"template-to-subject FA correlation below {MIN_REGISTRATION_R}: ROIs may be misplaced",
    "registration_ambiguous": f"on a slab, another template placement at least {AMBIGUOUS_MM:g} mm away fits almost as "
                              f"well (mutual information within {AMBIGUOUS_MI:g}): the CST's levels may be off by that much",
    "few_directions": f"fewer than {FEW_DIRECTIONS} diffusion directions: CSD cannot resolve crossings (SH order 2)",
    "low_snr": f"white-matter SNR of the b0 below {MIN_SNR}: FA is biased upwards by noise",
    "head_motion": "motion_correction measured a volume more than one voxel away from its reference "
                   "(the flag says whether it was corrected)",
    "dicom_conversion": "dcm2niix warned about gradients, slice geometry or orientation while converting "
                        "(every dcm2niix warning is in the session log)",
}
#: dcm2niix warnings that can change the gradient table or the geometry (lower case substrings);
#: others (e.g. about private tags or file names) only go to the session log.
CONVERSION_WARNINGS_THAT_MATTER = ("bvec", "bval", "b-val", "b-vec", "gradient", "slice", "mirror", "flip",
                                   "orient", "gantry", "tilt", "oblique", "interpolat", "mosaic", "inconsistent")


def flag(code: str, message: str) -> dict[str, str]:
    if code not in QC_CODES:
        raise KeyError(code)
    return {"code": code, "message": message}


def unique_directions(bvals, bvecs, b0_threshold: float = B0_THRESHOLD) -> int:
    """Number of non-collinear diffusion directions (opposite vectors are the same axis)."""
    dirs = np.asarray(bvecs, float)[np.asarray(bvals, float) > b0_threshold]
    norms = np.linalg.norm(dirs, axis=1)
    dirs = dirs[norms > 0] / norms[norms > 0, None]
    cos = np.cos(np.deg2rad(COLLINEAR_DEG))
    kept: list[np.ndarray] = []
    for d in dirs:
        if not kept or np.max(np.abs(np.asarray(kept) @ d)) < cos:
            kept.append(d)
    return len(kept)


def shells(bvals, b0_threshold: float = B0_THRESHOLD) -> list[int]:
    """Distinct b-values of the diffusion-weighted volumes, rounded to 100 s/mm²."""
    b = np.asarray(bvals, float)
    return sorted({int(round(v / 100.0) * 100) for v in b[b > b0_threshold]})


def conversion_warnings(log: str) -> list[str]:
    """dcm2niix's warning lines ("Warning: ...") from its output, in order, without repeats."""
    seen: list[str] = []
    for line in (log or "").splitlines():
        line = " ".join(line.split())
        if line.lower().startswith("warning") and line not in seen:
            seen.append(line)
    return seen


def parse_codes(value: Any) -> list[str]:
    """``qc_fail``: None, "code,code" or a list → codes; unknown codes are an option error."""
    if value in (None, "", []):
        return []
    codes = [c.strip() for c in (value.split(",") if isinstance(value, str) else value) if str(c).strip()]
    bad = [c for c in codes if c not in QC_CODES]
    if bad:
        raise OptionError(f"qc_fail: unknown QC code {bad[0]!r} (known: {', '.join(QC_CODES)})")
    return codes


def _leg_and_hand_shares(ends: Mapping | None, cut) -> list[tuple[str, float, int]]:
    """(side, share of its cortical ends in the medial and middle parts of the gyrus, ends) for the
    sides with ends whose medial and middle parts the image holds whole (``cut``:
    :func:`cstbatch.steps.coverage.gyrus_parts_cut`)."""
    out = []
    for side in ("left", "right"):
        e = (ends or {}).get(side) or {}
        total = sum(int(v or 0) for v in e.values())
        if not total or any(c[0] == side and c[1] in ("medial", "middle") for c in cut):
            continue
        out.append((side, (int(e.get("medial") or 0) + int(e.get("middle") or 0)) / total, total))
    return out


def session_flags(counts: Mapping[str, int], options: Mapping[str, Any], ingest: Mapping | None = None,
                  model: Mapping | None = None, register: Mapping | None = None,
                  course: Mapping | None = None, gyrus: Mapping | None = None,
                  ends: Mapping | None = None) -> list[dict[str, str]]:
    """The session's flags, from the steps' record ``info`` dicts, the CST counts per side, the
    metrics' ``course_asymmetry``, ``gyrus_coverage`` (``gyrus``) and each side's
    ``cortical_ends`` (``ends``)."""
    from cstbatch.steps.coverage import (
        GYRUS_PARTS_MNI_X,
        describe,
        describe_cut,
        describe_partial,
        gyrus_parts_cut,
        partial_levels,
    )

    ingest, model, register = ingest or {}, model or {}, register or {}
    flags = []
    minimum = int(option_value(options, "min_cst_streamlines"))
    n = {side: int(counts.get(side, 0)) for side in ("left", "right")}
    empty = [f"{side} {k}" for side, k in n.items() if k < minimum]
    if empty:
        flags.append(flag("cst_not_found", f"CST not found: streamlines {', '.join(empty)} "
                                           f"(fewer than min_cst_streamlines={minimum}); no tract, so those sides' "
                                           "metrics and the laterality indices are left empty"))
    sparse_below = int(option_value(options, "sparse_cst_streamlines"))
    sparse = [f"{side} {k}" for side, k in n.items() if minimum <= k < sparse_below]
    if sparse:
        flags.append(flag("cst_sparse", f"few CST streamlines: {', '.join(sparse)} (fewer than "
                                        f"sparse_cst_streamlines={sparse_below}); the tract may be interrupted "
                                        "(a lesion?), and its volume, shape and profile rest on few paths"))
    apart = (course or {}).get("median_mm")
    if isinstance(apart, (int, float)) and apart > COURSE_ASYMMETRY_MM:
        z0, z1 = course["z_range_mni"]
        flags.append(flag("cst_course_asymmetric",
                          f"the left CST and the mirrored right one run {apart:.1f} mm apart (median over MNI z "
                          f"{z0:g} to {z1:g}; healthy scans: 2-3 mm): one side may detour around a "
                          "blocked path (a lesion, a bend the tracker cannot take) or be displaced; check the tract figure"))
    cut = gyrus_parts_cut(gyrus)
    leg_and_hand_mm = dict((name, hi) for name, _, hi in GYRUS_PARTS_MNI_X)["middle"]
    face_only = [f"{side} {share * 100:.0f} % of {total}" for side, share, total in
                 _leg_and_hand_shares(ends, cut) if n[side] >= minimum and share < FACE_ONLY_SHARE]
    if face_only:
        flags.append(flag("cst_face_area_only",
                          f"streamlines ending in the leg area or the hand knob (MNI |x| < {leg_and_hand_mm:g} mm): "
                          f"{', '.join(face_only)}; "
                          "the rest end in the face area. Most CST fibres start in the leg and hand areas, which the "
                          "image holds: the tract found is probably not the CST's main body (the tracker may have "
                          "left it); check the tract figure"))
    cov = register.get("coverage") or {}
    partial = partial_levels(cov.get("fractions"))
    outside = [f"missing levels: {describe(cov['missing'])}"] if cov.get("missing") else []
    outside += [f"partly outside the image: {describe_partial(partial)}"] if partial else []
    outside += [f"the side of the field of view cuts {describe_cut(cut)}"] if cut else []
    if outside:
        flags.append(flag("fov_truncated", "the image does not cover the CST's whole extent; " + "; ".join(outside)))
    grad = model.get("gradient_check") or {}
    if grad.get("applied"):
        flags.append(flag("gradient_table_fixed", f"gradient table replaced by '{grad['applied']}' "
                                                  f"(streamlines {grad.get('ratio', 0):.2f}x longer than with the "
                                                  "given b-vectors)"))
    elif grad.get("suspect"):
        flags.append(flag("gradient_table_suspect", f"the b-vectors look wrong: '{grad['best']}' gives "
                                                    f"{grad.get('ratio', 0):.2f}x longer streamlines than the given "
                                                    "table; check the .bvec (or use --option gradient_check=fix)"))
    q = register.get("quality")
    if isinstance(q, (int, float)) and np.isfinite(q) and q < MIN_REGISTRATION_R:
        flags.append(flag("registration_poor", f"template registration quality r = {q:.2f} "
                                               f"(< {MIN_REGISTRATION_R}): check the registration figure"))
    rival = ambiguous_placement(register.get("affine_start_mi"))
    if rival:
        flags.append(flag("registration_ambiguous",
                          f"another template placement {rival[0]:.1f} mm away (median over the brain) fits almost as well "
                          f"(mutual information {rival[1]:.3f} against {rival[2]:.3f}): the image holds too little below "
                          "to fix the vertical placement, so the brainstem ROI, the lowest level reported and the MNI "
                          "levels of the profiles may be off by that much; check the registration figure"))
    n_dirs = ingest.get("n_directions")
    if isinstance(n_dirs, int) and n_dirs < FEW_DIRECTIONS:
        flags.append(flag("few_directions", f"{n_dirs} diffusion directions (< {FEW_DIRECTIONS}): fibre "
                                            "crossings cannot be resolved, the CST may be incomplete"))
    matter = [w for w in ingest.get("dcm2niix_warnings") or []
              if any(k in w.lower() for k in CONVERSION_WARNINGS_THAT_MATTER)]
    if matter:
        flags.append(flag("dicom_conversion", "dcm2niix: " + " | ".join(matter[:3])
                          + (f" (+{len(matter) - 3} more in the session log)" if len(matter) > 3 else "")))
    moved = ingest.get("motion") or {}
    voxel = min(ingest.get("voxel_mm") or [0.0])
    if voxel and moved.get("max_displacement_mm", 0.0) > voxel:
        flags.append(flag("head_motion", f"the head moved up to {moved['max_displacement_mm']:.1f} mm "
                                         f"({moved['max_rotation_deg']:.1f} deg) between volumes; "
                                         + ("corrected" if moved.get("corrected") else
                                            "not corrected (motion_correction=auto or rigid corrects it)")))
    snr = model.get("snr")
    if isinstance(snr, (int, float)) and np.isfinite(snr) and snr < MIN_SNR:
        flags.append(flag("low_snr", f"white-matter b0 SNR about {snr:.1f} (< {MIN_SNR:g}): FA is biased upwards"))
    return flags


def ambiguous_placement(starts: Any) -> tuple[float, float, float] | None:
    """(mm away, its MI, the MI taken) of the farthest affine optimum that fits within
    :data:`AMBIGUOUS_MI` of the placement taken and lies :data:`AMBIGUOUS_MM` or more from it;
    None when there is none. ``starts``: the register step's ``affine_start_mi`` ([start dz, MI,
    mm from the placement taken] per start; only slabs have more than one)."""
    try:
        ends = [(float(dz), float(mi), float(mm)) for dz, mi, mm in starts or []]
    except (TypeError, ValueError):
        return None  # a record from before the distances were kept
    taken = [mi for _, mi, mm in ends if mm == 0.0]
    if not taken:
        return None
    best = max(taken)
    rivals = [(mm, mi) for _, mi, mm in ends if mm >= AMBIGUOUS_MM and mi >= best - AMBIGUOUS_MI]
    if not rivals:
        return None
    mm, mi = max(rivals)
    return mm, mi, best


def failing(flags: Iterable[Mapping[str, str]], qc_fail: Any) -> list[Mapping[str, str]]:
    """The flags the ``qc_fail`` option turns into a failure."""
    codes = set(parse_codes(qc_fail))
    return [f for f in flags if f["code"] in codes]
