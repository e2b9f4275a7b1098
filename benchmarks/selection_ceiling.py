"""How far the choice of streamlines alone could take the Dice bar: an oracle that sees the truth.

    python benchmarks/selection_ceiling.py [--phantom tubes|juelich] [--seed0 1400] [--n 10]
                                           [--voxel 3] [--cache DIR] [--option NAME=JSON ...]

Why: issue 14's phantom bar (Dice >= 0.70 on every side) is unmet, and every extraction change
measured so far trades one phantom family against the other. ``phantom_ceiling.py`` says what a
tractogram that fills the true bundle would score; this says what the best choice from the
tractogram the pipeline really made would score, so a landing can tell whether the tracking or
the extraction stands between a subject and the bar. Per side it prints the Dice of

* ``kept``: the extraction's CST (what ``anatomy_sweep.py`` scores);
* ``best_of_kept``: the best subset of the kept streamlines;
* ``best_of_candidates``: the best subset of the side's candidates, the streamlines that pass
  the anatomical tests before the density cleaning (the extractor run with
  ``extract_core_filter=false``), cut as the extraction cuts them;
* ``best_of_all``: the best subset of every streamline of the tractogram, uncut.

"Best" is greedy forward selection against the truth mask (:func:`greedy_best_dice`): add the
streamline that raises the Dice of the visited voxels most, until none does. Greedy is not
exact, so the numbers are close lower bounds of the true optimum; they are upper bounds of what
any rule that does not see the truth can choose from the same streamlines. The chosen subsets
are small (a few dozen streamlines): a visited-voxel Dice rewards a few streamlines through the
core over many that also graze the rim. So the oracle says where the tract could come from, not
that a tract of 50 streamlines is a good tract.

Same subjects, tractograms and cache as ``anatomy_sweep.py`` for the same seeds, voxel size and
options.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def voxel_incidence(streamlines, shape, affine):
    """(streamlines × voxels) sparse 0/1 matrix: which voxels each streamline visits, counted as
    ``cstbatch.steps.metrics.visited_voxel_mask`` counts them (its ``visited_voxels``)."""
    from scipy.sparse import csr_matrix

    from cstbatch.steps.metrics import visited_voxels

    shape = tuple(int(v) for v in shape[:3])
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for j, s in enumerate(streamlines):
        lin = np.unique(np.ravel_multi_index(visited_voxels([np.asarray(s, np.float64)], shape, affine).T, shape))
        rows.append(np.full(len(lin), j, np.int64))
        cols.append(lin)
    r, c = np.concatenate(rows), np.concatenate(cols)
    return csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(streamlines), int(np.prod(shape))))


def greedy_best_dice(incidence, truth: np.ndarray) -> tuple[float, np.ndarray]:
    """(Dice, chosen rows): greedy forward selection of the rows of ``incidence`` whose union of
    visited voxels has the highest Dice against ``truth`` (bool, flattened like the columns).
    Each step adds the row that raises the Dice most; it stops when no row raises it."""
    t = np.asarray(truth, bool).ravel().astype(np.float32)
    n_truth = float(t.sum())
    visited = np.zeros(incidence.shape[1], np.float32)
    chosen = np.zeros(incidence.shape[0], bool)
    tp = fp = best = 0.0
    while True:
        free = 1.0 - visited
        new_tp = incidence @ (free * t)
        new_fp = incidence @ (free * (1.0 - t))
        score = 2.0 * (tp + new_tp) / np.maximum(tp + fp + new_tp + new_fp + n_truth, 1e-9)
        score[chosen] = -1.0
        if not len(score):
            break
        j = int(np.argmax(score))
        if score[j] <= best + 1e-9:
            break
        best, chosen[j] = float(score[j]), True
        tp, fp = tp + float(new_tp[j]), fp + float(new_fp[j])
        visited[incidence[j].indices] = 1.0
    return best, np.flatnonzero(chosen)


def side_ceilings(subj: dict, options: dict) -> dict:
    """{side: {kept, best_of_kept, best_of_candidates, best_of_all: (Dice, streamlines chosen or
    kept)}} for one cached subject of ``anatomy_sweep``."""
    from anatomy_sweep import extraction

    from cstbatch.sample.accuracy import dice
    from cstbatch.steps.extract import selected_streamlines
    from cstbatch.steps.metrics import visited_voxel_mask
    from cstbatch.steps.register import streamlines_to_mni

    sl, shape, aff = subj["streamlines"], subj["shape"], subj["affine"]
    extract, atlas, opts = extraction(subj, "corridor", options)
    mni = streamlines_to_mni(sl, subj["reg"])
    kept_sel = extract(mni, atlas, opts)
    cand_sel = extract(mni, atlas, {**opts, "extract_core_filter": False})
    every = voxel_incidence(sl, shape, aff)
    out = {}
    for side in ("left", "right"):
        truth = subj["masks"][f"cst_{side}"]
        kept = selected_streamlines(sl, kept_sel, side)
        v = visited_voxel_mask(kept, shape, aff)
        row = {"kept": (dice(v, truth) if v.any() else 0.0, len(kept))}
        for name, pool in (("best_of_kept", kept), ("best_of_candidates", selected_streamlines(sl, cand_sel, side))):
            d, chosen = greedy_best_dice(voxel_incidence(pool, shape, aff), truth)
            row[name] = (d, len(chosen), len(pool))
        touching = np.flatnonzero(every @ truth.ravel().astype(np.float32) > 0)
        d, chosen = greedy_best_dice(every[touching], truth)
        row["best_of_all"] = (d, len(chosen), len(sl))
        out[side] = row
    return out


COLUMNS = ("kept", "best_of_kept", "best_of_candidates", "best_of_all")


def subject_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments that name a set of ``anatomy_sweep.py``'s subjects (its cache serves), shared
    with ``selection_rules.py``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--phantom", default="tubes", choices=("tubes", "juelich"))
    ap.add_argument("--seed0", type=int, default=1400)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--voxel", type=float, default=3.0)
    ap.add_argument("--anatomy-version", type=int, default=None, choices=(1, 2, 3),
                    help="as anatomy_sweep.py's (default: its default)")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--option", action="append", default=[], help="NAME=JSON, as anatomy_sweep.py's")
    return ap


def options_from(args) -> dict:
    """The default options with ``--option NAME=JSON`` applied."""
    from cstbatch.study.options import defaults

    options = defaults()
    for item in args.option:
        name, _, value = item.partition("=")
        options[name] = json.loads(value)
    return options


def cached_subjects(args, options: dict):
    """(seed, subject, acquisition) for each seed of ``args``, as ``anatomy_sweep.py`` made and cached it."""
    from anatomy_sweep import ACQUISITION, _cached

    acq = {**ACQUISITION, "phantom": args.phantom}  # anatomy_sweep.py's defaults, so its caches serve
    if args.anatomy_version is not None:
        acq["anatomy_version"] = args.anatomy_version
    for seed in range(args.seed0, args.seed0 + args.n):
        yield seed, _cached(seed, args.voxel, options, args.cache, acq), acq


def main(argv=None) -> int:
    from cstbatch.engine.threads import limit_threads

    args = subject_arguments(__doc__.splitlines()[0]).parse_args(argv)
    limit_threads()
    options = options_from(args)
    worst = {c: [] for c in COLUMNS}
    print("seed\tside\t" + "\t".join(COLUMNS) + "\t(Dice, streamlines chosen / of)", flush=True)
    for seed, subj, _ in cached_subjects(args, options):
        res = side_ceilings(subj, options)
        for side, row in res.items():
            cells = [f"{row['kept'][0]:.3f} ({row['kept'][1]})"]
            cells += [f"{row[c][0]:.3f} ({row[c][1]}/{row[c][2]})" for c in COLUMNS[1:]]
            print(f"{seed}\t{side}\t" + "\t".join(cells), flush=True)
        for c in COLUMNS:
            worst[c].append(min(res["left"][c][0], res["right"][c][0]))
    print()
    for c in COLUMNS:
        w = np.array(worst[c])
        print(f"{c:20s} worst side min {w.min():.3f} median {np.median(w):.3f}; "
              f"subjects with both sides >= 0.70: {int((w >= 0.70).sum())}/{len(w)}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
