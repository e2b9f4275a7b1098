"""The study's vocabulary: what one session to process is, how a batch is configured, and
what a session's outcome was. Names follow the original plan (seed/batch-plan.md)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cstbatch.errors import InputError
from cstbatch.study.options import defaults, merge_options

#: BIDS labels are alphanumeric; anything else could escape the output folder once it is a path.
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
#: Entities that distinguish several DWI series of one session, in BIDS filename order.
SERIES_ENTITIES = ("acq", "rec", "dir", "run")


def check_label(value: str, prefix: str, where: str) -> str:
    """Return the bare label of ``sub-XX``/``ses-XX`` (or ``XX``), refusing unsafe text."""
    text = value[len(prefix) + 1:] if value.startswith(prefix + "-") else value
    if not _LABEL.match(text or ""):
        raise InputError(None, f"{where}: {value!r} is not a BIDS {prefix} label "
                               "(letters and digits only)")
    return text


@dataclass
class SubjectSpec:
    """One DWI series to process: a subject, an optional session, optional series entities.

    ``options`` are the session's *effective* options (defaults ← study ← entry ← command line).
    """

    subject_id: str                      # "sub-01"
    session_id: str | None               # "ses-01" or None (dataset without sessions)
    input_path: Path
    input_type: Literal["nifti", "dicom"] = "nifti"
    options: dict[str, Any] = field(default_factory=defaults)
    bval: Path | None = None
    bvec: Path | None = None
    entities: dict[str, str] = field(default_factory=dict)
    origin: str = ""                     # where it came from, for messages ("subjects[3]", a path)
    session_date: str | None = None      # manifest ``session_date`` (ISO 8601): orders sessions
    study_root: Path | None = None       # the BIDS folder or the manifest's folder (input labels)

    def __post_init__(self):
        self.input_path = Path(self.input_path)
        label = check_label(self.subject_id, "sub", self.origin or "subject")
        self.subject_id = f"sub-{label}"
        if self.session_id is not None:
            self.session_id = f"ses-{check_label(self.session_id, 'ses', self.origin or 'session')}"
        for name, value in self.entities.items():
            if not _LABEL.match(str(value)):
                raise InputError(None, f"{self.origin}: entity {name}-{value} is not a BIDS label")

    @property
    def key(self) -> str:
        """Names this session's tasks, folders and logs: ``sub-01_ses-01[_acq-x_run-1]``."""
        parts = [self.subject_id] + ([self.session_id] if self.session_id else [])
        parts += [f"{k}-{self.entities[k]}" for k in SERIES_ENTITIES if k in self.entities]
        return "_".join(parts)

    def input_label(self, path: Path) -> str:
        """How provenance and up-to-date checks name an input: its path relative to the study
        root (the BIDS folder, or the manifest's folder — as a manifest gives relative paths),
        so moving or copying the study keeps every name; an input outside the root keeps its
        absolute path."""
        path = Path(path)
        if self.study_root is not None:
            try:
                return path.relative_to(self.study_root).as_posix()
            except ValueError:
                pass
        return str(path)

    @property
    def inputs(self) -> list[tuple[str, Path]]:
        """(label, path) of each raw input as the user gave it: the NIfTI, bval, bvec, or the
        DICOM folder."""
        paths = [p for p in (self.input_path, self.bval, self.bvec) if p is not None]
        return [(self.input_label(p), Path(p)) for p in paths]

    @property
    def relative_dir(self) -> Path:
        """The session's folder inside the derivative dataset."""
        return Path(self.subject_id, self.session_id) if self.session_id else Path(self.subject_id)


@dataclass
class BatchConfig:
    """Study-wide settings; ``options`` are study-level overrides of the defaults table."""

    output_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    continue_on_error: bool = True
    jobs: int = 1
    name: str = "cstbatch study"
    description: str = ""
    source_dataset: Path | None = None   # BIDS input folder, when the study came from one
    participants_tsv: Path | None = None

    def __post_init__(self):
        # absolute: doit's state keys and every task path derive from it (engine/state.py)
        self.output_dir = Path(self.output_dir).absolute()
        merge_options(self.options)  # validate names and types early

    @property
    def effective_options(self) -> dict[str, Any]:
        return merge_options(self.options)

    @property
    def denoise_method(self) -> str:
        return self.effective_options["denoise_method"]

    @property
    def generate_pdf(self) -> bool:
        return self.effective_options["generate_pdf"]


@dataclass
class SubjectResult:
    """A session's outcome, read back from its step records after the doit run."""

    subject_id: str
    session_id: str | None
    success: bool
    duration_seconds: float
    error: str | None = None
    outputs: dict | None = None
    key: str = ""
    status: Literal["success", "failed", "skipped", "pending"] = "pending"
    last_step: str | None = None
    error_category: str | None = None
    failed_step: str | None = None
    log_path: str | None = None


def spec_to_job(spec: "SubjectSpec", out_dir: Path, plugins_dir: Path | None) -> dict[str, Any]:
    """Plain, picklable description of a session for the task's action."""
    return {
        "subject_id": spec.subject_id, "session_id": spec.session_id,
        "input_path": str(spec.input_path), "input_type": spec.input_type,
        "bval": str(spec.bval) if spec.bval else None, "bvec": str(spec.bvec) if spec.bvec else None,
        "entities": dict(spec.entities), "options": dict(spec.options), "origin": spec.origin,
        "session_date": spec.session_date,
        "study_root": str(spec.study_root) if spec.study_root else None,
        "out_dir": str(out_dir), "plugins_dir": str(plugins_dir) if plugins_dir else None,
    }


def job_to_spec(job: dict[str, Any]) -> SubjectSpec:
    return SubjectSpec(job["subject_id"], job["session_id"], Path(job["input_path"]), job["input_type"],
                       dict(job["options"]), bval=Path(job["bval"]) if job["bval"] else None,
                       bvec=Path(job["bvec"]) if job["bvec"] else None, entities=dict(job["entities"]),
                       origin=job["origin"], session_date=job.get("session_date"),
                       study_root=Path(job["study_root"]) if job.get("study_root") else None)
