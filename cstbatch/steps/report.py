"""Per-session report: the input every reporter plugin receives, and the built-in HTML report.

``SessionReportInput`` is the contract for report plugins: paths of everything the session
produced (in the derivative dataset) plus the parsed metrics, so a reporter never needs to
know the folder layout.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cstbatch.outputs.layout import TENSOR_PARAMS
from cstbatch.outputs.records import read_record
from cstbatch.study.options import STEPS, option_value


@dataclass
class SessionReportInput:
    """Everything a report shows. Paths are absolute; images are NIfTI on the DWI grid.

    ``metrics``: the ``metrics`` object of metrics.json (per side: counts, volume, length,
    fa/md/rd/ad means/std, ``profiles`` with ``profile_nodes`` values brainstem → cortex,
    ``regions``; plus ``laterality``). ``records``: step name → step record (status,
    durations, implementation, info such as registration quality and streamline counts).
    """

    key: str
    subject: str
    session: str | None
    options: dict[str, Any]
    fa: Path
    maps: dict[str, Path]
    mask: Path
    dwi: Path
    cst_left: Path
    cst_right: Path
    rois: dict[str, Path]
    registration_qc: Path
    metrics_json: Path
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    records: dict[str, dict] = field(default_factory=dict)
    #: metrics.json's ``qc_flags`` ({"code", "message"}, see ``cstbatch.steps.qc``)
    pipeline_qc: list = field(default_factory=list)

    @classmethod
    def from_layout(cls, spec, layout, options) -> "SessionReportInput":
        data = json.loads(layout.metrics_json.read_text())
        return cls(
            key=spec.key, subject=spec.subject_id, session=spec.session_id, options=dict(options),
            fa=layout.tensor_map("fa"), maps={p: layout.tensor_map(p) for p in TENSOR_PARAMS},
            mask=layout.mask, dwi=layout.analysis_dwi(options), cst_left=layout.cst("left"), cst_right=layout.cst("right"),
            rois={"brainstem": layout.roi("brainstem"), "motor_left": layout.roi("motorL"),
                  "motor_right": layout.roi("motorR")},
            registration_qc=layout.registration_qc, metrics_json=layout.metrics_json,
            metrics=data.get("metrics", {}), provenance=data.get("provenance", {}),
            records={s: r for s in STEPS if (r := read_record(layout.record(s))) is not None},
            pipeline_qc=list(data.get("qc_flags") or []),
        )


# =======================================================================================
# Built-in HTML (and PDF) report
# =======================================================================================
#: QC thresholds (heuristics for flags, not normative values).
QC_MIN_STREAMLINES = 10
QC_MIN_REGISTRATION_R = 0.35  # = cstbatch.steps.qc.MIN_REGISTRATION_R (measured there)
#: Relative left–right profile difference worth a sentence in the summary.
PROFILE_DIFF_NOTE = 0.10
#: below this share of a found side's streamlines ending in the lateral (face) part of the
#: precentral gyrus, the summary says the tract's numbers describe its medial and middle parts
LATERAL_ENDS_NOTE = 0.02
#: Half-thickness (mm) of the slab of tract voxels projected onto each FA slice.
OVERLAY_SLAB_MM = 4.0
#: At most this many bytes of DWI volumes are averaged for the brain-mask figure.
DWI_MEAN_BYTES = 256 * 1024 * 1024
SIDES = ("left", "right")
METRIC_LABELS = {
    "streamline_count": "Streamline count", "volume_mm3": "Volume (mm³)", "mean_length_mm": "Mean length (mm)",
    "fa_mean": "FA", "md_mean": "MD", "rd_mean": "RD", "ad_mean": "AD",
}
DIFFUSIVITIES = ("md", "rd", "ad")
DISCLAIMER = ("Automated research output of cstbatch. Not a diagnosis: check the figures and the quality-control "
              "section before interpreting any number.")


def load_streamlines(path: Path) -> list:
    """Streamlines of a ``.trk`` in RAS+ mm ([] when the file is missing or unreadable)."""
    import nibabel as nib
    import numpy as np

    try:
        return [np.asarray(s, np.float64) for s in nib.streamlines.load(str(path)).streamlines]
    except (OSError, ValueError, nib.streamlines.DataError, nib.streamlines.HeaderError):
        return []


def cst_voxel_masks(streamlines: dict[str, list], ref_img) -> dict[str, Any]:
    """Per side, the bool mask of voxels of ``ref_img``'s grid visited by the side's streamlines.

    Streamlines are RAS+ mm; they are mapped to voxels with the inverse of ``ref_img.affine``
    (``cstbatch.steps.metrics.visited_voxel_mask``), so the masks are right for any voxel order.
    """
    from cstbatch.steps.metrics import visited_voxel_mask

    return {side: visited_voxel_mask(sl, ref_img.shape[:3], ref_img.affine) for side, sl in streamlines.items()}


def _num(value):
    from cstbatch.outputs.figures import to_float

    return to_float(value)


def _side(metrics: dict, side: str) -> dict:
    return metrics.get(side) or {}


def _ends_shares(m: dict) -> dict[str, float] | None:
    """Share of a side's streamlines ending in each part of the precentral gyrus (None: unknown)."""
    ends = m.get("cortical_ends") if m.get("found") is not False else None
    total = sum(ends.values()) if ends else 0
    return {k: v / total for k, v in ends.items()} if total else None


def _ends_sentence(metrics: dict) -> str | None:
    """Where on the precentral gyrus the tracts end, and a caveat when the face area is missed."""
    shares = {side: _ends_shares(_side(metrics, side)) for side in SIDES}
    known = {side: s for side, s in shares.items() if s}
    if not known:
        return None
    parts = "; ".join(f"{side} {s['medial'] * 100:.0f} / {s['middle'] * 100:.0f} / {s['lateral'] * 100:.0f}%"
                      for side, s in known.items())
    out = (f"Where the streamlines end on the precentral gyrus (medial leg area / middle hand knob / lateral "
           f"face area): {parts}.")
    from cstbatch.steps.coverage import GYRUS_PART_LABELS, gyrus_parts_cut

    cut = gyrus_parts_cut(metrics.get("gyrus_coverage"))
    if cut:
        out += (" The image holds only " + ", ".join(f"{share * 100:.0f} % of the {side} {GYRUS_PART_LABELS[name]}"
                                                     for side, name, share in cut)
                + ": the field of view ends before the side of the brain, so no tract can reach what lies "
                  "outside it, and these shares say nothing about the anatomy there.")
    face_cut = {side for side, name, _ in cut if name == "lateral"}
    missed = [side for side, s in known.items() if s["lateral"] < LATERAL_ENDS_NOTE and side not in face_cut]
    if missed:
        out += (f" Almost none of the {' and '.join(missed)} CST reaches the face area: tractography on "
                "clinical scans rarely follows the fan's lateral fibres through the crossings of the corona "
                "radiata, so these numbers describe the tract's leg and hand fibres.")
    return out


#: the tract regions of metrics.json, as the report names them: in the table, in a sentence
REGION_NAMES = {"pontine": ("pons", "the pons"), "internal_capsule": ("internal capsule", "the internal capsule"),
                "precentral": ("precentral", "the precentral white matter")}


def _region_fa(metrics: dict) -> list[tuple[str, float | None, float | None, float | None]]:
    """(region key, left FA, right FA, laterality index) for each region either side measured."""
    from cstbatch.steps.metrics import laterality_index

    out = []
    for r in REGION_NAMES:
        lv, rv = (((_side(metrics, s).get("regions") or {}).get(r) or {}).get("fa") for s in SIDES)
        if lv is not None or rv is not None:
            out.append((r, lv, rv, laterality_index(lv, rv)))
    return out


def _region_sentence(metrics: dict) -> str | None:
    """The tract region (pons, internal capsule, precentral) where left and right FA differ most.

    Why: a capsular lesion lowers one side's FA over a few centimetres; the whole-tract mean can
    miss it when the two tracts' shapes differ more (on the atlas phantom the mean pointed at the
    lesioned side in 3 of 5, the capsule in 5 of 5), and the largest node-wise difference can
    sit elsewhere, in the scatter of the fan.
    """
    from cstbatch.outputs.figures import fmt

    measured = [row for row in _region_fa(metrics) if row[3] is not None]
    if not measured:
        return None
    r, lv, rv, li = max(measured, key=lambda row: abs(row[3]))  # the first region on a tie
    return (f"By tract region, left and right FA differ most in {REGION_NAMES[r][1]}: left {fmt(lv)}, "
            f"right {fmt(rv)} (laterality index {fmt(li, 3, signed=True)}; see FA by tract region).")


def _pct_sentence(label: str, left, right, li, unit_scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
    """"Left CST FA is 12% lower than right CST FA (0.412 vs 0.468; laterality index −0.064)."""
    from cstbatch.outputs.figures import fmt

    lv, rv = _num(left), _num(right)
    if lv != lv or rv != rv:  # NaN
        missing = " and ".join(s for s, v in (("left", lv), ("right", rv)) if v != v)
        return f"{label} cannot be compared: no value for the {missing} CST."
    vals = f"{fmt(lv, digits, unit_scale)} vs {fmt(rv, digits, unit_scale)}" + (f" {unit}" if unit else "")
    li_txt = f"; laterality index {fmt(li, 3, signed=True)}" if li is not None else ""
    if rv == 0:
        return f"{label}: left {fmt(lv, digits, unit_scale)}, right {fmt(rv, digits, unit_scale)}{li_txt}."
    pct = (lv - rv) / abs(rv) * 100
    if abs(pct) < 1:
        return f"Left and right CST {label} are within 1% of each other ({vals}{li_txt})."
    return (f"Left CST {label} is {abs(pct):.0f}% {'lower' if pct < 0 else 'higher'} than right CST {label} "
            f"({vals}{li_txt}).")


def _md_scale(values) -> tuple[float, str]:
    """Diffusivities in mm²/s (~1e-3) are shown ×10³; values already ~1 are shown as they are."""
    import numpy as np

    v = np.array([_num(x) for x in values], float)
    v = v[np.isfinite(v)]
    if v.size and np.nanmax(np.abs(v)) < 0.1:
        return 1e3, "×10⁻³ mm²/s"
    return 1.0, ""


def _profile(metrics: dict, side: str, name: str, std: bool = False):
    import numpy as np

    prof = (_side(metrics, side).get("profiles_std" if std else "profiles") or {}).get(name)
    if not prof:
        return None
    return np.array([_num(v) for v in prof], float)


#: Share of the profile's nodes left out at each end before looking for a focal difference: the
#: ends are partial-volume dominated (cortex at the top; at the bottom the lowest brainstem level
#: the field of view or the ROI cut reaches, where few streamlines remain and FA scatters).
PROFILE_END_SHARE = 0.10
#: Nodes averaged (a centred running mean) before the comparison: one noisy node is not a finding.
PROFILE_SMOOTH_NODES = 5


def profile_difference(metrics: dict, name: str = "fa") -> dict | None:
    """Where the left and right profiles differ most, relative to the right side.

    Why not simply the largest node difference: on the Philips scan that was a single node in
    the lower medulla (8 % along the tract, left FA 27 % higher) where the right profile dips
    for three nodes, with a spread across streamlines as large as the difference. The profiles
    are smoothed over :data:`PROFILE_SMOOTH_NODES` nodes and their outer
    :data:`PROFILE_END_SHARE` left out; ``effect`` is the difference in units of the two
    sides' pooled spread across streamlines there, so a reader can tell a focal change from
    scatter.
    """
    import numpy as np

    left, right = _profile(metrics, "left", name), _profile(metrics, "right", name)
    if left is None or right is None or len(left) != len(right) or len(left) < 5:
        return None
    n = len(left)
    cut = max(1, int(round(n * PROFILE_END_SHARE)))
    inner = np.zeros(n, bool)
    inner[cut:n - cut] = True

    def smooth(v):  # running mean over the inner nodes only: the ends do not leak in
        w = (inner & np.isfinite(v)).astype(float)
        kernel = np.ones(min(PROFILE_SMOOTH_NODES, n))
        num = np.convolve(np.where(w > 0, v, 0.0), kernel, mode="same")
        den = np.convolve(w, kernel, mode="same")
        with np.errstate(all="ignore"):
            return np.where(inner & (den > 0), num / den, np.nan)

    ls, rs = smooth(left), smooth(right)
    with np.errstate(all="ignore"):
        rel = (ls - rs) / np.abs(rs)
    rel[~np.isfinite(rel)] = np.nan
    if not np.isfinite(rel).any():
        return None
    i = int(np.nanargmax(np.abs(rel)))
    levels = _node_levels(metrics, n)
    out = {"node": i, "nodes": n, "fraction": i / (n - 1), "relative": float(rel[i]),
           "left": float(ls[i]), "right": float(rs[i]), "effect": None,
           "z_mni": float(levels[i]) if levels is not None and np.isfinite(levels[i]) else None}
    sd_l, sd_r = _profile(metrics, "left", name, std=True), _profile(metrics, "right", name, std=True)
    if sd_l is not None and sd_r is not None and len(sd_l) == n and len(sd_r) == n:
        pooled = float(np.sqrt((sd_l[i] ** 2 + sd_r[i] ** 2) / 2.0))
        if np.isfinite(pooled) and pooled > 0:
            out["effect"] = float((ls[i] - rs[i]) / pooled)
    return out


def summary_sentences(metrics: dict) -> list[str]:
    """Plain-language findings: FA and MD left vs right, size, and the largest focal FA difference."""
    from cstbatch.outputs.figures import fmt

    lat = metrics.get("laterality") or {}
    L, R = _side(metrics, "left"), _side(metrics, "right")
    out = [_pct_sentence("FA", L.get("fa_mean"), R.get("fa_mean"), lat.get("fa_mean"))]
    scale, unit = _md_scale([L.get("md_mean"), R.get("md_mean")])
    out.append(_pct_sentence("MD", L.get("md_mean"), R.get("md_mean"), lat.get("md_mean"), scale, unit=unit))
    missing = [side for side, m in (("left", L), ("right", R)) if m.get("found") is False]
    if missing:  # a handful of streamlines is no tract: say so instead of giving its size
        out.append(" ".join(f"The {side} CST was not found ({_side(metrics, side).get('streamline_count', 0) or 0} "
                            "streamlines; see the quality-control flags)." for side in missing))
        found = [(side, m) for side, m in (("left", L), ("right", R)) if side not in missing]
        out += [f"The {side} CST has {m.get('streamline_count', 0) or 0} streamlines "
                f"({fmt(m.get('volume_mm3'), 0)} mm³)." for side, m in found]
    else:
        out.append(f"The left CST has {L.get('streamline_count', 0) or 0} streamlines "
                   f"({fmt(L.get('volume_mm3'), 0)} mm³), the right CST {R.get('streamline_count', 0) or 0} "
                   f"({fmt(R.get('volume_mm3'), 0)} mm³).")
    ends = _ends_sentence(metrics)
    if ends:
        out.append(ends)
    region = _region_sentence(metrics)
    if region:
        out.append(region)
    d = profile_difference(metrics, "fa")
    if d is not None:
        where = f"about {d['fraction'] * 100:.0f}% of the way from the brainstem to the cortex" + (
            "" if d.get("z_mni") is None else f" (MNI z {d['z_mni']:.0f})")
        if abs(d["relative"]) >= PROFILE_DIFF_NOTE:
            word = "lower" if d["relative"] < 0 else "higher"
            e = None if d["effect"] is None else abs(d["effect"])
            spread = ("" if e is None else
                      f"; {e:.1f} times the spread across streamlines there" if e >= 1.0 else
                      f"; only {e:.1f} times the spread across streamlines there, so possibly scatter")
            out.append(f"Along the tract, left and right FA differ most {where}, where left CST FA is "
                       f"{abs(d['relative']) * 100:.0f}% {word} than right (left {fmt(d['left'])}, "
                       f"right {fmt(d['right'])}{spread}); see the tract profiles.")
        else:
            out.append(f"No focal left–right FA difference above {PROFILE_DIFF_NOTE * 100:.0f}% along the tract "
                       "profiles.")
    out.append("Laterality index (LI) = (left − right) / (left + right): negative when the left value is lower, "
               "0 when symmetric.")
    return out


def qc_flags(session: SessionReportInput) -> list[str]:
    """Automatic QC warnings (empty when nothing looks wrong)."""
    from cstbatch.outputs.figures import fmt

    flags = [f"[{f.get('code')}] {f.get('message')}" for f in session.pipeline_qc]
    codes = {f.get("code") for f in session.pipeline_qc}
    reg = (session.records.get("register") or {}).get("info") or {}
    q = _num(reg.get("quality"))
    if q == q and q < QC_MIN_REGISTRATION_R and "registration_poor" not in codes:
        flags.append(f"Registration quality is low (r = {fmt(q, 2)} < {QC_MIN_REGISTRATION_R}): check the registration "
                     "figure; the CST selection may be wrong.")
    for side in SIDES if "cst_not_found" not in codes else ():
        count = _num(_side(session.metrics, side).get("streamline_count"))
        n = int(count) if count == count else 0
        if n == 0:
            flags.append(f"No {side} CST streamlines were found: {side}-side metrics are unavailable.")
        elif n < QC_MIN_STREAMLINES:
            flags.append(f"Only {n} {side} CST streamlines (< {QC_MIN_STREAMLINES}): {side}-side metrics are "
                         "unreliable.")
    for step, rec in session.records.items():
        if rec.get("status") not in (None, "success"):
            flags.append(f"Step {step} is {rec.get('status')}.")
    if not Path(session.registration_qc).exists():
        flags.append("The registration QC figure is missing.")
    return flags


# --------------------------------------------------------------------------- figures
def _views_for_tracts(fa, masks, affine, convention):
    """Axial (mid-CST, about the internal capsule), coronal (most CST voxels), sagittal per side."""
    import numpy as np

    from cstbatch.outputs.figures import make_view, world_centroid

    union = masks["left"] | masks["right"]
    ref = union if union.any() else (fa > 0.1 if (fa > 0.1).any() else np.ones(fa.shape, bool))
    zs = np.nonzero(ref.any(axis=(0, 1)))[0]
    zlo, zhi = int(zs.min()), int(zs.max())
    target = zlo + 0.5 * (zhi - zlo)
    band = [z for z in range(zlo, zhi + 1) if abs(z - target) <= max(1.0, 0.12 * (zhi - zlo))]
    both = lambda z: min(masks["left"][:, :, z].sum(), masks["right"][:, :, z].sum())  # noqa: E731
    z = max(band, key=lambda k: (both(k), -abs(k - target)))
    per_y = ref.sum(axis=(0, 2))
    y = int(np.argmax(per_y))
    views = [make_view("axial, mid-CST (internal capsule level)", 2, z, affine, convention),
             make_view("coronal through the CSTs", 1, y, affine, convention)]
    inv = np.linalg.inv(affine)
    for side in SIDES:
        c = world_centroid(masks[side], affine)
        if c is None:
            continue
        x = int(np.clip(np.rint((inv[:3, :3] @ c + inv[:3, 3])[0]), 0, fa.shape[0] - 1))
        views.append(make_view(f"sagittal through the {side} CST", 0, x, affine, convention))
    return views


def tract_overlay_figure(fa_img, masks: dict, convention: str = "radiological"):
    """FA slices with the left (red) and right (blue) CST voxels; every slice labelled in world letters.

    ``fa_img`` and ``masks`` must be on the same grid (RAS+-reoriented: see ``report_html``).
    """
    import numpy as np
    from matplotlib.patches import Patch

    from cstbatch.outputs.figures import SIDE_COLORS, draw_slice, fmt, new_figure

    fa = np.nan_to_num(np.asarray(fa_img.dataobj, np.float32))
    affine = fa_img.affine
    zooms = fa_img.header.get_zooms()[:3]
    views = _views_for_tracts(fa, masks, affine, convention)
    slab = max(0, int(round(OVERLAY_SLAB_MM / float(min(zooms)))))
    fig = new_figure(2.5 * len(views), 3.0)
    axes = fig.subplots(1, len(views), squeeze=False)[0]
    for ax, view in zip(axes, views):
        axis, pos = view.world_position(affine, fa.shape)
        view = type(view)(f"{view.title}\n{axis} = {fmt(pos, 0)} mm", view.axis, view.index, view.hflip, view.vflip)
        draw_slice(ax, view, fa, affine, zooms, vmin=0, vmax=0.8, slab=slab,
                   overlays=[(masks["right"], SIDE_COLORS["right"]), (masks["left"], SIDE_COLORS["left"])])
    fig.legend(handles=[Patch(color=SIDE_COLORS["left"], label="left CST"),
                        Patch(color=SIDE_COLORS["right"], label="right CST")],
               loc="lower center", ncol=2, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.84, bottom=0.1, wspace=0.05)
    return fig


def _node_levels(metrics: dict, n: int | None = None):
    """Per profile node, the MNI z of its level (``profile_z_mni``: the mean over the sides that
    have one, of ``n`` nodes when given; NaN where neither has), or None when no side has one or
    the sides' lengths differ."""
    import warnings

    import numpy as np

    levels = [_side(metrics, side).get("profile_z_mni") for side in SIDES]
    levels = [np.array([np.nan if v is None else v for v in z], float) for z in levels
              if z and (n is None or len(z) == n)]
    if not levels or len({len(z) for z in levels}) != 1:
        return None
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a node neither side has: NaN
        return np.nanmean(levels, axis=0)


def _profile_start(metrics: dict) -> float | None:
    """The MNI z both sides' profiles start at, when the metrics clipped them to one level."""
    start = {_side(metrics, side).get("profile_start_z_mni") for side in SIDES}
    return start.pop() if len(start) == 1 and None not in start else None


def _mark_capsule(ax, metrics: dict) -> None:
    """Shade the stretch of the profile that lies in the internal capsule's MNI z band, when the
    profiles start at one level (so their lower nodes are one level in every streamline): where
    the table's capsule FA comes from, and where capsular lesions show."""
    import numpy as np

    from cstbatch.steps.metrics import REGIONS_MNI_Z

    z = _node_levels(metrics) if _profile_start(metrics) is not None else None
    if z is None:
        return
    lo, hi = REGIONS_MNI_Z["internal_capsule"]
    x = np.linspace(0, 100, len(z))[(z >= lo) & (z <= hi)]
    if len(x):
        ax.axvspan(x.min(), x.max(), color="0.88", lw=0, zorder=0)
        ax.text((x.min() + x.max()) / 2, 0.02, "internal capsule", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7, color="0.35")


def profile_figure(metrics: dict):
    """FA and MD along the tract (brainstem → cortex), left vs right, mean ± std shading."""
    import numpy as np

    from cstbatch.outputs.figures import SIDE_COLORS, new_figure

    fig = new_figure(8.4, 2.9)
    axes = fig.subplots(1, 2)
    for ax, name in zip(axes, ("fa", "md")):
        scale, unit = (1.0, "") if name == "fa" else _md_scale(
            [v for s in SIDES for v in (_profile(metrics, s, name) if _profile(metrics, s, name) is not None else [])])
        drawn = False
        for side in SIDES:
            prof, std = _profile(metrics, side, name), _profile(metrics, side, name, std=True)
            if prof is None:
                continue
            x = np.linspace(0, 100, len(prof))
            ax.plot(x, prof * scale, color=SIDE_COLORS[side], lw=1.6, label=f"{side} CST")
            if std is not None and len(std) == len(prof):
                ax.fill_between(x, (prof - std) * scale, (prof + std) * scale, color=SIDE_COLORS[side],
                                alpha=0.18, lw=0)
            drawn = True
        ax.set_xlim(0, 100)
        _mark_capsule(ax, metrics)
        start = _profile_start(metrics)
        ax.set_xlabel("position along the tract (%): brainstem"
                      + ("" if start is None else f" (MNI z {start:.0f})") + " → cortex")
        ax.set_ylabel(f"{name.upper()}" + (f" ({unit})" if unit else ""))
        ax.set_title(f"{name.upper()} profile (mean ± std over streamlines)")
        ax.grid(alpha=0.3, lw=0.5)
        if drawn:
            ax.legend(loc="best", frameon=False)
        else:
            ax.text(0.5, 0.5, "no profile", transform=ax.transAxes, ha="center", va="center")
    fig.subplots_adjust(left=0.07, right=0.99, top=0.9, bottom=0.17, wspace=0.22)
    return fig


def laterality_figure(laterality: dict):
    """Horizontal bars of the laterality index of each metric (n/a where undefined)."""
    import numpy as np

    from cstbatch.outputs.figures import SIDE_COLORS, new_figure

    keys = list(laterality)
    fig = new_figure(6.0, 0.45 + 0.32 * max(len(keys), 1) + 0.55)
    ax = fig.add_subplot(1, 1, 1)
    vals = np.array([_num(laterality[k]) for k in keys], float)
    lim = max(0.1, float(np.nanmax(np.abs(vals))) * 1.25 if np.isfinite(vals).any() else 0.1)
    ypos = np.arange(len(keys))[::-1]
    for y, k, v in zip(ypos, keys, vals):
        if np.isfinite(v):
            ax.barh(y, v, color=SIDE_COLORS["left"] if v > 0 else SIDE_COLORS["right"], height=0.6)
            ax.text(v + (0.02 * lim if v >= 0 else -0.02 * lim), y, f"{v:+.3f}".replace("-", "−"),
                    va="center", ha="left" if v >= 0 else "right", fontsize=7)
        else:
            ax.text(0, y, "n/a", va="center", ha="center", fontsize=7, color="#666")
    ax.set_yticks(ypos)
    ax.set_yticklabels([METRIC_LABELS.get(k, k) for k in keys])
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlim(-lim, lim)
    ax.set_xlabel("laterality index (L − R)/(L + R)    ← right larger | left larger →")
    ax.grid(axis="x", alpha=0.3, lw=0.5)
    ax.set_title("Laterality per metric")
    fig.subplots_adjust(left=0.22, right=0.97, top=1 - 0.3 / fig.get_figheight(),
                        bottom=0.5 / fig.get_figheight())
    return fig


def mask_qc_figure(background_img, mask, convention: str = "radiological", title: str = "mean DWI"):
    """Brain-mask outline (yellow) on the mean DWI: three axial, one coronal and one sagittal slice."""
    import numpy as np

    from cstbatch.outputs.figures import draw_slice, make_view, new_figure, robust_range

    bg = np.nan_to_num(np.asarray(background_img.dataobj, np.float32))
    affine, zooms = background_img.affine, background_img.header.get_zooms()[:3]
    m = np.asarray(mask, bool)
    ref = m if m.any() else np.ones(bg.shape, bool)
    ijk = np.argwhere(ref)
    lo, hi = ijk.min(0), ijk.max(0)
    mid = (lo + hi) // 2
    views = [make_view(f"axial {p}%", 2, int(lo[2] + (hi[2] - lo[2]) * p / 100), affine, convention)
             for p in (25, 50, 75)]
    views += [make_view("coronal", 1, int(mid[1]), affine, convention),
              make_view("sagittal", 0, int(mid[0]), affine, convention)]
    vmin, vmax = robust_range(bg[ref])
    fig = new_figure(2.0 * len(views), 2.5)
    axes = fig.subplots(1, len(views))
    for ax, view in zip(axes, views):
        draw_slice(ax, view, bg, affine, zooms, vmin=vmin, vmax=vmax, contours=[(m, "yellow")])
    fig.suptitle(f"Brain mask (yellow outline) on the {title}")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.8, bottom=0.02, wspace=0.05)
    return fig


# --------------------------------------------------------------------------- document
def _records_table(records: dict) -> list[list]:
    from cstbatch.study.options import STEPS

    rows = []
    for step in STEPS:
        rec = records.get(step)
        if rec is None:
            continue
        impl = rec.get("implementation") or {}
        name = f"{impl.get('name', '')} (v{impl.get('version')})" if impl.get("name") else ""
        rows.append([step, rec.get("status", "n/a"), name])
    return rows


def _key_table(metrics: dict) -> list[list]:
    from cstbatch.outputs.figures import fmt

    L, R, lat = _side(metrics, "left"), _side(metrics, "right"), metrics.get("laterality") or {}
    scale, unit = _md_scale([m.get(f"{d}_mean") for m in (L, R) for d in DIFFUSIVITIES])
    rows = [["Streamlines", fmt(L.get("streamline_count"), 0), fmt(R.get("streamline_count"), 0),
             fmt(lat.get("streamline_count"), 3, signed=True)],
            ["Volume (mm³)", fmt(L.get("volume_mm3"), 0), fmt(R.get("volume_mm3"), 0),
             fmt(lat.get("volume_mm3"), 3, signed=True)],
            ["Mean length (mm)", fmt(L.get("mean_length_mm"), 1), fmt(R.get("mean_length_mm"), 1),
             fmt(lat.get("mean_length_mm"), 3, signed=True)]]
    shares = [_ends_shares(m) for m in (L, R)]
    if any(shares):
        rows.append(["Ends on the gyrus, medial / middle / lateral (%)"]
                    + [" / ".join(f"{s[k] * 100:.0f}" for k in ("medial", "middle", "lateral")) if s else "n/a"
                       for s in shares] + [""])
    for name in ("fa",) + DIFFUSIVITIES:
        sc, label = (1.0, "FA") if name == "fa" else (scale, f"{name.upper()}" + (f" ({unit})" if unit else ""))
        cell = lambda m: (f"{fmt(m.get(f'{name}_mean'), 3, sc)} ± {fmt(m.get(f'{name}_std'), 3, sc)}"  # noqa: E731
                          if m.get(f"{name}_mean") is not None else "n/a")
        rows.append([label, cell(L), cell(R), fmt(lat.get(f"{name}_mean"), 3, signed=True)])
    return rows


def _regions_table(metrics: dict) -> list[list]:
    from cstbatch.outputs.figures import fmt

    rows = {r: [REGION_NAMES[r][0], fmt(lv), fmt(rv), fmt(li, 3, signed=True)] for r, lv, rv, li in _region_fa(metrics)}
    for r in metrics.get("regions_not_covered") or ():
        rows[r] = [REGION_NAMES[r][0], "not in the image", "not in the image", ""]
    return [rows[r] for r in REGION_NAMES if r in rows]


def _flat_options(options: dict) -> list[list]:
    return [[k, json.dumps(v, sort_keys=True, default=str) if not isinstance(v, str) else v]
            for k, v in sorted(options.items())]


def _load_canonical(session: SessionReportInput):
    """FA, brain mask and mean DWI reoriented to RAS+ (the mean DWI falls back to FA)."""
    import nibabel as nib
    import numpy as np

    from cstbatch.outputs.figures import canonical

    fa_img = canonical(nib.load(str(session.fa)))
    try:
        mask_img = canonical(nib.load(str(session.mask)))
        mask = np.asarray(mask_img.dataobj) > 0
        if mask.shape != fa_img.shape[:3]:
            mask = np.nan_to_num(np.asarray(fa_img.dataobj)) > 0
    except (OSError, ValueError, FileNotFoundError, nib.filebasedimages.ImageFileError):
        mask = np.nan_to_num(np.asarray(fa_img.dataobj)) > 0
    bg, bg_name = fa_img, "FA map"
    try:
        dwi = nib.load(str(session.dwi))
        if len(dwi.shape) == 4:
            # mean of the first volumes only when the series is large (a gzip is read from its start)
            per_volume = int(np.prod(dwi.shape[:3])) * 4
            k = int(min(dwi.shape[3], max(1, DWI_MEAN_BYTES // max(per_volume, 1))))
            mean = np.asarray(dwi.dataobj[..., :k], np.float32).mean(axis=3)
            name = "mean DWI" if k == dwi.shape[3] else f"mean of the first {k} DWI volumes"
        else:
            mean, name = np.asarray(dwi.dataobj, np.float32), "DWI"
        mean_img = canonical(nib.Nifti1Image(np.nan_to_num(mean), dwi.affine))
        if mean_img.shape[:3] == fa_img.shape[:3]:
            bg, bg_name = mean_img, name
    except (OSError, ValueError, FileNotFoundError, nib.filebasedimages.ImageFileError):
        pass
    return fa_img, mask, bg, bg_name


def build_session_document(session: SessionReportInput, options: dict):
    """The report's content (blocks shared by the HTML and the PDF)."""
    from cstbatch._version import __version__
    from cstbatch.outputs.figures import (
        H1,
        H2,
        H3,
        UL,
        Document,
        Fig,
        P,
        Png,
        Table,
        fmt,
    )

    convention = str(option_value(options, "report_convention", null_is_default=True)).lower()
    if convention not in ("radiological", "neurological"):
        convention = "radiological"
    metrics, prov = session.metrics or {}, session.provenance or {}
    version = prov.get("cstbatch_version") or __version__
    fa_img, mask, bg, bg_name = _load_canonical(session)
    streamlines = {"left": load_streamlines(session.cst_left), "right": load_streamlines(session.cst_right)}
    masks = cst_voxel_masks(streamlines, fa_img)
    who = session.subject + (f" / {session.session}" if session.session else "")
    title = f"Corticospinal tract report — {who}"
    side_word = "right" if convention == "radiological" else "left"

    b = [H1(title),
         P(f"Subject {session.subject}" + (f", session {session.session}" if session.session else "")
           + f" (key {session.key}). Produced by cstbatch {version}.", css="meta")]
    if session.pipeline_qc:
        b.append(P(f"QC flags: {', '.join(str(f.get('code')) for f in session.pipeline_qc)} — this session's numbers "
                   "may describe no tract or a partial one; read the quality-control flags below first.", css="warn"))
    b.append(H2("Summary"))
    b += [P(s, css="summary") for s in summary_sentences(metrics)]
    flags = qc_flags(session)
    b.append(H3("Quality-control flags"))
    b.append(UL(flags, css="warn") if flags else P("No automatic QC flags.", css="ok"))
    b.append(Table(["", "Left CST", "Right CST", "Laterality index"], _key_table(metrics),
                   caption="Key numbers (mean ± std over streamlines)"))
    regions = _regions_table(metrics)
    if regions:
        b.append(Table(["Region", "Left FA", "Right FA", "Laterality index"], regions,
                       caption="FA by tract region"))

    b.append(H2("Corticospinal tracts on the FA map"))
    empty = [side for side in SIDES if not masks[side].any()]
    note = (f"No {' or '.join(empty)} CST streamlines to show. " if empty else "")
    b.append(Fig(tract_overlay_figure(fa_img, masks, convention),
                 note + "Voxels crossed by the left CST (red) and right CST (blue) streamlines, within "
                 f"±{OVERLAY_SLAB_MM:g} mm of each slice, on the FA map. {convention.capitalize()} convention: the "
                 f"subject's left is on the image's {side_word} in axial and coronal slices. The letters on each "
                 "edge (L/R, A/P, S/I) give the world direction from the image's orientation. Slice "
                 "positions (x, y, z) are in the image's own world coordinates (mm; the scanner's for data "
                 "straight from it), not MNI's."))
    b.append(H2("Tract profiles"))
    start = _profile_start(metrics)
    b.append(Fig(profile_figure(metrics),
                 "FA and MD sampled along each tract from the brainstem (0%) to the cortex (100%); lines: mean over "
                 "streamlines, shading: ± 1 standard deviation. "
                 + ("" if start is None else
                    f"Every streamline starts at MNI z {start:.0f}, the lowest level the extraction requires, so the "
                    "positions near the brainstem are one level in all of them; the brainstem below it is the pons "
                    "row of the 'FA by tract region' table. The grey band is where the profile runs through the "
                    "internal capsule (MNI z 0–18), where that table's capsule FA comes from. ")
                 + "A focal dip of FA (with a rise of MD) on one side only suggests a local lesion of that tract."))
    lat = metrics.get("laterality") or {}
    if lat:
        b.append(H2("Laterality"))
        b.append(Fig(laterality_figure(lat),
                     "Laterality index (L − R)/(L + R) per metric: bars to the left (blue) mean the right-side value "
                     "is larger, bars to the right (red) the left-side value is larger."))

    b.append(H2("Quality control"))
    b.append(Fig(mask_qc_figure(bg, mask, convention, bg_name),
                 f"Brain mask outline on the {bg_name}: the outline should follow the brain's edge."))
    qc_png = Path(session.registration_qc)
    if qc_png.exists():
        b.append(Png(qc_png.read_bytes(),
                     "Registration: the MNI template warped to the subject (red/orange outlines) and the brainstem "
                     "(yellow) and motor (cyan, magenta) regions used to select the CSTs, on the subject's FA."))
    else:
        b.append(P("Registration QC figure not available.", css="warn"))
    rec = session.records
    track_info = (rec.get("track") or {}).get("info") or {}
    reg_info = (rec.get("register") or {}).get("info") or {}
    L, R = _side(metrics, "left"), _side(metrics, "right")
    region = "CST corridor" if track_info.get("region") == "cst" else "whole brain"
    extraction = metrics.get("extraction") or {}
    counts = [[f"Tracked streamlines ({region})", fmt(track_info.get("streamlines"), 0)],
              ["Left CST streamlines", fmt(L.get("streamline_count"), 0)],
              ["Right CST streamlines", fmt(R.get("streamline_count"), 0)],
              ["Left CST voxels (report grid)", str(int(masks["left"].sum()))],
              ["Right CST voxels (report grid)", str(int(masks["right"].sum()))],
              ["Registration quality", fmt(reg_info.get("quality"), 3)
               + (f" ({reg_info['quality_metric']})" if reg_info.get("quality_metric") else "")]]
    if extraction.get("inferior_levels"):
        counts.append(["CST starts in (lowest levels used)", ", ".join(extraction["inferior_levels"]).replace("_", " ")
                       + (" — field of view truncated" if extraction.get("fov_truncated") else "")])
    if extraction.get("superior_end"):
        counts.append(["CST ends at", extraction["superior_end"]
                       + (" — the image stops under the vertex" if extraction.get("superior_end_at_image_top") else "")])
    if reg_info.get("atlas"):
        counts.append(["Atlas", f"{reg_info['atlas']} (v{reg_info.get('atlas_version', '?')})"])
    b.append(Table(["Quantity", "Value"], counts, caption="Streamlines and registration"))
    steps = _records_table(rec)
    if steps:
        # durations and memory stay in the step records / metrics.json: the report is
        # byte-identical between two runs of the same inputs and options
        b.append(Table(["Step", "Status", "Implementation"], steps,
                       caption="Processing steps (timings: metrics.json provenance)"))

    b.append(H2("Provenance"))
    libs = prov.get("libraries") or {}
    b.append(Table(["Software", "Version"], [["cstbatch", version]] + [[k, str(v)] for k, v in sorted(libs.items())],
                   caption="Versions"))
    impls = []
    for step, s in (prov.get("steps") or {}).items():
        impl = (s or {}).get("implementation") or {}
        impls.append([step, impl.get("name", "n/a"), str(impl.get("version", "n/a")), impl.get("source", "n/a")])
    if impls:
        b.append(Table(["Step", "Implementation", "Version", "Source"], impls, caption="Implementations"))
    opts = prov.get("options") or session.options or {}
    if opts:
        b.append(Table(["Option", "Value"], _flat_options(opts), caption="Options"))
    inputs = prov.get("input_sha256") or {}
    if inputs:
        b.append(Table(["Input", "SHA-256"], [[k, str(v)] for k, v in sorted(inputs.items())],
                       caption="Input files"))
    if prov.get("origin"):
        b.append(P(f"Origin: {prov['origin']}", css="meta"))
    return Document(title=title, blocks=b, footer=f"{session.key} — cstbatch {version}. {DISCLAIMER}")


def report_html(session: SessionReportInput, out_dir: Path, options: dict) -> list[Path]:
    """Write ``<key>_report.html`` (self-contained) and, with ``generate_pdf``, ``<key>_report.pdf``.

    Deterministic: no dates; PNGs without software tags; the PDF without creation date. Without
    ``generate_pdf`` a PDF left by an earlier run is removed (it would not match the HTML).
    Option ``report_convention`` (``radiological``, default, or ``neurological``) sets how
    slices are displayed; letters on every slice name the world directions either way.
    """
    from cstbatch._version import __version__
    from cstbatch.atomic import write_text
    from cstbatch.outputs.figures import render_html, render_pdf, style

    out_dir = Path(out_dir)
    options = dict(session.options or {}, **(options or {}))
    written = []
    with style():
        doc = build_session_document(session, options)
        html_path = out_dir / f"{session.key}_report.html"
        write_text(html_path, render_html(doc))
        written.append(html_path)
        pdf_path = out_dir / f"{session.key}_report.pdf"
        if not options.get("generate_pdf"):
            if pdf_path.exists():  # from an earlier run with generate_pdf: no longer matches the HTML
                pdf_path.unlink()
        else:
            version = (session.provenance or {}).get("cstbatch_version") or __version__
            render_pdf(doc, pdf_path, {"Title": doc.title, "Subject": f"CST report {session.key}",
                                       "Creator": f"cstbatch {version}", "Producer": f"cstbatch {version}"})
            written.append(pdf_path)
    return written
