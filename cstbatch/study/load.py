"""A study ready to plan: its sessions (with effective options), config, and provenance.

Both front doors (``dodo.py`` and the ``cstbatch`` command) build a ``Study`` through
``load_study`` and hand it to the same task generator, so they cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from cstbatch.study.discover import discover_study
from cstbatch.study.manifest import load_manifest
from cstbatch.study.options import OPTION_EXTRAS, STEP_SELECTOR, missing_extra
from cstbatch.study.spec import BatchConfig, SubjectSpec

#: the ``cstbatch`` package folder
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_MANIFEST = PACKAGE_ROOT.parent / "sample_data" / "manifest.json"


@dataclass
class Study:
    subjects: list[SubjectSpec]
    config: BatchConfig
    skipped: list[tuple[str, str]] = field(default_factory=list)
    kind: str = "manifest"                 # "bids", "manifest" or "sample"
    plugins_dir: Path | None = None
    sample_dir: Path | None = None         # where the sample study is generated (kind "sample")


def check_output_dir(out_dir: Path) -> None:
    """Create the output folder and prove it writable now, not after an hour of processing."""
    import os
    import tempfile

    from cstbatch.errors import InputError

    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-write-test-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(out_dir, f"output folder cannot be written ({exc.strerror or exc})") from None


def check_study(study: "Study") -> "Study":
    """Planning-time checks that must stop the run before doit starts (unknown plugins,
    an output folder that cannot be written)."""
    from cstbatch.errors import OptionError
    from cstbatch.plugins import get_registry

    check_output_dir(study.config.output_dir)
    registry = get_registry(study.plugins_dir)
    problems = check_implementations(study, registry)
    if problems:
        raise OptionError("; ".join(problems))
    return study


def load_study(*, bids_dir: Path | None = None, manifest: Path | None = None, output_dir: Path | None = None,
               options: Mapping[str, Any] | None = None, participant_label: Iterable[str] | None = None,
               exclude_participant_label: Iterable[str] | None = None, subject_pattern: str = "sub-*",
               session_pattern: str = "ses-*", plugins_dir: Path | None = None) -> Study:
    """Build the study from a BIDS folder, a manifest, or (neither given) the sample study."""
    if bids_dir is not None:
        bids_dir = Path(bids_dir).resolve()
        found = discover_study(bids_dir, subject_pattern, session_pattern, participant_label,
                               exclude_participant_label, options)
        participants = bids_dir / "participants.tsv"
        config = BatchConfig(output_dir=output_dir or bids_dir / "derivatives" / "cstbatch",
                             options=dict(options or {}), name=bids_dir.name, source_dataset=bids_dir,
                             participants_tsv=participants if participants.exists() else None)
        for spec in found.entries:
            spec.study_root = bids_dir
        return check_study(Study(found.entries, config, found.skipped, "bids", plugins_dir))
    kind = "manifest"
    if manifest is None:
        manifest, kind = SAMPLE_MANIFEST, "sample"
    specs, config = load_manifest(Path(manifest), output_dir=output_dir, cli_options=options)
    for spec in specs:  # relative paths in a manifest are relative to its folder
        spec.study_root = Path(manifest).resolve().parent
    if participant_label or exclude_participant_label:
        keep = {p.removeprefix("sub-") for p in participant_label or []}
        drop = {p.removeprefix("sub-") for p in exclude_participant_label or []}
        specs = [s for s in specs if (not keep or s.subject_id[4:] in keep) and s.subject_id[4:] not in drop]
    study = Study(specs, config, [], kind, plugins_dir)
    if kind == "sample":
        study.sample_dir = Path(manifest).resolve().parent / "generated"
        if output_dir is None:
            study.config.output_dir = Path.cwd() / "derivatives" / "cstbatch"
    return check_study(study)


def check_implementations(study: "Study", registry) -> list[str]:
    """One line per session option naming an unknown implementation, or switching on an extra
    that is not installed (checked before doit)."""
    problems = []
    for spec in study.subjects:
        problems += [m for option in OPTION_EXTRAS if (m := missing_extra(option, spec.options))]
        for step, (kind, option) in STEP_SELECTOR.items():
            if spec.options[option] not in registry.implementations.get(kind, {}):
                problems.append(f"{spec.origin or spec.key}: {option} {spec.options[option]!r} is not a known "
                                f"{kind} implementation (known: {', '.join(registry.names(kind)) or 'none'})")
    return sorted(set(problems))
