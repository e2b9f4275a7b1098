"""Step records: the small JSON each step writes last, whatever happened.

A record says whether the step succeeded, failed (category, message, plugin) or was skipped
because an earlier step failed, with checksums of what it wrote, its duration and peak memory.
Later steps depend on records (never directly on outputs that may be missing), which is what
lets one session fail without stopping the others or the aggregation. ``duration_s``,
``cpu_s``, ``peak_rss_mb``, ``started`` and ``finished`` are the only fields that differ between two
identical runs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cstbatch.atomic import write_json

VOLATILE_FIELDS = ("duration_s", "cpu_s", "peak_rss_mb", "started", "finished")


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_sha256(path: Path) -> str:
    """SHA-256 of a raw input: of the file, or, for a folder (DICOM), of the sorted list of
    ``relative/name<TAB>sha256`` of every file under it — so the digest names the content, not
    where the folder is."""
    path = Path(path)
    if not path.is_dir():
        return sha256(path)
    lines = [f"{f.relative_to(path).as_posix()}\t{sha256(f)}\n"
             for f in sorted(path.rglob("*")) if f.is_file()]
    return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def strip_volatile(value: Any) -> Any:
    """``value`` without the documented run-dependent fields, at any depth."""
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if k not in VOLATILE_FIELDS}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def content_digest(path: Path) -> str:
    """sha256 of a file's content; for JSON, of its content without volatile fields — so
    records (and everything depending on them) stay identical between identical runs."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return sha256(path)
        return hashlib.sha256(json.dumps(strip_volatile(data), sort_keys=True).encode()).hexdigest()
    return sha256(path)


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when missing or unreadable (a crash mid-write)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(path: Path, record: dict[str, Any]) -> None:
    write_json(path, record)


def succeeded(path: Path) -> bool:
    record = read_record(path)
    return bool(record) and record.get("status") == "success"
