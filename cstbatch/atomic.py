"""Write-then-rename, so a killed or failed write never leaves a file that looks finished.

The temporary name keeps the real name's extensions (``.nii.gz``, ``.trk``) because nibabel
and friends choose the format from them; it starts with ``.tmp-`` so listings and the BIDS
validator ignore leftovers, which the next successful write of the same file replaces.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def temp_name(target: Path) -> Path:
    return target.with_name(f".tmp-{os.getpid()}-{target.name}")


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(target: Path | str, text: str) -> Path:
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(target)


def write_json(target: Path | str, data: Any) -> Path:
    return write_text(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def copy_file(source: Path | str, target: Path | str) -> Path:
    """Copy ``source``'s bytes to ``target`` atomically."""
    import shutil

    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


def save_nifti(img, target: Path | str) -> Path:
    """Save a nibabel image atomically (deterministic bytes: gzip mtime is zero in nibabel ≥ 5)."""
    import nibabel as nib

    with atomic_path(target) as tmp:
        nib.save(img, str(tmp))
    return Path(target)
