"""Speed vs accuracy of the template registration stages, on the processed sample study.

For each session and each candidate stage setting, registers the FA-like ICBM template to the
session's FA map exactly as ``cstbatch.steps.register.register_template`` does (same FA
cleaning, template downsampling, crop, centre of mass, Mattes MI with 32 bins and full
sampling, quality warp), only with other per-stage pyramid settings, and reports

* time: wall seconds, and the ratio of CPU seconds to the ``v1`` setting's run in the
  same process on the same session (the machine may be shared: ratios are what to read);
* error vs the sample's truth: mean and max |A_est x - A_true x| (mm, in MNI space) over the
  world coordinates of the FA > 0 voxels of the subject grid.

Then a summary per setting over all sessions, a pass/fail against "mean error within 0.1 mm of
``v1`` and max error within 0.3 mm, on every session", and the fastest setting that
passes. Finally, what the ICBM atlas load (``cstbatch.steps.atlas._load_icbm``) spends its time on.

After ``doit run`` (the sample study into ``derivatives/cstbatch``)::

    python benchmarks/register_speed.py [--out derivatives/cstbatch] [--sample sample_data/generated]
                                        [--sessions sub-02 sub-03_ses-01] [--settings v1 A0 ...]
                                        [--check] [--repeat-v1] [--tilt DEG] [--no-atlas]
                                        [--json result.json]

Default settings and all 5 sessions: about 8 minutes on 2 cores (``--settings all``: ~13).

A setting gives, per stage (translation, rigid, affine), the pyramid passed to dipy's
``AffineRegistration``: iterations per level (coarse -> fine), sigmas (default 3, 1, 0) and
factors (default 4, 2, 1); a stage set to None is skipped (the next one starts where the
previous one ended, or from the centre of mass). Two dipy facts the numbers depend on
(dipy 1.12, scipy L-BFGS-B):

* an iteration count is L-BFGS-B's *function evaluation* budget (``maxfun``), and the
  optimiser finishes its line search first, so 10 means ~11 evaluations and 0 means one
  iteration, ~4 evaluations, at that level: "0" shrinks the finest level, it does not skip it;
* the finest level of dipy's scale space is always the unsmoothed full-size image, whatever
  the last factor and sigma say: factors (4, 2) with iterations (100, 50) run 50 evaluations
  at *full* size, not at half size (settings ``R_f42`` / ``A_f42``).

At full size one MI evaluation costs ~6x one at half size (~0.3 s vs ~0.05 s on the 2 mm sample), so the finest level dominates.
``v1`` is the registration as it was before this benchmark (translation → rigid → affine, each
100/50/10), the reference of the ratios and of the pass rule; ``default`` is what
``register_template`` does now. ``--check`` also runs ``register_template`` itself once per
session and asserts that ``default`` reproduces its transform. ``--repeat-v1`` runs ``v1`` once more
at the end of each session (to see timing drift on a shared machine). ``--tilt DEG`` rotates
each subject's world about the left-right axis first (the truth follows), to see whether a
setting that skips stages still copes with a larger starting misalignment. The "MI evals"
column counts the metric evaluations per level (4x/2x/1x shrink): unlike the times it does not
depend on the machine's load.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cstbatch.engine.threads import limit_threads  # noqa: E402  (before numpy loads its BLAS)

limit_threads()

import numpy as np  # noqa: E402
from nibabel.affines import voxel_sizes  # noqa: E402

SIGMAS = (3.0, 1.0, 0.0)
FACTORS = (4, 2, 1)
STAGES = ("translation", "rigid", "affine")


def lv(*iters, sigmas=SIGMAS, factors=FACTORS):
    """One stage's pyramid: level iterations, sigmas and factors, coarse -> fine, passed to
    dipy's AffineRegistration as they are."""
    return (tuple(iters), tuple(sigmas), tuple(factors))


from cstbatch.steps import register as R_DEFAULT  # noqa: E402

CUR = lv(100, 50, 10)
COARSE2 = lv(100, 50, sigmas=(3.0, 1.0), factors=(4, 2))  # NB: dipy runs its 2nd level at full size
NO = None

#: name -> {stage: lv(...) or None (stage skipped: the next one starts where the last ended)}
SETTINGS: dict[str, dict[str, tuple | None]] = {
    # v1: register_template before this benchmark (T→R→A, all 100/50/10): the reference
    "v1":          {"translation": CUR, "rigid": CUR, "affine": CUR},
    # what register_template does now (cstbatch.steps.register RIGID/AFFINE_LEVEL_ITERS)
    "default":     {"translation": NO, "rigid": lv(*R_DEFAULT.RIGID_LEVEL_ITERS),
                    "affine": lv(*R_DEFAULT.AFFINE_LEVEL_ITERS)},
    # one change each
    "TR50":        {"translation": lv(50, 25, 5), "rigid": lv(50, 25, 5), "affine": CUR},
    "noT":         {"translation": NO, "rigid": CUR, "affine": CUR},
    "R_f42":       {"translation": CUR, "rigid": COARSE2, "affine": CUR},
    "R0":          {"translation": CUR, "rigid": lv(100, 50, 0), "affine": CUR},
    "A5":          {"translation": CUR, "rigid": CUR, "affine": lv(100, 50, 5)},
    "A0":          {"translation": CUR, "rigid": CUR, "affine": lv(100, 50, 0)},
    "A_f42":       {"translation": CUR, "rigid": CUR, "affine": COARSE2},
    # combinations
    "noT+R0":      {"translation": NO, "rigid": lv(100, 50, 0), "affine": CUR},
    "noT+R0+A5":   {"translation": NO, "rigid": lv(100, 50, 0), "affine": lv(100, 50, 5)},
    "noT+R0+A0":   {"translation": NO, "rigid": lv(100, 50, 0), "affine": lv(100, 50, 0)},
    "noT+R50+A5":  {"translation": NO, "rigid": lv(50, 25, 5), "affine": lv(100, 50, 5)},
    "noTR":        {"translation": NO, "rigid": NO, "affine": CUR},
    "noTR+A5":     {"translation": NO, "rigid": NO, "affine": lv(100, 50, 5)},
    "noTR+A0":     {"translation": NO, "rigid": NO, "affine": lv(100, 50, 0)},
}

#: run by default (all 5 sessions: ~8 min on 2 cores); the others with --settings
DEFAULT_SETTINGS = ("v1", "default", "TR50", "noT", "R_f42", "R0", "A5", "A0", "noT+R0+A5", "noTR+A5", "noTR+A0")

MEAN_TOL_MM = 0.1
MAX_TOL_MM = 0.3


def describe(setting: dict) -> str:
    def one(v):
        if v is None:
            return "-"
        txt = "/".join(str(i) for i in v[0])
        if v[1:] != (SIGMAS, FACTORS):
            txt += "(f" + "/".join(str(f) for f in v[2]) + ")"
        return txt
    return " ".join(f"{s[0].upper()}{one(setting.get(s))}" for s in STAGES)


def find_sessions(out: Path) -> dict[str, Path]:
    """key (sub-01_ses-01 / sub-02) -> FA map path."""
    found = {}
    for fa in sorted(out.glob("sub-*/**/dwi/*_model-tensor_param-fa_dwimap.nii.gz")):
        key = fa.name.split("_model-tensor")[0]
        found[key] = fa
    return found


def register(fa_img, template_img, setting: dict):
    """``register_template`` (affine method) with per-stage pyramid settings.

    Returns (subject_to_mni, quality, {stage: CPU seconds}). Same calls as
    cstbatch.steps.register.register_template.
    """
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric, transform_centers_of_mass
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D, TranslationTransform3D

    from cstbatch.steps import register as R

    fa, fa_affine = R._clean_fa(fa_img)
    tpl_full = np.nan_to_num(np.asarray(template_img.dataobj, dtype=np.float32))
    if tpl_full.ndim == 4 and tpl_full.shape[3] == 1:
        tpl_full = tpl_full[..., 0]
    voxel_mm = max(float(np.min(voxel_sizes(np.asarray(fa_affine, float)))), R.MIN_TEMPLATE_VOXEL_MM)
    tpl, tpl_affine = R._downsample_template(tpl_full, np.asarray(template_img.affine, float), voxel_mm)
    static, static_affine = R.crop_to_content(fa, fa_affine)
    current = transform_centers_of_mass(static, static_affine, tpl, tpl_affine).affine
    transforms = {"translation": TranslationTransform3D, "rigid": RigidTransform3D,
                  "affine": AffineTransform3D}
    stage_cpu = {}
    evals = {4: 0, 2: 0, 1: 0}  # MI evaluations per pyramid level (by static grid shrink factor)
    for name in STAGES:
        stage = setting.get(name)
        if stage is None:
            continue
        iters, sigmas, factors = stage
        affreg = AffineRegistration(
            metric=MutualInformationMetric(nbins=32, sampling_proportion=None),
            level_iters=list(iters), sigmas=list(sigmas), factors=list(factors), verbosity=0)
        _count_evaluations(affreg.metric, static.shape, evals)
        c = time.process_time()
        amap = affreg.optimize(static, tpl, transforms[name](), None, static_grid2world=static_affine,
                               moving_grid2world=tpl_affine, starting_affine=current)
        current = amap.affine
        stage_cpu[name] = time.process_time() - c
    reg = R.Registration(subject_to_mni=np.asarray(current, float))
    warped = reg.warp_to_subject(tpl, tpl_affine, fa_img)
    return np.asarray(current, float), R.registration_quality(fa, warped), stage_cpu, evals


def _count_evaluations(metric, full_shape, evals: dict) -> None:
    """Count ``metric``'s cost evaluations per level (instance wrappers; dipy calls these)."""
    setup, dist = metric.setup, metric.distance_and_gradient
    level = {"factor": 1}

    def counting_setup(transform, static, moving, *a, **kw):
        level["factor"] = int(round(full_shape[0] / static.shape[0]))
        return setup(transform, static, moving, *a, **kw)

    def counting_distance(params):
        evals[level["factor"]] = evals.get(level["factor"], 0) + 1
        return dist(params)

    metric.setup, metric.distance_and_gradient = counting_setup, counting_distance


def displacement_error(est: np.ndarray, truth: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    d = est - truth
    n = np.linalg.norm(points @ d[:3, :3].T + d[:3, 3], axis=1)
    return float(n.mean()), float(n.max())


def brain_points(fa_img) -> np.ndarray:
    fa = np.nan_to_num(np.asarray(fa_img.dataobj, dtype=np.float32))
    ijk = np.argwhere(fa.reshape(fa.shape[:3]) > 0).astype(float)
    a = np.asarray(fa_img.affine, float)
    return ijk @ a[:3, :3].T + a[:3, 3]


def tilted(fa_img, truth: np.ndarray, degrees: float):
    """``fa_img`` with its world rotated by ``degrees`` about the x (left-right) axis through the
    centre of its FA > 0 voxels, and the truth subject->MNI transform of the rotated world."""
    import nibabel as nib

    c = brain_points(fa_img).mean(axis=0)
    t = np.radians(degrees)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    shift, back = np.eye(4), np.eye(4)
    shift[:3, 3], back[:3, 3] = -c, c
    P = back @ rot @ shift  # new world = P @ old world
    img = nib.Nifti1Image(np.asarray(fa_img.dataobj), P @ np.asarray(fa_img.affine, float), fa_img.header)
    return img, truth @ np.linalg.inv(P)


def timed(fn, *args):
    w, c = time.perf_counter(), time.process_time()
    res = fn(*args)
    return res, time.perf_counter() - w, time.process_time() - c


# ---------------------------------------------------------------------------------------
def atlas_breakdown_child() -> list[tuple[str, float]]:
    """Where a first ``_load_icbm`` in a process spends its time: its steps, timed one by one
    (run in a fresh interpreter that has imported only numpy, scipy and nibabel, as the
    register step has when it loads the atlas)."""
    import tempfile

    import nibabel as nib
    import scipy.ndimage  # noqa: F401

    rows = []

    def step(label, fn):
        t = time.perf_counter()
        res = fn()
        rows.append((label, time.perf_counter() - t))
        return res

    # what icbm_files paid before it found the folder without importing nilearn (atlas.nilearn_data_dir)
    step("import nilearn.datasets (no longer needed)", lambda: __import__("nilearn.datasets"))
    from cstbatch.steps import atlas as A

    paths = step("icbm_files", A.icbm_files)
    imgs = step("nib.load t1/gm/wm (headers only)", lambda: {k: nib.load(p) for k, p in paths.items()})
    affine = np.asarray(imgs["gm"].affine, float)
    gm = step("read gm .nii.gz (gunzip, /255)", lambda: np.asarray(imgs["gm"].dataobj, dtype=np.float32) / 255.0)
    wm = step("read wm .nii.gz (gunzip, /255)", lambda: np.asarray(imgs["wm"].dataobj, dtype=np.float32) / 255.0)
    rois = step("icbm_rois (brainstem + motor ROIs)", lambda: A.icbm_rois(gm, wm, affine))
    tpl = step("fa_like_template", lambda: A.fa_like_template(gm, wm))
    step("Nifti1Image + _bool_img x3", lambda: ([A._bool_img(r, affine) for r in rois.values()],
                                                nib.Nifti1Image(tpl, affine)))
    atlas = step("_load_icbm() again, files cached by the OS (all steps)", A._load_icbm)
    step("  of which _check_atlas", lambda: A._check_atlas(atlas, "icbm2009a"))
    # what a disk cache of the computed arrays would cost to read back instead
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "icbm.npz"
        np.savez(npz, template=tpl, **{k: np.packbits(v) for k, v in rois.items()})
        npz_c = Path(tmp) / "icbm_c.npz"
        np.savez_compressed(npz_c, template=tpl, **{k: np.packbits(v) for k, v in rois.items()})

        def read(p):
            with np.load(p) as z:
                t = z["template"]
                r = {k: np.unpackbits(z[k])[: t.size].reshape(t.shape).astype(bool) for k in rois}
            return t, r
        step(f"alt: read template+ROIs from a .npz cache ({npz.stat().st_size / 2**20:.0f} MiB)",
             lambda: read(npz))
        step(f"alt: same, compressed .npz ({npz_c.stat().st_size / 2**20:.1f} MiB)", lambda: read(npz_c))
    return rows


def atlas_breakdown(runs: int = 3) -> list[tuple[str, float]]:
    """``atlas_breakdown_child`` in ``runs`` fresh processes; the median of each row."""
    results = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--atlas-child"],
                              capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return [(label, float(np.median([r[i][1] for r in results]))) for i, (label, _) in enumerate(results[0])]


# ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="derivatives/cstbatch", help="processed sample study")
    ap.add_argument("--sample", default="sample_data/generated", help="generated sample (has truth/)")
    ap.add_argument("--sessions", nargs="*", default=None, help="session keys (default: all found)")
    ap.add_argument("--settings", nargs="*", default=None,
                    help=f"default: {' '.join(DEFAULT_SETTINGS)}; known: {' '.join(SETTINGS)}; 'all' = every one")
    ap.add_argument("--check", action="store_true", help="also check 'default' == register_template")
    ap.add_argument("--repeat-v1", action="store_true",
                    help="run 'v1' again after the others (its time = mean of both; shows drift)")
    ap.add_argument("--no-atlas", action="store_true", help="skip the atlas load breakdown")
    ap.add_argument("--tilt", type=float, default=0.0,
                    help="robustness: rotate each subject's world by this many degrees about the "
                         "left-right axis through the brain centre first (truth adjusted to match)")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--atlas-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.atlas_child:
        print(json.dumps(atlas_breakdown_child()))
        return 0

    import nibabel as nib

    from cstbatch.steps.atlas import icbm_atlas

    found = find_sessions(Path(args.out))
    keys = args.sessions or list(found)
    missing = [k for k in keys if k not in found]
    if missing or not keys:
        ap.error(f"no FA map for {missing or 'any session'} under {args.out} (found: {', '.join(found)})")
    names = list(args.settings or DEFAULT_SETTINGS)
    if names == ["all"]:
        names = list(SETTINGS)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    if args.check and "default" not in names:
        names.append("default")
    if "v1" in names:
        names.remove("v1")
    names = ["v1"] + names

    atlas_rows = []
    if not args.no_atlas:  # first, while this process has not imported nilearn nor read the atlas
        atlas_rows = atlas_breakdown()
    t = time.perf_counter()
    atlas = icbm_atlas({})
    print(f"atlas load (icbm_atlas, first call in this process) {time.perf_counter() - t:.2f} s")
    template = atlas.registration_template

    print("settings: iterations per level, coarse->fine, at sigmas 3/1/0 and factors 4/2/1 unless (f..) "
          "says otherwise; '-' = stage skipped")
    for n in names:
        print(f"  {n:16s} {describe(SETTINGS[n])}")
    rows = []
    t_all = time.perf_counter()
    print(f"\n{'session':14s} {'setting':16s} {'wall s':>7s} {'cpu s':>7s} {'ratio':>6s} "
          f"{'mean mm':>8s} {'max mm':>7s} {'d_mean':>7s} {'d_max':>7s} {'quality':>7s} {'cpu s T/R/A':>13s}  "
          "MI evals 4x/2x/1x")
    for key in keys:
        fa_img = nib.load(str(found[key]))
        truth = np.loadtxt(Path(args.sample) / "truth" / key / "subject_to_mni.txt")
        if args.tilt:
            fa_img, truth = tilted(fa_img, truth, args.tilt)
        pts = brain_points(fa_img)
        res = {}
        # 'v1' first and once more at the end: its CPU time is the mean of the two
        order = names + (["v1"] if args.repeat_v1 else [])
        for n in order:
            (est, q, stage_cpu, evals), wall, cpu = timed(register, fa_img, template, SETTINGS[n])
            if n in res:
                res[n]["wall"] = (res[n]["wall"] + wall) / 2
                res[n]["cpu_runs"].append(cpu)
                res[n]["cpu"] = float(np.mean(res[n]["cpu_runs"]))
                assert np.allclose(res[n]["est"], est), "v1 setting not deterministic"
                continue
            mean, mx = displacement_error(est, truth, pts)
            res[n] = {"wall": wall, "cpu": cpu, "cpu_runs": [cpu], "mean": mean, "max": mx,
                      "quality": q, "est": est, "stage_cpu": stage_cpu, "evals": evals}
        if args.check:
            from cstbatch.steps.register import register_template

            ref = register_template(fa_img, atlas, {}).subject_to_mni
            assert np.allclose(ref, res["default"]["est"], atol=1e-9), (key, ref, res["default"]["est"])
            print(f"{key}: 'default' reproduces register_template (max |diff| "
                  f"{np.abs(ref - res['default']['est']).max():.1e})")
        base = res["v1"]
        for n in names:
            r = res[n]
            row = {"session": key, "setting": n, "spec": describe(SETTINGS[n]), "wall_s": r["wall"],
                   "cpu_s": r["cpu"], "ratio": r["cpu"] / base["cpu"], "mean_mm": r["mean"],
                   "max_mm": r["max"], "d_mean_mm": r["mean"] - base["mean"],
                   "d_max_mm": r["max"] - base["max"], "quality": r["quality"],
                   "stage_cpu_s": r["stage_cpu"], "evals": r["evals"],
                   "v1_cpu_runs": base["cpu_runs"] if n == "v1" else None}
            rows.append(row)
            print(f"{key:14s} {n:16s} {row['wall_s']:7.2f} {row['cpu_s']:7.2f} {row['ratio']:6.2f} "
                  f"{row['mean_mm']:8.3f} {row['max_mm']:7.3f} {row['d_mean_mm']:+7.3f} "
                  f"{row['d_max_mm']:+7.3f} {row['quality']:7.4f}  "
                  + "{:>13s}".format("/".join(f"{r['stage_cpu'][s]:.1f}" if s in r["stage_cpu"] else "-"
                                              for s in STAGES))
                  + "  " + "/".join(str(r["evals"].get(f, 0)) for f in (4, 2, 1)))
        runs = base["cpu_runs"]
        if len(runs) > 1:
            print(f"{key:14s} ('v1' CPU s first/last run: {runs[0]:.2f}/{runs[-1]:.2f})")
        sys.stdout.flush()

    print(f"\nsummary over {len(keys)} session(s) (ratio = sum of CPU s / sum of v1's; "
          f"pass = every session: mean <= v1 + {MEAN_TOL_MM} mm and max <= v1 + {MAX_TOL_MM} mm)")
    print(f"{'setting':16s} {'spec':28s} {'cpu s':>7s} {'ratio':>6s} {'mean mm':>8s} {'worst mean':>10s} "
          f"{'worst max':>9s} {'worst d_mean':>12s} {'worst d_max':>11s} pass")
    base_cpu = sum(r["cpu_s"] for r in rows if r["setting"] == "v1")
    summary = []
    for n in names:
        rs = [r for r in rows if r["setting"] == n]
        ok = all(r["d_mean_mm"] <= MEAN_TOL_MM and r["d_max_mm"] <= MAX_TOL_MM for r in rs)
        s = {"setting": n, "spec": describe(SETTINGS[n]), "cpu_s": sum(r["cpu_s"] for r in rs),
             "mean_mm": float(np.mean([r["mean_mm"] for r in rs])),
             "worst_mean_mm": max(r["mean_mm"] for r in rs), "worst_max_mm": max(r["max_mm"] for r in rs),
             "worst_d_mean_mm": max(r["d_mean_mm"] for r in rs),
             "worst_d_max_mm": max(r["d_max_mm"] for r in rs), "pass": ok}
        s["ratio"] = s["cpu_s"] / base_cpu
        summary.append(s)
        print(f"{n:16s} {s['spec']:28s} {s['cpu_s']:7.2f} {s['ratio']:6.2f} {s['mean_mm']:8.3f} "
              f"{s['worst_mean_mm']:10.3f} {s['worst_max_mm']:9.3f} {s['worst_d_mean_mm']:+12.3f} "
              f"{s['worst_d_max_mm']:+11.3f} {'yes' if ok else 'NO'}")
    best = min((s for s in summary if s["pass"]), key=lambda s: s["cpu_s"])
    print(f"fastest passing setting: {best['setting']} ({best['spec']}), {best['ratio']:.2f}x the CPU time "
          f"of v1")
    print(f"registration runs took {time.perf_counter() - t_all:.0f} s")

    if atlas_rows:
        print("\natlas load breakdown: first cstbatch.steps.atlas._load_icbm() of a fresh process, step by step "
              "(s, median of 3 processes)")
        for label, sec in atlas_rows:
            print(f"  {label:62s} {sec:6.2f}")
    if args.json:
        for r in rows:
            r.pop("v1_cpu_runs", None)
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "best": best["setting"],
                                               "atlas": atlas_rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
