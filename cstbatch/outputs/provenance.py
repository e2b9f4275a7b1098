"""What produced a session's numbers: versions, options, implementations, inputs, timings.

Stored in ``metrics.json`` so a figure in a paper can be traced to the exact software and
settings. Inputs are named as the user gave them (relative to the study root) with their SHA-256,
never by where the study or the output folder happened to be, so two identical runs into two
folders agree; durations and peak memory are the only fields that change between them.
"""
from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from cstbatch._version import __version__
from cstbatch.outputs.records import read_record
from cstbatch.study.options import STEPS

LIBRARIES = ("dipy", "nibabel", "numpy", "scipy", "doit", "pluggy", "nilearn", "dcm2niix", "matplotlib")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def session_provenance(ctx) -> dict[str, Any]:
    steps: dict[str, Any] = {}
    inputs: dict[str, str] = {}
    for step in STEPS:
        record = read_record(ctx.layout.record(step))
        if not record or record.get("status") != "success":
            continue
        steps[step] = {"implementation": record.get("implementation"), "duration_s": record.get("duration_s"),
                       "peak_rss_mb": record.get("peak_rss_mb")}
        if step == "ingest":
            inputs = (record.get("info") or {}).get("inputs", {})
    return {"cstbatch_version": __version__, "libraries": library_versions(), "options": dict(ctx.options),
            "steps": steps, "input_sha256": inputs, "origin": ctx.spec.origin}
