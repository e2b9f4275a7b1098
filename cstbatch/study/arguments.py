"""The command-line arguments that define a study, shared by ``cstbatch`` and ``cstbatch submit``.

They live with the study (not in the CLI) so that the cluster layer can build the same study
from the same arguments without importing the command line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cstbatch.errors import CstBatchError
from cstbatch.study.options import parse_cli_value


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments that define a study, shared by every command that processes one."""
    p.add_argument("--manifest", type=Path, help="study manifest (JSON or YAML) instead of a BIDS folder")
    p.add_argument("--participant-label", nargs="+", help="only these subjects (with or without sub-)")
    p.add_argument("--exclude-participant-label", nargs="+", help="skip these subjects")
    p.add_argument("--subject-pattern", default="sub-*", help="glob for subject folders (default sub-*)")
    p.add_argument("--session-pattern", default="ses-*", help="glob for session folders (default ses-*)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="NAME=VALUE",
                   help="override an option for every session (see `cstbatch options`)")
    p.add_argument("--plugins-dir", type=Path, help="folder of local plugin files (default ./plugins)")


def parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise CstBatchError(f"--option {pair!r}: expected NAME=VALUE")
        options[name] = parse_cli_value(name, value)
    return options


def study_from_args(args, inputs: list[str], out_dir: str):
    """Load the study the arguments describe; print skipped folders; refuse an empty study."""
    from cstbatch.study.load import load_study

    study = load_study(bids_dir=Path(inputs[0]) if inputs else None, manifest=args.manifest,
                       output_dir=Path(out_dir).resolve(), options=parse_options(args.option),
                       participant_label=args.participant_label,
                       exclude_participant_label=args.exclude_participant_label,
                       subject_pattern=args.subject_pattern, session_pattern=args.session_pattern,
                       plugins_dir=args.plugins_dir.resolve() if args.plugins_dir else None)
    for where, why in study.skipped:
        print(f"skipped {where}: {why}")
    if not study.subjects:
        raise CstBatchError("no DWI series found to process")
    return study
