"""BIDS discovery: which DWI series a dataset holds, with their gradient files.

Discovery reads folder listings and the small ``.bval`` text files, never image contents, so it
works on datasets whose images are placeholders and stays fast on studies of thousands of
sessions; whether an image is usable is ingest's business. A series whose ``.bval`` lists only
b0 volumes (a reverse phase-encoding reference kept in ``dwi/``) is skipped with that reason, as
are the phase (``part-phase``, ``-real``, ``-imag``) images of a complex series.
``.bval``/``.bvec`` are resolved by the BIDS inheritance principle: the file with the same stem
wins, otherwise the closest folder up the tree holding a ``*dwi.bval`` whose entities are a
subset of the image's (e.g. a top-level ``dwi.bval``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Iterable, Mapping

from cstbatch.study.bvalues import b0_only
from cstbatch.study.options import merge_options
from cstbatch.study.spec import SERIES_ENTITIES, SubjectSpec

log = logging.getLogger(__name__)

DWI_EXTENSIONS = (".nii.gz", ".nii")
#: Scanner-made maps that dcm2niix and vendors export next to the DWI; they are not series.
SCANNER_MAPS = {"adc", "fa", "trace", "tracew", "colfa", "expadc", "eadc", "b0", "md"}


@dataclass
class Discovery:
    """Every DWI series found, and every subject/session folder skipped with the reason."""

    entries: list[SubjectSpec] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def parse_bids_name(name: str) -> tuple[dict[str, str], str, str]:
    """``sub-01_ses-a_run-1_dwi.nii.gz`` → ({sub: 01, ses: a, run: 1}, "dwi", ".nii.gz")."""
    ext = ""
    for candidate in (".nii.gz", ".nii", ".bval", ".bvec", ".json"):
        if name.endswith(candidate):
            ext = candidate
            name = name[: -len(candidate)]
            break
    parts = name.split("_")
    suffix = parts[-1] if parts and "-" not in parts[-1] else ""
    entities = {}
    for part in parts[:-1] if suffix else parts:
        key, sep, value = part.partition("-")
        if sep:
            entities[key] = value
    return entities, suffix, ext


def _is_scanner_map(entities: Mapping[str, str], suffix: str) -> bool:
    values = {v.lower() for k, v in entities.items() if k in ("acq", "desc", "rec")}
    return suffix != "dwi" or bool(values & SCANNER_MAPS)


class _Listing:
    """Cached folder listings: each folder is listed once, however many lookups hit it."""

    def __init__(self):
        self._cache: dict[Path, list[os.DirEntry]] = {}

    def __call__(self, folder: Path) -> list[os.DirEntry]:
        if folder not in self._cache:
            try:
                with os.scandir(folder) as it:
                    self._cache[folder] = sorted(it, key=lambda e: e.name)
            except OSError:
                self._cache[folder] = []
        return self._cache[folder]


def find_inherited(image: Path, extension: str, levels: list[Path], listing: _Listing) -> Path | None:
    """The sidecar ``extension`` that applies to ``image`` by BIDS inheritance, or None."""
    entities, _, image_ext = parse_bids_name(image.name)
    same_stem = image.parent / (image.name[: -len(image_ext)] + extension)
    if any(e.name == same_stem.name for e in listing(image.parent)):
        return same_stem  # the common case, without parsing every name up the tree
    for folder in levels:
        best, best_n = None, -1
        for entry in listing(folder):
            if not entry.name.endswith("dwi" + extension):
                continue
            cand_entities, suffix, ext = parse_bids_name(entry.name)
            if suffix != "dwi" or ext != extension:
                continue
            if all(entities.get(k) == v for k, v in cand_entities.items()):
                if len(cand_entities) > best_n:
                    best, best_n = Path(entry.path), len(cand_entities)
        if best is not None:
            return best
    return None


def _label_set(labels: Iterable[str] | None) -> set[str] | None:
    if labels is None:
        return None
    return {lab[4:] if lab.startswith("sub-") else lab for lab in labels}


def discover_study(
    bids_dir: Path,
    subject_pattern: str = "sub-*",
    session_pattern: str = "ses-*",
    participant_label: Iterable[str] | None = None,
    exclude_participant_label: Iterable[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Discovery:
    """Find every DWI series under ``bids_dir``; see module docstring for the rules.

    Patterns use fnmatch (glob) semantics on folder names. ``participant_label`` keeps only
    those subjects (with or without ``sub-``), ``exclude_participant_label`` drops them.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        from cstbatch.errors import InputError
        raise InputError(bids_dir, "BIDS folder not found")
    effective = merge_options(options)
    keep, drop = _label_set(participant_label), _label_set(exclude_participant_label) or set()
    listing = _Listing()
    found = Discovery()
    for sub in listing(bids_dir):
        if not (sub.is_dir() and sub.name.startswith("sub-") and fnmatchcase(sub.name, subject_pattern)):
            continue
        label = sub.name[4:]
        if (keep is not None and label not in keep) or label in drop:
            continue
        sub_path = Path(sub.path)
        sessions = [Path(e.path) for e in listing(sub_path)
                    if e.is_dir() and e.name.startswith("ses-")]
        if sessions:
            folders = [s for s in sessions if fnmatchcase(s.name, session_pattern)]
        else:
            folders = [sub_path]
        for folder in folders:
            before = len(found.entries)
            _discover_dwi(folder, sub_path, bids_dir, listing, effective, found)
            if len(found.entries) == before:
                found.skipped.append((str(folder.relative_to(bids_dir)), "no DWI series"))
    for where, why in found.skipped:
        log.info("skipped %s: %s", where, why)
    return found


def _discover_dwi(folder, sub_path, bids_dir, listing, options, found: Discovery) -> None:
    dwi_dir = folder / "dwi"
    levels = [dwi_dir] + ([folder] if folder != sub_path else []) + [sub_path, bids_dir]
    images = {}

    def skip(path, why: str) -> None:
        found.skipped.append((str(Path(path).relative_to(bids_dir)), why))

    for entry in listing(dwi_dir):
        entities, suffix, ext = parse_bids_name(entry.name)
        if ext not in DWI_EXTENSIONS or not entry.name.endswith("_dwi" + ext):
            continue
        if _is_scanner_map(entities, suffix):
            continue
        if entities.get("part", "mag").lower() != "mag":
            skip(entry.path, f"part-{entities['part']}: only magnitude images are diffusion data")
            continue
        stem = entry.name[: -len(ext)]
        if stem in images:  # both .nii and .nii.gz: keep the compressed one, say so
            skip(entry.path, "duplicate of the .nii.gz with the same name")
            if ext == ".nii":
                continue
        images[stem] = (Path(entry.path), entities)
    for stem in sorted(images):
        path, entities = images[stem]
        bval = find_inherited(path, ".bval", levels, listing)
        if b0_only(bval):
            skip(path, f"only b0 volumes in {bval.name} (a reverse phase-encoding reference, "
                       "not a DWI series to process)")
            continue
        spec = SubjectSpec(
            subject_id=f"sub-{entities.get('sub', sub_path.name[4:])}",
            session_id=f"ses-{entities['ses']}" if "ses" in entities else None,
            input_path=path,
            input_type="nifti",
            options=dict(options),
            bval=bval,
            bvec=find_inherited(path, ".bvec", levels, listing),
            entities={k: entities[k] for k in SERIES_ENTITIES if k in entities},
            origin=str(path.relative_to(bids_dir)),
        )
        found.entries.append(spec)


def discover_subjects(bids_dir: Path, subject_pattern: str = "sub-*", session_pattern: str = "ses-*",
                      **kwargs) -> list[SubjectSpec]:
    """The plan's entry point: the DWI series of a BIDS dataset (skips are logged)."""
    return discover_study(bids_dir, subject_pattern, session_pattern, **kwargs).entries


def validate_subject_inputs(subjects: list[SubjectSpec]) -> list[str]:
    """One line per missing input (image, folder, or gradient file); empty when all exist."""
    errors = []
    for spec in subjects:
        where = spec.origin or spec.key
        if not spec.input_path.exists():
            errors.append(f"{where}: {spec.input_path}: file not found")
            continue
        if spec.input_type == "nifti":
            for kind, path in (("bval", spec.bval), ("bvec", spec.bvec)):
                if path is None:
                    errors.append(f"{where}: {spec.input_path}: no .{kind} found (same name or inherited)")
                elif not Path(path).exists():
                    errors.append(f"{where}: {path}: file not found")
        elif not spec.input_path.is_dir():
            errors.append(f"{where}: {spec.input_path}: DICOM input must be a folder")
    return errors
