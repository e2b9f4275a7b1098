"""What a step function is handed: ``StepContext`` and the plugin implementation it runs.

Shared by the step runner (which builds the context) and ``session_steps`` (which use it), so
neither imports the other's internals.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cstbatch.outputs.layout import SessionLayout
from cstbatch.plugins import get_registry
from cstbatch.study.options import STEP_SELECTOR
from cstbatch.study.spec import SubjectSpec


@dataclass
class StepContext:
    """What a step function gets: the session, where to write, its options and its logger."""

    spec: SubjectSpec
    layout: SessionLayout
    options: dict[str, Any]
    log: logging.Logger
    implementation: Any = None  # plugins.Implementation for pluggable steps
    spec_plugins_dir: str | None = None


def implementation_for(step: str, options: dict[str, Any], plugins_dir: str | None):
    """The plugin implementation a step uses, or None for built-in-only steps."""
    if step not in STEP_SELECTOR:
        return None
    kind, option = STEP_SELECTOR[step]
    return get_registry(Path(plugins_dir) if plugins_dir else None).get(kind, options[option])
