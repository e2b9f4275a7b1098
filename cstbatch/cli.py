"""The ``cstbatch`` command: a BIDS-App front door to the same doit tasks as ``dodo.py``.

    cstbatch BIDS_DIR OUT_DIR participant [--participant-label 01 02] [-n 2] [--dry-run]
    cstbatch --manifest study.json OUT_DIR participant
    cstbatch sample-data OUT          write the synthetic sample study
    cstbatch plugins                  list every registered implementation
    cstbatch options                  print the options table
    cstbatch submit --slurm [BIDS_DIR] OUT_DIR …   run the unfinished sessions on a SLURM cluster
    cstbatch status OUT_DIR           sessions' states from the saved state (also during a run)
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cstbatch.cluster.slurm import cmd_submit
from cstbatch.cluster.status import cmd_status
from cstbatch.engine.threads import limit_threads
from cstbatch.errors import CstBatchError
from cstbatch.study.arguments import add_study_arguments, study_from_args
from cstbatch.study.options import options_table_markdown

COMMANDS = ("sample-data", "plugins", "options", "submit", "status")






def _bids_app_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cstbatch", description="Batch CST assessment of a diffusion-MRI study "
                                "(BIDS-App style). Other commands: " + ", ".join(COMMANDS))
    p.add_argument("paths", nargs="+", metavar="BIDS_DIR OUT_DIR {participant,group}",
                   help="BIDS folder (omit with --manifest), output folder, analysis level")
    add_study_arguments(p)
    p.add_argument("-n", "--jobs", type=int, default=1, help="sessions processed side by side")
    p.add_argument("--mem-gb", type=float, help="memory budget: caps how many sessions run at once, "
                   "from each session's image size")
    p.add_argument("--dry-run", action="store_true", help="print which tasks would run and why; run nothing")
    p.add_argument("--stop-on-first-crash", action="store_true", help="stop at the first failure (debugging)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every task's output")
    return p




def bids_app(argv: list[str]) -> int:
    from cstbatch.engine.runner import run_doit

    args = _bids_app_parser().parse_args(argv)
    expected = 2 if args.manifest else 3
    if len(args.paths) != expected:
        raise CstBatchError("expected BIDS_DIR OUT_DIR participant" if not args.manifest
                            else "with --manifest, expected OUT_DIR participant")
    *inputs, out_dir, level = args.paths
    if level not in ("participant", "group"):
        raise CstBatchError(f"analysis level must be participant or group, not {level!r}")
    study = study_from_args(args, inputs, out_dir)
    if args.dry_run:
        from cstbatch.engine.plan import plan_text

        print(plan_text(study), end="")
        return 0
    run_args = ["run", "--verbosity", "2" if args.verbose else "1"]
    if level == "group":
        run_args.append("aggregate")
    elif not (args.stop_on_first_crash or args.participant_label or args.exclude_participant_label):
        # a plain full run: a matching fingerprint of the last complete run says "nothing to
        # do" without building doit's tasks; anything else is doit's call (cstbatch.engine.fingerprint)
        from cstbatch.engine.fingerprint import nothing_to_do

        if nothing_to_do(study):
            return 0
    from cstbatch.engine.memory import jobs_within_budget

    jobs = jobs_within_budget(study.subjects, args.mem_gb, args.jobs)
    if jobs < args.jobs:
        print(f"cstbatch: --mem-gb {args.mem_gb:g} allows {jobs} sessions at once (asked for {args.jobs})")
    return run_doit(study, run_args, jobs=jobs, stop_on_first_crash=args.stop_on_first_crash)


def cmd_plugins(argv: list[str]) -> int:
    from cstbatch.plugins import get_registry

    registry = get_registry()
    impls = list(registry.all())
    width = max([20] + [len(impl.name) + 1 for impl in impls])  # a plugin's long name keeps its column
    print(f"{'kind':<9} {'name':<{width}} {'version':<8} source")
    for impl in impls:
        print(f"{impl.kind:<9} {impl.name:<{width}} {impl.version:<8} {impl.source}")
    for problem in registry.problems:
        print(f"skipped: {problem}")
    return 0


def cmd_sample_data(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="cstbatch sample-data", description="write the synthetic sample study")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    from cstbatch import sample

    kwargs = {} if args.seed is None else {"seed": args.seed}
    sample.generate_sample_study(args.out, log=print, **kwargs)
    print(f"sample study written to {args.out}")
    return 0


def cmd_options(argv: list[str]) -> int:
    print(options_table_markdown())
    return 0


def main(argv: list[str] | None = None) -> int:
    limit_threads()
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    handlers = {"sample-data": cmd_sample_data, "plugins": cmd_plugins, "options": cmd_options,
                "submit": cmd_submit, "status": cmd_status}
    try:
        if argv and argv[0] in handlers:
            return handlers[argv[0]](argv[1:])
        return bids_app(argv)
    except CstBatchError as exc:
        print(f"cstbatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one by the progress reporter
        print("cstbatch: interrupted; finished tasks are saved, run again to continue", file=sys.stderr)
        return 130


