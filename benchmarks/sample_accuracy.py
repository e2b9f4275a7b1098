"""Accuracy of a processed sample study against its ground truth, one row per session.

After ``doit run`` (the sample study into ``derivatives/cstbatch``)::

    python benchmarks/sample_accuracy.py [--out derivatives/cstbatch] [--sample sample_data/generated]
                                         [--json result.json]

Prints, per session, Dice of each extracted CST side with its truth mask and with the other
side's mask (swaps), FA mean vs noise-free FA, the distractor share and, for the lesioned
session, where the FA profile's minimum lies; then which bars of the CST extraction issue a
session misses (``cstbatch.sample.accuracy.BARS``). Exit status 1 when any bar is missed. The
numbers are the ones ``tests/test_sample_study.py`` asserts.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = ("key", "orientation", "streamlines_left", "streamlines_right", "dice_left", "dice_right",
           "swap_left", "swap_right", "fa_left", "fa_truth_left", "fa_right", "fa_truth_right",
           "distractor_share", "fa_laterality")


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main(argv=None) -> int:
    from cstbatch.sample.accuracy import BARS, check_study, failures

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="derivatives/cstbatch")
    ap.add_argument("--sample", default="sample_data/generated")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = check_study(Path(args.out), Path(args.sample))
    print("\t".join(COLUMNS))
    for row in rows:
        print("\t".join(_fmt(row.get(c)) for c in COLUMNS))
    missed = 0
    for row in rows:
        if "lesion_side" in row:
            print(f"{row['key']}: lesion ({row['lesion_side']}) FA profile minimum at node "
                  f"{row['lesion_min_node']}, MNI z {row['lesion_min_z_mni']:.1f} mm, inside the segment: "
                  f"{row['lesion_min_in_segment']}; FA laterality {row['fa_laterality']:.3f}")
        for problem in failures(row):
            missed += 1
            print(f"{row['key']}: MISSED {problem}")
    print(f"bars {BARS}: {'all met' if not missed else f'{missed} missed'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
