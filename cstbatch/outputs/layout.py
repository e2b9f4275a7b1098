"""Where every file of the derivative dataset lives — the single source of output paths.

The task generator declares these paths as targets and the step actions write them, so the two
can never disagree. Names follow BIDS derivatives (BEP016 for diffusion maps).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

TENSOR_PARAMS = ("fa", "md", "rd", "ad")
STATE_DIR = ".cstbatch"


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
    def bval(self) -> Path:
        return self._f("dwi", "desc-preproc_dwi.bval")

    @property
    def bvec(self) -> Path:
        return self._f("dwi", "desc-preproc_dwi.bvec")

    # denoise / mask / model
    @property
    def denoised(self) -> Path:
        return self._f("dwi", "desc-denoised_dwi.nii.gz")

    @property
    def mask(self) -> Path:
        return self._f("dwi", "desc-brain_mask.nii.gz")

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

    # register
    @property
    def transform(self) -> Path:
        return self._f("xfm", "from-dwi_to-MNI_xfm.npz")

    def roi(self, name: str) -> Path:
        return self._f("xfm", f"desc-{name}_mask.nii.gz")

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
        "group_report": out_dir / "group_report.html",
        "bidsignore": out_dir / ".bidsignore",
        "readme": out_dir / "README",
    }


