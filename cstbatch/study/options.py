"""The one documented options table, and how a session's effective options are built.

Effective options of a session = package defaults ← manifest root ``options`` ← the entry's
``options`` ← command line. Each option names the steps whose result it determines; a step's
up-to-date check covers exactly those options, so changing ``track_step_size`` reruns track
and what follows it, never ingest or denoise.

Options whose ``kind`` is set select a registered plugin implementation of that step kind by
name; their values are checked against the plugin registry at planning time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cstbatch.errors import OptionError

#: The per-session chain, in order. Each step's task depends on the previous one's record.
STEPS = ("ingest", "denoise", "mask", "model", "register", "track", "extract", "metrics", "report")

#: step -> option naming its plugin implementation (steps without one are built in).
STEP_SELECTOR: dict[str, tuple[str, str]] = {
    "denoise": ("denoise", "denoise_method"),
    "mask": ("mask", "mask_method"),
    "track": ("track", "track_method"),
    "register": ("atlas", "atlas"),
    "extract": ("extract", "extraction_method"),
    "report": ("report", "reporter"),
}


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    type: type | tuple[type, ...]
    steps: tuple[str, ...]
    help: str
    kind: str | None = None  # plugin kind this option selects, if any
    #: the only values a string option takes, checked when options are merged: a typo then fails
    #: the whole run at planning time with one line, instead of every session at its step
    choices: tuple[str, ...] = ()
    #: the interval a number must lie in, written as in mathematics: ``[0, 1]``, ``(0, 90]``,
    #: ``[1, )`` (no upper end). Checked with the types, so a negative step size or an FA
    #: threshold of 15 fails planning with one line instead of a tracker that silently finds nothing.
    bounds: str = ""

    def out_of_bounds(self, value) -> str | None:
        """Why ``value`` lies outside :attr:`bounds` (None when it is inside or not a number)."""
        if not self.bounds or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        low, high = (x.strip() for x in self.bounds[1:-1].split(","))
        if value != value:  # NaN: inside no interval
            return f"{value!r} is not a number in {self.bounds}"
        below = low and (value < float(low) or (self.bounds[0] == "(" and value == float(low)))
        above = high and (value > float(high) or (self.bounds[-1] == ")" and value == float(high)))
        return f"{value!r} is outside {self.bounds}" if below or above else None


#: ``extract_inferior`` when a study does not set it (corridor version 8); the extractor falls
#: back to it too when called with partial options.
EXTRACT_INFERIOR_DEFAULT = "peduncle"


def _opt(name, default, type_, steps, help_, kind=None, choices=(), bounds=""):
    return Option(name, default, type_, tuple(steps.split()), help_, kind, tuple(choices), bounds)


_NUM = (int, float)
_OPTIONAL_STR = (str, type(None))

OPTIONS: dict[str, Option] = {o.name: o for o in [
    _opt("series", None, (str, int, type(None)), "ingest",
         "DICOM input: series number or description to convert when a folder holds several DWI series."),
    _opt("motion_correction", "none", str, "ingest",
         "Head motion between volumes (steps/motion.py; rigid, each volume to a reference of its own "
         "contrast, b-vectors turned with the head): none; estimate (report it, data untouched); auto (correct "
         "when a volume moved more than half a voxel); rigid (always correct).",
         choices=("none", "estimate", "auto", "rigid")),
    _opt("denoise_method", "none", str, "denoise",
         "Denoiser (see `cstbatch plugins`). Default chosen by measured CST FA bias vs noise-free "
         "truth and time (benchmarks/denoise_bias.py): none and mppca stay within 0.01 at SNR 15 "
         "and 30, patch2self and nlmeans bias FA by -0.07 to -0.13; none is the fastest. mppca "
         "gives tracking more streamlines on noisy scans (README, 'How the CST is found').",
         kind="denoise"),
    _opt("denoise_patch_radius", 1, int, "denoise", "Patch radius (voxels) for nlmeans / mppca.",
         bounds="[1, )"),
    _opt("patch2self_model", "ols", str, "denoise", "Regression model of patch2self: ols or ridge.",
         choices=("ols", "ridge")),
    _opt("mask_method", "median_otsu", str, "mask", "Brain-mask method.", kind="mask"),
    _opt("mask_median_radius", 2, int, "mask", "median_otsu median filter radius (voxels).",
         bounds="[1, )"),
    _opt("mask_numpass", 2, int, "mask", "median_otsu number of median filter passes.",
         bounds="[1, )"),
    _opt("track_method", "csd_deterministic", str, "track",
         "Tracker (a plugin; `cstbatch plugins`): csd_deterministic follows the largest fODF lobe within the turning angle; "
         "csd_probabilistic draws from the lobes' cores, fills more of the fan and repeats better on "
         "real scans, but follows white matter running beside the CST (README, Known limits); csd_ptt "
         "(parallel transport) fills a wide fan best and drifts out of a thin tract; csd_deterministic_ptt "
         "tracks both ways from the same seeds (5-8x the tracking time; benchmarks/RESULTS.md).",
         kind="track"),
    _opt("track_region", "cst", str, "track",
         "Where tracking runs: cst (a generous CST corridor from the template registration, seeded in the "
         "brainstem, the posterior limb and under the precentral gyrus; steps/track_region.py) or brain "
         "(whole-brain tractogram, every white-matter voxel seeded).", choices=("cst", "brain")),
    _opt("track_cst_seeds", 20000, int, "track",
         "track_region=cst: seeds spread over the CST seed regions (a fixed budget, whatever the voxel size).",
         bounds="[1, )"),
    _opt("track_cst_seed_regions", "brainstem,capsule,precentral", (str, list), "track",
         "track_region=cst: where seeds go, any of brainstem, capsule (posterior limb), precentral (white matter "
         "under the gyrus)."),
    _opt("track_seed_density", 1, int, "track",
         "track_region=brain: seeds per voxel of the seed mask, at reproducible random positions (1: ~60k "
         "streamlines on a 2 mm brain; keep seeds per mm³ alike across resolutions, e.g. 2 for 2.5 mm voxels).",
         bounds="[1, )"),
    _opt("track_seed_fa", 0.2, _NUM, "track", "FA above which voxels are seeded.",
         bounds="[0, 1)"),
    _opt("track_stop_fa", 0.15, _NUM, "track", "Tracking stops where FA drops below this.",
         bounds="[0, 1)"),
    _opt("track_denoise", "mppca", str, "track",
         "Denoising of the DWI that the tracking CSD fit sees, inside the tracking region only "
         "(none or mppca; the tensor maps and metrics are not affected; steps/track.py).",
         choices=("mppca", "none")),
    _opt("track_fodf_fwhm", 3.5, _NUM, "track",
         "Smoothing of the fibre ODFs the tracker follows, FWHM in mm (0: none; kernel: track_fodf_kernel). "
         "More repeatable tracts on noisy real scans (README, 'How the CST is found').",
         bounds="[0, )"),
    _opt("track_fodf_kernel", "along", str, "track",
         "How track_fodf_fwhm smooths: along (each direction's amplitude averaged along its own line, so "
         "thin tracts keep their orientation; steps/track.py smooth_fodf_along) or isotropic (whole fODFs "
         "over a ball, smooth_fodf).", choices=("along", "isotropic")),
    _opt("track_step_size", 1.0, _NUM, "track", "Step size in mm (half a 2 mm voxel).",
         bounds="(0, )"),
    _opt("track_max_angle", 30.0, _NUM, "track", "Maximum turning angle per step, degrees.",
         bounds="(0, 90]"),
    _opt("track_min_length", 20.0, _NUM, "track", "Streamlines shorter than this (mm) are dropped.",
         bounds="[0, )"),
    _opt("track_random_seed", 42, int, "track", "Seed of the seeding jitter: same seed, same tractogram.",
         bounds="[0, )"),
    _opt("save_trx", False, bool, "track",
         "Also save the whole-brain tractogram as TRX (needs the extra: pip install 'cstbatch[trx]')."),
    _opt("gradient_check", "flag", str, "model",
         "Gradient-table check (steps/gradcheck.py): off, flag (flag gradient_table_suspect when a flipped or "
         "permuted b-vector table tracks 25 % longer) or fix (also use that table, flag gradient_table_fixed).",
         choices=("off", "flag", "fix")),
    _opt("atlas", "icbm2009a", str, "register extract metrics",
         "Atlas provider giving the MNI template and CST ROIs.", kind="atlas"),
    _opt("accept_fsl_license", False, bool, "register extract metrics",
         "Required to use FSL-licensed atlases (harvard-oxford, juelich): non-commercial use only."),
    _opt("atlas_template", None, _OPTIONAL_STR, "register extract metrics", "custom atlas: template image."),
    _opt("atlas_labels", None, _OPTIONAL_STR, "register extract metrics", "custom atlas: label image."),
    _opt("atlas_brainstem_ids", None, (list, type(None)), "register extract metrics",
         "custom atlas: label ids of the brainstem."),
    _opt("atlas_motor_left_ids", None, (list, type(None)), "register extract metrics",
         "custom atlas: label ids of left motor cortex."),
    _opt("atlas_motor_right_ids", None, (list, type(None)), "register extract metrics",
         "custom atlas: label ids of right motor cortex."),
    _opt("registration_method", "affine", str, "register", "Template→subject registration: affine or syn.",
         choices=("affine", "syn")),
    _opt("extraction_method", "corridor", str, "extract",
         "CST selection: corridor (pons or lowest covered level + posterior limb of the internal capsule + whole "
         "precentral gyrus, tract-density cleaning), passthrough (brainstem + one motor ROI; the method before "
         "0.2), or endpoint.", kind="extract"),
    _opt("extract_clean", "tdi", str, "extract",
         "corridor: how strays are removed: tdi (tract-density cells, extract_tdi_*) or fan (per-level density "
         "and QuickBundles branches, the corridor method's first cleaning).", choices=("tdi", "fan")),
    _opt("extract_tdi_fraction", 0.3, _NUM, "extract",
         "corridor/tdi: a 2 mm MNI cell is dense when this share of the 95th-percentile cell's streamline count visits it.",
         bounds="[0, 1]"),
    _opt("extract_tdi_inside", 0.9, _NUM, "extract",
         "corridor/tdi: share of a streamline's cells that must be dense for it to stay.",
         bounds="[0, 1]"),
    _opt("extract_tdi_parts", True, bool, "extract",
         "corridor/tdi: also keep a side's streamlines whose cells are dense when a cell above MNI z 20 (the fan) "
         "is judged among the streamlines ending in the same part of the precentral gyrus (leg, hand, face): "
         "a branch sparse beside the trunk stays (corridor version 9; false gives version 8's cleaning; README)."),
    _opt("extract_front_mm", 5.0, (int, float, type(None)), "extract",
         "corridor: drop CST streamlines whose superior end lies more than this many mm in front of the "
         "precentral gyrus's crown (MNI y; corridor version 9); null: any end on the gyrus counts, as before "
         "version 9 (README).", bounds="[0, )"),
    _opt("extract_recover_branches", True, bool, "extract",
         "corridor/tdi: add back the core of each fan branch the density cleaning dropped that grows out of the "
         "kept tract's trunk (the face area's branch, mostly; README)."),
    _opt("extract_clip_cortex", True, bool, "extract",
         "corridor: cut each CST streamline where it enters the precentral cortex for good (the white-matter "
         "tract up to the cortex): more reproducible between repeats; false keeps the part in the cortex (README)."),
    _opt("extract_tdi_keep", 0.2, _NUM, "extract",
         "corridor/tdi: at least this share of a side's candidate streamlines stays (those with the most dense "
         "cells), when extract_tdi_inside would keep fewer; 0 turns it off (0.1 before corridor version 7, 0.3 "
         "before version 10; README).",
         bounds="[0, 1]"),
    _opt("extract_fa_keep", 0.0, _NUM, "extract",
         "corridor/tdi: also keep this share of a side's candidate streamlines, those with the highest mean FA "
         "along them, when the density cleaning dropped them (0: off, the default: at 0.1 phantom fans are found "
         "more fully but the Trio repeats agree less; README).",
         bounds="[0, 1]"),
    _opt("extract_inferior", EXTRACT_INFERIOR_DEFAULT, str, "extract",
         "corridor: how low a CST streamline must reach: peduncle (the brainstem ROI at MNI z <= -18, or the "
         "cerebral peduncles at z <= -10; corridor version 8) or pons (the brainstem ROI only, as before version 8). "
         "Either way, a truncated image's lowest covered level counts (README).",
         choices=("pons", "peduncle")),
    _opt("extract_min_length", 40.0, _NUM, "extract", "Shortest CST streamline kept (mm).",
         bounds="[0, )"),
    _opt("extract_max_length", 250.0, _NUM, "extract", "Longest CST streamline kept (mm).",
         bounds="(0, )"),
    _opt("extract_core_filter", True, bool, "extract",
         "Drop streamlines that leave the bundle's dense core (keeps neighbouring WM out of the CST)."),
    _opt("extract_core_threshold", 0.35, _NUM, "extract", "Core filter: minimum density relative to the peak.",
         bounds="[0, 1]"),
    _opt("extract_core_regrow", 0.15, _NUM, "extract",
         "Core filter, second pass: candidates rescored against the first pass's core; minimum relative density to stay (0: off).",
         bounds="[0, 1]"),
    _opt("extract_midline_tolerance", 3.0, _NUM, "extract", "mm a streamline may cross the midline above the brainstem.",
         bounds="[0, )"),
    _opt("extract_endpoint_tolerance", 3.0, _NUM, "extract", "endpoint method: mm an end may lie outside its ROI.",
         bounds="[0, )"),
    _opt("profile_nodes", 100, int, "metrics", "Nodes per tract profile (brainstem → cortex).",
         bounds="[2, )"),
    _opt("min_cst_streamlines", 10, int, "metrics",
         "A CST side with fewer streamlines is flagged cst_not_found (QC codes: steps/qc.py).",
         bounds="[0, )"),
    _opt("sparse_cst_streamlines", 50, int, "metrics",
         "A found CST side with fewer streamlines is flagged cst_sparse (few paths: an interrupted tract?).",
         bounds="[0, )"),
    _opt("qc_fail", None, (str, list, type(None)), "metrics",
         "QC codes that fail the session (category qc), e.g. cst_not_found,fov_truncated; None: flags only."),
    _opt("reporter", "html", str, "report", "Report format (see `cstbatch plugins`).", kind="report"),
    _opt("generate_pdf", True, bool, "report", "Also write report.pdf (the same pages as the HTML report, matplotlib only)."),
    _opt("report_convention", "radiological", str, "report",
         "Image display in reports: radiological (patient left on screen right) or neurological.",
         choices=("radiological", "neurological")),
    _opt("reference_rc_fa", None, (int, float, type(None)), "",
         "Repeatability coefficient of CST mean FA (absolute FA units, e.g. from a published "
         "test-retest study) used to flag change_beyond_rc in longitudinal.tsv when this study has "
         "fewer than 5 subjects with repeated sessions to estimate its own (None: no flag then).",
         bounds="(0, 1]"),
    _opt("session_timeout", None, (int, float, type(None)), "",
         "Seconds a session's whole chain may run; the step running when it is spent fails "
         "with category timeout (None: no limit).",
         bounds="(0, )"),
]}


#: option -> (module it needs, the package giving it, the cstbatch extra that installs it), for
#: options that switch on an optional dependency.
OPTION_EXTRAS: dict[str, tuple[str, str, str]] = {"save_trx": ("trx", "trx-python", "trx")}


def extra_error(option: str) -> str:
    """The one-line error for ``option`` switched on without the package it needs."""
    _, package, extra = OPTION_EXTRAS[option]
    return f"{option}=true needs {package}, which is not installed: pip install 'cstbatch[{extra}]'"


def missing_extra(option: str, options: Mapping[str, Any]) -> str | None:
    """:func:`extra_error` when ``option`` is on and its package cannot be found, else None."""
    import importlib.util

    if option not in OPTION_EXTRAS or not options.get(option):
        return None
    try:
        found = importlib.util.find_spec(OPTION_EXTRAS[option][0]) is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        found = False
    return None if found else extra_error(option)


def defaults() -> dict[str, Any]:
    return {name: opt.default for name, opt in OPTIONS.items()}


def option_value(options: Mapping[str, Any], name: str, *, null_is_default: bool = False) -> Any:
    """``options[name]``, or the table's default when the name is not set at all.

    Why not ``options.get(name, literal)`` in each step: a literal beside the table is a second
    copy of the default, and changing one without the other changed the output of direct calls
    (tests, benchmarks) but not of the pipeline. An explicit ``None`` is kept, not replaced:
    for some options (``extract_front_mm``) it means "off". Where null has no meaning of its own
    (a method's name, a count), ``null_is_default=True`` reads it as the default, as a manifest
    written with ``"track_region": null`` expects."""
    value = options[name] if name in options else OPTIONS[name].default
    return OPTIONS[name].default if value is None and null_is_default else value


def check_options(options: Mapping[str, Any], where: str = "options") -> list[str]:
    """Return one problem line per unknown name or ill-typed value (JSON-path style)."""
    problems = []
    for name, value in options.items():
        opt = OPTIONS.get(name)
        if opt is None:
            close = [n for n in OPTIONS if n.split("_")[0] == name.split("_")[0]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"{where}.{name}: unknown option{hint}")
            continue
        if isinstance(value, bool) and opt.type in (int, float, _NUM):
            problems.append(f"{where}.{name}: expected a number, got {value!r}")
        elif not isinstance(value, opt.type):
            problems.append(f"{where}.{name}: expected {_type_name(opt.type)}, got {value!r}")
        elif opt.choices and value not in opt.choices:
            problems.append(f"{where}.{name}: {_not_a_choice(opt, value)}")
        elif why := opt.out_of_bounds(value):
            problems.append(f"{where}.{name}: {why}")
    return problems


def _conflicts(merged: Mapping[str, Any]) -> list[str]:
    """Problems no single value has, only a pair of them (each layer may set one of the two)."""
    lo, hi = merged.get("extract_min_length"), merged.get("extract_max_length")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo >= hi:
        return [f"extract_min_length ({lo!r}) must be below extract_max_length ({hi!r}): no streamline would be kept"]
    return []


def _not_a_choice(opt: Option, value) -> str:
    return f"{value!r} is not one of {', '.join(opt.choices)}"


def require_choice(name: str, value: Any) -> Any:
    """``value`` if it is one of option ``name``'s ``choices``, else an OptionError: the check
    :func:`check_options` makes at planning, for steps called with options that did not go
    through it (plugins, benchmarks, tests)."""
    opt = OPTIONS[name]
    if value not in opt.choices:
        raise OptionError(f"{name}: {_not_a_choice(opt, value)}")
    return value


def require_in_bounds(name: str, value: Any) -> Any:
    """``value`` if it lies in option ``name``'s ``bounds``, else an OptionError: the planning
    check, for steps called with options that did not go through it."""
    problem = OPTIONS[name].out_of_bounds(value)
    if problem:
        raise OptionError(f"{name}: {problem}")
    return value


def _type_name(t) -> str:
    types = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in types)


def merge_options(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """defaults ← layer1 ← layer2 …; raises OptionError on unknown names or bad types."""
    merged = defaults()
    for i, layer in enumerate(layers):
        if not layer:
            continue
        problems = check_options(layer)
        if problems:
            raise OptionError("; ".join(problems))
        merged.update(layer)
    conflicts = _conflicts(merged)
    if conflicts:
        raise OptionError("; ".join(conflicts))
    return merged


def step_options(options: Mapping[str, Any], step: str) -> dict[str, Any]:
    """The options that determine ``step``'s result (what its up-to-date check covers)."""
    return {n: options[n] for n, o in OPTIONS.items() if step in o.steps}


def parse_cli_value(name: str, text: str) -> Any:
    """Turn ``--option name=value`` text into the option's type (JSON-ish: numbers, bools, null)."""
    import json

    if name not in OPTIONS:
        raise OptionError(f"--option {name}: unknown option")
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    problems = check_options({name: value}, where="--option")
    if problems:
        raise OptionError(problems[0])
    return value


def options_table_markdown() -> str:
    """The documented defaults table (README and `cstbatch options` print it)."""
    rows = ["| option | default | range | steps | meaning |", "|---|---|---|---|---|"]
    for o in OPTIONS.values():
        allowed = o.bounds or ", ".join(o.choices) or "—"
        rows.append(f"| `{o.name}` | `{o.default!r}` | {allowed} | {', '.join(o.steps) or '—'} | {o.help} |")
    return "\n".join(rows)
