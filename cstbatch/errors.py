"""Error types with messages a user can act on.

Every error that reaches a user is one line naming the file (or JSON path) and the cause, so a
study of hundreds of sessions can be triaged from the summary alone. The `category` attribute is
what `batch_summary.json` reports (input, dependency, processing, timeout, system, plugin, qc).
"""
from __future__ import annotations

from pathlib import Path


class CstBatchError(Exception):
    """Base class: a failure cstbatch understands and can explain in one line."""

    category = "processing"


class InputError(CstBatchError):
    """The user's input file is unusable; the message names the file and the cause."""

    category = "input"

    def __init__(self, path: str | Path | None, cause: str):
        self.path = None if path is None else str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}" if self.path else cause)


class ManifestError(CstBatchError):
    """A study definition (manifest or options) is invalid; lists every problem at once."""

    category = "input"

    def __init__(self, source: str | Path, problems: list[str]):
        self.source = str(source)
        self.problems = list(problems)
        lines = "; ".join(self.problems)
        super().__init__(f"{self.source}: {lines}")


class OptionError(CstBatchError):
    """An option name or value is not acceptable."""

    category = "input"


class PluginError(CstBatchError):
    """A plugin is broken (bad hook, duplicate name, import failure, or an exception inside it)."""

    category = "plugin"


class DependencyError(CstBatchError):
    """An external tool or package the step needs is missing or failed (e.g. dcm2niix)."""

    category = "dependency"


class QcFailure(CstBatchError):
    """QC flags the user chose to fail on (option ``qc_fail``); ``qc_flags`` lists them."""

    category = "qc"

    def __init__(self, flags):
        self.qc_flags = [dict(f) for f in flags]
        super().__init__("qc_fail: " + "; ".join(f"{f['code']}: {f['message']}" for f in self.qc_flags))


class UpstreamFailed(CstBatchError):
    """An earlier step of the same session failed, so this one did not run."""

    category = "upstream"
