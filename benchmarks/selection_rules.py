"""Selection rules that do not see the truth, scored on the pipeline's own tractograms.

    python benchmarks/selection_rules.py [--phantom tubes|juelich] [--seed0 1400] [--n 10]
                                         [--voxel 3] [--cache DIR] [--rules kept,life_kept,...]
                                         [--option NAME=JSON ...]

Why: ``selection_ceiling.py`` showed that an oracle choosing from the same streamlines reaches
the Dice bar on both phantom families, so the question is whether any rule the extraction could
apply without the truth gets closer than the density cleaning. Each rule here is one the field
uses or the ceiling's analysis suggested; each is scored per side against the truth, and the
worst side per subject summarised as ``anatomy_sweep.py`` does:

* ``kept``: the extraction's CST (the baseline);
* ``life_kept`` / ``life_cand``: LiFE (``dipy.tracking.life``, Pestilli et al. 2014) fitted to
  the subject's DWI with every streamline of the tractogram (the candidates cut as the
  extraction cuts them); the kept streamlines with a positive weight, and the candidates whose
  weight is above the 75th percentile of the positive weights. LiFE keeps the streamlines the
  signal needs, a truth-free version of the oracle's few streamlines through the core;
* ``smooth_3`` / ``smooth_8``: the kept streamlines smoothed along their length (Gaussian, sigma
  3 or 8 mm, ends fixed), in case a streamline's wiggle visits the rim;
* ``front_5`` / ``front_0``: the kept streamlines without those whose superior end lies more than
  5 or 0 mm in front of the precentral crown (``atlas.precentral_crown_y``): on both families
  the false positives above MNI z 40 lie in front of the true tract.

Same subjects, tractograms and cache as ``anatomy_sweep.py`` for the same seeds and voxel size.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RULES = ("kept", "life_kept", "life_cand", "smooth_3", "smooth_8", "front_5", "front_3", "front_0")


def smooth_along(streamline: np.ndarray, sigma_mm: float) -> np.ndarray:
    """``streamline`` resampled to 1 mm steps and smoothed along its length, its ends kept."""
    from dipy.tracking.streamline import length, set_number_of_points
    from scipy.ndimage import gaussian_filter1d

    s = np.asarray(streamline, np.float64)
    total = float(length(s))
    n = max(int(np.ceil(total)) + 1, 3)
    r = set_number_of_points(s, n)
    out = gaussian_filter1d(r, sigma_mm / (total / (n - 1)), axis=0, mode="nearest")
    out[0], out[-1] = r[0], r[-1]
    return out


def front_offsets(streamlines, subject_to_mni: np.ndarray) -> np.ndarray:
    """Per streamline (subject space), how far its superior end lies in front of the precentral
    crown (``extract_corridor.crown_offset``, which ``extract_front_mm`` reads)."""
    from cstbatch.steps.extract_corridor import crown_offset

    return np.asarray([crown_offset(np.asarray(s, np.float64) @ subject_to_mni[:3, :3].T + subject_to_mni[:3, 3])
                       for s in streamlines], float)


def life_weights(dwi: np.ndarray, gtab, streamlines, affine: np.ndarray) -> np.ndarray:
    """LiFE weight per streamline (voxel coordinates handed to dipy with an identity affine, the
    gradient table in the voxel axes, as the tracker's)."""
    from dipy.tracking import life

    inv = np.linalg.inv(affine)
    vox = [np.asarray(s, np.float64) @ inv[:3, :3].T + inv[:3, 3] for s in streamlines]
    return np.asarray(life.FiberModel(gtab).fit(np.asarray(dwi, np.float64), vox, np.eye(4)).beta)


def side_rules(subj: dict, voxel: float, acq: dict, options: dict, rules=RULES) -> dict:
    """{side: {rule: (Dice, precision, recall, streamlines)}} for one cached subject."""
    from anatomy_sweep import _subject, extraction
    from dipy.core.gradients import gradient_table
    from selection_ceiling import voxel_incidence

    from cstbatch.steps.extract import selected_streamlines
    from cstbatch.steps.gradients import bids_to_voxel_axes
    from cstbatch.steps.register import streamlines_to_mni

    sl, shape, aff = subj["streamlines"], subj["shape"], subj["affine"]
    extract, atlas, opts = extraction(subj, "corridor", options)
    mni = streamlines_to_mni(sl, subj["reg"])
    kept_sel = extract(mni, atlas, opts)
    cand_sel = extract(mni, atlas, {**opts, "extract_core_filter": False})
    cand = {s: selected_streamlines(sl, cand_sel, s) for s in ("left", "right")}
    beta = {}
    if any(r.startswith("life") for r in rules):
        raw = _subject(subj["seed"], voxel, acq)  # the same subject, regenerated: LiFE needs its DWI
        gtab = gradient_table(raw.bvals, bvecs=bids_to_voxel_axes(raw.bvecs, aff), b0_threshold=50)
        taken = set(map(int, cand_sel["left"])) | set(map(int, cand_sel["right"]))
        rest = [np.asarray(s, np.float64) for i, s in enumerate(sl) if i not in taken and len(s) >= 2]
        w = life_weights(raw.data, gtab, cand["left"] + cand["right"] + rest, aff)
        beta = {"left": w[:len(cand["left"])], "right": w[len(cand["left"]):len(cand["left"]) + len(cand["right"])]}
    out = {}
    for side in ("left", "right"):
        truth = subj["masks"][f"cst_{side}"].ravel()
        kept = selected_streamlines(sl, kept_sel, side)
        in_kept = np.isin(np.asarray(cand_sel[side]), np.asarray(kept_sel[side]))
        offsets = front_offsets(kept, subj["reg"].subject_to_mni)
        chosen = {}
        for rule in rules:
            if rule == "kept":
                chosen[rule] = kept
            elif rule == "life_kept":
                chosen[rule] = [s for s, w, k in zip(cand[side], beta[side], in_kept) if w > 0 and k]
            elif rule == "life_cand":
                pos = beta[side][beta[side] > 0]
                cut = np.quantile(pos, 0.75) if len(pos) else np.inf
                chosen[rule] = [s for s, w in zip(cand[side], beta[side]) if w > cut]
            elif rule.startswith("smooth_"):
                chosen[rule] = [smooth_along(s, float(rule[7:])) for s in kept]
            elif rule.startswith("front_"):
                chosen[rule] = [s for s, o in zip(kept, offsets) if o <= float(rule[6:])]
        row = {}
        for rule, pool in chosen.items():
            v = np.asarray(voxel_incidence(pool, shape, aff).sum(0)).ravel() > 0 if pool else np.zeros(truth.size, bool)
            tp = float((v & truth).sum())
            row[rule] = (2 * tp / (v.sum() + truth.sum()), tp / max(v.sum(), 1), tp / truth.sum(), len(pool))
        out[side] = row
    return out


def main(argv=None) -> int:
    from selection_ceiling import cached_subjects, options_from, subject_arguments

    from cstbatch.engine.threads import limit_threads

    ap = subject_arguments(__doc__.splitlines()[0])
    ap.add_argument("--rules", default=",".join(RULES))
    args = ap.parse_args(argv)
    rules = [r for r in args.rules.split(",") if r]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        ap.error(f"unknown rule(s) {', '.join(unknown)}; choose from {', '.join(RULES)}")
    limit_threads()
    options = options_from(args)  # extraction options (e.g. extract_tdi_parts) change what is kept
    worst = {r: [] for r in rules}
    pr = {r: [] for r in rules}
    print("seed\tside\t" + "\t".join(rules) + "\t(Dice, streamlines)", flush=True)
    for seed, subj, acq in cached_subjects(args, options):
        res = side_rules(subj, args.voxel, acq, options, rules)
        for side, row in res.items():
            print(f"{seed}\t{side}\t" + "\t".join(f"{row[r][0]:.3f} ({row[r][3]})" for r in rules), flush=True)
        for r in rules:
            worst[r].append(min(res["left"][r][0], res["right"][r][0]))
            pr[r] += [res[s][r][1:3] for s in ("left", "right")]
    print()
    for r in rules:
        w, p = np.array(worst[r]), np.array(pr[r])
        print(f"{r:10s} worst side min {w.min():.3f} median {np.median(w):.3f}; precision {np.median(p[:, 0]):.2f} "
              f"recall {np.median(p[:, 1]):.2f}; subjects with both sides >= 0.70: {int((w >= 0.70).sum())}/{len(w)}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
