"""Where every file of the derivative dataset lives — the single source of output paths.

The task generator declares these paths as targets and the step actions write them, so the two
can never disagree. Names follow BIDS derivatives, so the schema-based bids-validator checks
every file the specification has a rule for: ``desc-preproc_dwi`` (with a JSON sidecar), one
``_dwi.bval``/``.bvec`` pair per session that BIDS inheritance applies to each DWI of the session,
``desc-brain_mask`` and ``label-*_mask`` ROIs in ``dwi/``. What the specification has no rule for
yet is listed in :data:`BIDSIGNORE`: BEP016 tensor maps, tractograms, transforms (BEP014, named the
NiPreps/TemplateFlow way: ``from-<template>_to-dwi_mode-image_xfm``), and cstbatch's own figures,
metrics tables, reports and step records.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cstbatch.study.options import option_value

TENSOR_PARAMS = ("fa", "md", "rd", "ad")
STATE_DIR = ".cstbatch"

#: The denoiser that changes nothing: with it the later steps read the preprocessed DWI itself,
#: and no second copy is stored.
NO_DENOISING = "none"

#: TemplateFlow identifier of each built-in atlas's template: the ``from-`` label of the
#: transform. nilearn's ICBM 2009a template is the nonlinear symmetric one; the FSL atlases sit
#: on FSL's MNI152 (6th generation, nonlinear asymmetric). Other atlases (custom, plugins) are
#: named by the atlas name with its non-alphanumeric characters dropped.
ATLAS_TEMPLATE_IDS = {
    "icbm2009a": "MNI152NLin2009aSym",
    "harvard-oxford": "MNI152NLin6Asym",
    "juelich": "MNI152NLin6Asym",
}

#: The session folders the BIDS specification has no datatype for. ``xfm/`` holds only
#: transforms (BEP014, not in the specification yet), ``tractography/`` only tractograms.
NON_BIDS_SESSION_DIRS = ("tractography", "xfm", "figures", "metrics", "steps")

#: Everything in the derivative dataset the BIDS specification (1.11, bids-validator 3.x) has no
#: rule for, each pattern as narrow as the validator's matching allows (a folder is hidden by its
#: name without a trailing slash). Spec-covered files (preprocessed and denoised DWI, gradients,
#: masks, ROIs, dataset description, participants, scans) stay visible to the validator.
BIDSIGNORE = "\n".join([
    "# BEP016 diffusion-model maps (model-/param- entities, dwimap suffix)",
    # not "*_model-…": bids-validator 3.0.2 then misses sub-X_ses-Y_model-… (tested)
    "*model-*_param-*_dwimap.nii.gz",
    "# the b-vectors after the gradient-table check (no image of their own: the spec has no rule)",
    "*_desc-checked_dwi.bvec",
    "# tractograms (tractography/), transforms (xfm/, BEP014), QC figures, metrics tables and",
    "# reports, step records: no datatype folder in the specification",
    *[f"sub-*/{level}{folder}" for folder in NON_BIDS_SESSION_DIRS for level in ("", "ses-*/")],
    "# group files of cstbatch",
    "/batch_summary.json",
    "/batch_metrics.csv",
    "/longitudinal.tsv",
    "/reliability.tsv",
    "/group_report.html",
]) + "\n"


def template_id(atlas: str) -> str:
    """The ``from-`` label of the template-to-subject transform for atlas ``atlas``."""
    return ATLAS_TEMPLATE_IDS.get(atlas) or "".join(c for c in str(atlas) if c.isalnum()) or "template"


@dataclass(frozen=True)
class SessionLayout:
    out_dir: Path
    key: str
    relative_dir: Path

    @classmethod
    def of(cls, out_dir, spec) -> "SessionLayout":
        return cls(Path(out_dir), spec.key, spec.relative_dir)

    @property
    def root(self) -> Path:
        return self.out_dir / self.relative_dir

    @cached_property
    def _root_text(self) -> str:
        return str(self.root)

    def _f(self, folder: str, suffix: str) -> Path:
        # the same path as root / folder / name, parsed once (task generation makes ~30 per session)
        return Path(f"{self._root_text}/{folder}/{self.key}_{suffix}")

    # ingest
    @property
    def dwi(self) -> Path:
        return self._f("dwi", "desc-preproc_dwi.nii.gz")

    @property
    def dwi_json(self) -> Path:
        return self._f("dwi", "desc-preproc_dwi.json")

    # no desc-: by BIDS inheritance they apply to every DWI of the session (preprocessed and
    # denoised), while desc-preproc_dwi.bval has no rule in the specification
    @property
    def bval(self) -> Path:
        return self._f("dwi", "dwi.bval")

    @property
    def bvec(self) -> Path:
        return self._f("dwi", "dwi.bvec")

    # denoise / mask / model
    @property
    def denoised(self) -> Path:
        return self._f("dwi", "desc-denoised_dwi.nii.gz")

    @property
    def denoised_json(self) -> Path:
        return self._f("dwi", "desc-denoised_dwi.json")

    def analysis_dwi(self, options) -> Path:
        """The DWI that mask, model and track read: the denoised one, or the preprocessed one
        itself when the denoiser is ``none`` (no copy)."""
        return self.dwi if option_value(options, "denoise_method") == NO_DENOISING else self.denoised

    @property
    def mask(self) -> Path:
        return self._f("dwi", "desc-brain_mask.nii.gz")

    @property
    def mask_json(self) -> Path:
        return self._f("dwi", "desc-brain_mask.json")

    @property
    def bvec_checked(self) -> Path:
        """The b-vectors every step after ``model`` uses: the preprocessed ones, or with
        ``gradient_check=fix`` the corrected table (see ``cstbatch.steps.gradcheck``)."""
        return self._f("dwi", "desc-checked_dwi.bvec")

    def tensor_map(self, param: str) -> Path:
        return self._f("dwi", f"model-tensor_param-{param}_dwimap.nii.gz")

    # track / extract
    @property
    def tractogram(self) -> Path:
        return self._f("tractography", "tractogram.trk")

    @property
    def tractogram_trx(self) -> Path:
        return self._f("tractography", "tractogram.trx")

    def cst(self, side: str) -> Path:
        return self._f("tractography", f"desc-cst{side[0].upper()}_tractogram.trk")

    def cst_template_mask(self, side: str, atlas: str) -> Path:
        """The 2 mm template cells a CST side visits (written by the metrics step): a BIDS
        derivative mask, in ``dwi/`` with the session's other masks, its ``space-`` the template."""
        return self._f("dwi", f"space-{template_id(atlas)}_desc-cst{side[0].upper()}_mask.nii.gz")

    # register
    def transform(self, atlas: str) -> Path:
        """ITK text affine that resamples the template onto the DWI grid (maps DWI-space points
        to template points, LPS): what ANTs, nitransforms and SimpleITK read."""
        return self._f("xfm", f"from-{template_id(atlas)}_to-dwi_mode-image_xfm.txt")

    def registration_cache(self, atlas: str) -> Path:
        """cstbatch's own file of a SyN registration (the affine plus dipy's displacement
        fields), which extract and metrics read; written only for ``registration_method=syn``."""
        return self._f("xfm", f"from-{template_id(atlas)}_to-dwi_desc-syn_xfm.npz")

    def roi(self, name: str) -> Path:
        """Atlas ROI (brainstem, motorL, motorR) resampled onto the DWI grid."""
        return self._f("dwi", f"label-{name}_mask.nii.gz")

    def roi_json(self, name: str) -> Path:
        return self._f("dwi", f"label-{name}_mask.json")

    @property
    def registration_qc(self) -> Path:
        return self._f("figures", "desc-registration_qc.png")

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    # metrics / report
    @property
    def metrics_json(self) -> Path:
        return self._f("metrics", "metrics.json")

    @property
    def metrics_csv(self) -> Path:
        return self._f("metrics", "metrics.csv")

    @property
    def profiles_csv(self) -> Path:
        return self._f("metrics", "profiles.csv")

    @property
    def report_html(self) -> Path:
        return self._f("metrics", "report.html")

    @property
    def report_pdf(self) -> Path:
        return self._f("metrics", "report.pdf")

    def superseded(self, step: str) -> list[Path]:
        """Files ``step`` wrote under cstbatch 0.1's names, which it now removes so that a rerun
        into an older output folder leaves no stale copy (nor a file the validator rejects)."""
        if step == "ingest":
            return [self._f("dwi", "desc-preproc_dwi.bval"), self._f("dwi", "desc-preproc_dwi.bvec")]
        if step == "register":
            return [self._f("xfm", "from-dwi_to-MNI_xfm.npz")] + [
                self._f("xfm", f"desc-{roi}_mask.nii.gz") for roi in ("brainstem", "motorL", "motorR")]
        return []

    # bookkeeping
    def record(self, step: str) -> Path:
        """The step record: status, output checksums, duration, peak memory (always written)."""
        return self._f("steps", f"step-{step}.json")

    @property
    def log(self) -> Path:
        return self.out_dir / "logs" / f"{self.key}.log"

    @property
    def error_log(self) -> Path:
        return self.out_dir / "logs" / f"{self.key}_error.log"

    @property
    def work_dir(self) -> Path:
        """Scratch space (e.g. dcm2niix output); inside the output folder, never elsewhere."""
        return self.out_dir / STATE_DIR / "work" / self.key


def group_paths(out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {
        "dataset_description": out_dir / "dataset_description.json",
        "participants_tsv": out_dir / "participants.tsv",
        "participants_json": out_dir / "participants.json",
        "batch_summary": out_dir / "batch_summary.json",
        "batch_metrics": out_dir / "batch_metrics.csv",
        "longitudinal": out_dir / "longitudinal.tsv",
        "reliability": out_dir / "reliability.tsv",
        "group_report": out_dir / "group_report.html",
        "bidsignore": out_dir / ".bidsignore",  # content: BIDSIGNORE
        "readme": out_dir / "README",
    }


