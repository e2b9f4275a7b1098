"""The synthetic sample study: determinism, gradient conventions, truth, DICOM round trip.

Everything runs at 4 mm (the study at 2 mm is the shipped default; 4 mm has the same files,
8x fewer voxels). One study is generated per module and regenerated once in place to check
byte-identical output.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cstbatch import sample
from cstbatch.sample.phantom import centreline, make_phantom_session

VOX = 4.0
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# helpers (independent re-implementations of the conventions, not the module's own)
# --------------------------------------------------------------------------------------------

def unit_axes(affine):
    lin = np.asarray(affine, float)[:3, :3]
    return lin / np.linalg.norm(lin, axis=0)


def bids_to_world(bvecs, affine, honour_flip=True):
    """BIDS .bvec rows (N, 3) → world directions; ``honour_flip=False`` is the naive reader."""
    v = np.array(bvecs, float)
    if honour_flip and np.linalg.det(np.asarray(affine)[:3, :3]) > 0:
        v[:, 0] *= -1
    return v @ unit_axes(affine).T


def read_dwi(stem: Path):
    img = nib.load(str(stem) + ".nii.gz")
    bvals = np.loadtxt(str(stem) + ".bval")
    bvecs = np.loadtxt(str(stem) + ".bvec").T
    return img, bvals, bvecs


def world_principal_dirs(signal, bvals, bvecs, affine, honour_flip=True):
    """Principal eigenvectors (world) of a dipy tensor fit; gtab along the voxel axes."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    v = np.array(bvecs, float)
    if honour_flip and np.linalg.det(np.asarray(affine)[:3, :3]) > 0:
        v[:, 0] *= -1
    gtab = gradient_table(np.asarray(bvals, float), bvecs=v)
    fit = TensorModel(gtab).fit(np.asarray(signal, float))
    return fit.evecs[..., :, 0] @ unit_axes(affine).T


def centreline_dirs_subject(bundle, ijk, affine, subject_to_mni):
    """Tangent of the bundle's MNI centre line nearest each voxel, mapped to subject world."""
    cl = centreline(bundle)
    v2m = subject_to_mni @ affine
    mni = ijk @ v2m[:3, :3].T + v2m[:3, 3]
    dist, idx = cl.tree.query(mni)
    t = cl.tangents[idx] @ np.linalg.inv(subject_to_mni)[:3, :3].T
    return t / np.linalg.norm(t, axis=1, keepdims=True), dist, cl.radius[idx]


def sha_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# the study at 4 mm
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "study"
    sample.generate_sample_study(out, voxel_mm=VOX, log=lambda msg: None)
    return out


def test_public_api():
    assert isinstance(sample.SAMPLE_VERSION, str) and sample.SAMPLE_VERSION
    assert callable(sample.generate_sample_study) and callable(sample.sample_outputs)


def test_outputs_listed_and_bytes_deterministic(study):
    listed = sample.sample_outputs(study, voxel_mm=VOX)
    assert len(listed) == len(set(listed))
    on_disk = {p for p in study.rglob("*") if p.is_file()}
    assert set(listed) == on_disk
    before = sha_tree(study)
    # regenerate in place: same bytes, the old tree swapped out, no staging left behind
    sample.generate_sample_study(study, voxel_mm=VOX, log=lambda msg: None)
    assert sha_tree(study) == before
    assert not [p for p in study.iterdir() if p.name.startswith(".")]


def test_per_session_generation_gives_the_same_bytes(study, tmp_path):
    """The doit tasks write the study session by session: same files, same bytes."""
    out = tmp_path / "by_session"
    for spec in reversed(sample.SESSIONS):  # any order
        sample.generate_sample_session(out, spec.key, voxel_mm=VOX, log=lambda msg: None)
        assert {p for p in out.rglob("*") if p.is_file()} >= set(sample.session_outputs(out, spec, voxel_mm=VOX))
    sample.write_study_files(out, voxel_mm=VOX)
    assert sha_tree(out) == sha_tree(study)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    with pytest.raises(KeyError, match="no sample session"):
        sample.generate_sample_session(out, "sub-99", voxel_mm=VOX)


def test_gzip_headers_have_no_timestamp(study):
    for p in study.rglob("*.nii.gz"):
        head = p.read_bytes()[:10]
        assert head[:2] == b"\x1f\x8b"
        assert head[4:8] == b"\x00\x00\x00\x00", p  # MTIME
        assert head[3] & 0x08 == 0, p               # no FNAME


def test_layout(study):
    bids = study / "bids"
    desc = json.loads((bids / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] and desc["Name"]
    rows = [line.split("\t") for line in (bids / "participants.tsv").read_text().splitlines()]
    assert rows[0] == ["participant_id", "age", "sex"]
    assert [r[0] for r in rows[1:]] == ["sub-01", "sub-02", "sub-03"]
    for rel in ["sub-01/ses-01/dwi/sub-01_ses-01_dwi", "sub-01/ses-02/dwi/sub-01_ses-02_dwi",
                "sub-02/dwi/sub-02_dwi", "sub-03/ses-01/dwi/sub-03_ses-01_dwi"]:
        img, bvals, bvecs = read_dwi(bids / rel)
        assert img.ndim == 4 and img.shape[3] == bvals.size == bvecs.shape[0] >= 35
        assert (bvals == 0).sum() >= 5 and (bvals == 1000).sum() >= 30
        assert img.header.get_sform(coded=True)[1] == 1
        lin = img.affine[:3, :3]
        assert np.abs(unit_axes(lin) - np.diag(np.diag(unit_axes(lin)))).max() > 0.05  # oblique
        assert json.loads((bids / (rel + ".json")).read_text())["Modality"] == "MR"
    dets = {k: np.sign(np.linalg.det(nib.load(bids / f"{k}.nii.gz").affine[:3, :3]))
            for k in ["sub-01/ses-01/dwi/sub-01_ses-01_dwi", "sub-02/dwi/sub-02_dwi"]}
    assert list(dets.values()) == [-1, 1]  # LAS and RAS
    # ses-02 of sub-01: same anatomy and grid, different noise
    a = nib.load(bids / "sub-01/ses-01/dwi/sub-01_ses-01_dwi.nii.gz")
    b = nib.load(bids / "sub-01/ses-02/dwi/sub-01_ses-02_dwi.nii.gz")
    assert np.allclose(a.affine, b.affine) and a.shape == b.shape
    assert not np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    assert len(list((study / "dicom/sub-04/ses-01").glob("*.dcm"))) % 37 == 0


# --------------------------------------------------------------------------------------------
# gradient conventions
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", ["LAS", "RAS"])
def test_bvecs_match_fibres_in_memory(orientation):
    s = make_phantom_session(seed=123, voxel_mm=VOX, orientation=orientation, snr=0,
                             compute_fa=False)
    det = np.linalg.det(s.affine[:3, :3])
    assert (det < 0) == (orientation == "LAS")
    # the written bvecs, undone correctly, are the scanner's world gradients
    assert np.allclose(bids_to_world(s.bvecs, s.affine), s.gradients_world, atol=1e-9)
    ijk = np.argwhere(s.fractions["cst_left"] > 0.95)
    assert len(ijk) >= 5
    truth, dist, _ = centreline_dirs_subject("cst_left", ijk, s.affine, s.subject_to_mni)
    sig = s.signal[tuple(ijk.T)]
    e1 = world_principal_dirs(sig, s.bvals, s.bvecs, s.affine)
    cos = np.abs(np.sum(e1 * truth, axis=1))
    assert cos.min() > 0.9, cos
    # the voxel where forgetting the x flip hurts most: its voxel-axis x component² ≈ 0.5
    vx2 = (truth @ unit_axes(s.affine))[:, 0] ** 2
    k = int(np.argmin(np.abs(vx2 - 0.5)))
    assert 0.15 < vx2[k] < 0.85
    naive = world_principal_dirs(sig[k], s.bvals, s.bvecs, s.affine, honour_flip=False)
    naive_cos = abs(float(naive @ truth[k]))
    if orientation == "RAS":
        assert naive_cos < 0.9, "ignoring the BIDS x flip must mirror the RAS subject's fibres"
    else:
        assert naive_cos > 0.9, "LAS (det < 0) bvecs carry no flip"


def test_b_value_sets_the_shell_and_the_attenuation():
    """A b 2500 session (the held-back clinical scans reach it) is simulated at that b-value, not
    relabelled: in background white matter (one Gaussian compartment) ln(S/S0) of every
    direction is 2.5 times its b 1000 value (to 1 %: the voxels hold traces of grey matter),
    and the CST still points along its centre line."""
    kw = dict(seed=123, voxel_mm=VOX, orientation="RAS", snr=0, compute_fa=False, n_b0=2, n_directions=30)
    low, high = make_phantom_session(**kw), make_phantom_session(b_value=2500.0, **kw)
    assert sorted(set(high.bvals.tolist())) == [0.0, 2500.0] and high.bvals.size == 32
    assert np.array_equal(low.bvals > 0, high.bvals > 0)
    wm = tuple(np.argwhere(high.fractions["wm"] > 0.999).T)
    assert len(wm[0]) >= 5
    dw = high.bvals > 0

    def log_att(sess):
        sig = sess.signal[wm].astype(np.float64)
        return np.log(sig[:, dw] / sig[:, ~dw].mean(axis=1, keepdims=True))

    assert np.allclose(log_att(high), 2.5 * log_att(low), rtol=0.01)
    ijk = np.argwhere(high.fractions["cst_left"] > 0.95)
    truth, _, _ = centreline_dirs_subject("cst_left", ijk, high.affine, high.subject_to_mni)
    e1 = world_principal_dirs(high.signal[tuple(ijk.T)], high.bvals, high.bvecs, high.affine)
    assert np.abs(np.sum(e1 * truth, axis=1)).min() > 0.9


@pytest.mark.parametrize("rel,orientation", [
    ("sub-01/ses-01/dwi/sub-01_ses-01_dwi", "LAS"),
    ("sub-02/dwi/sub-02_dwi", "RAS"),
])
def test_written_bvecs_match_fibres(study, rel, orientation):
    img, bvals, bvecs = read_dwi(study / "bids" / rel)
    key = rel.split("/dwi/")[1][: -len("_dwi")]
    s2m = np.loadtxt(study / "truth" / key / "subject_to_mni.txt")
    assert s2m.shape == (4, 4)
    ijk, truth = [], []
    for side in ("cst_left", "cst_right"):
        mask = np.asanyarray(nib.load(study / "truth" / key / f"{side}_mask.nii.gz").dataobj) > 0
        vox = np.argwhere(mask)
        ijk.append(vox)
        truth.append(centreline_dirs_subject(side, vox, img.affine, s2m)[0])
    ijk, truth = np.concatenate(ijk), np.concatenate(truth)
    assert len(ijk) >= 50
    data = np.asanyarray(img.dataobj)[tuple(ijk.T)]
    e1 = world_principal_dirs(data, bvals, bvecs, img.affine)
    cos = np.abs(np.sum(e1 * truth, axis=1))
    assert np.median(cos) > 0.95 and np.mean(cos > 0.9) > 0.8, cos
    # reading the .bvec naively (no x flip) mirrors fibres with a voxel-x component: only
    # RAS (det > 0) files carry the flip, so only there does the naive reading go wrong
    naive = world_principal_dirs(data, bvals, bvecs, img.affine, honour_flip=False)
    vx2 = (truth @ unit_axes(img.affine))[:, 0] ** 2
    oblique = (vx2 > 0.1) & (vx2 < 0.9)
    assert oblique.sum() >= 10
    naive_cos = np.abs(np.sum(naive * truth, axis=1))[oblique]
    if orientation == "RAS":
        assert np.median(naive_cos) < 0.9
    else:
        assert np.median(naive_cos) > 0.95


# --------------------------------------------------------------------------------------------
# truth
# --------------------------------------------------------------------------------------------

def test_truth_masks(study):
    keys = sorted(p.name for p in (study / "truth").iterdir())
    assert keys == ["sub-01_ses-01", "sub-01_ses-02", "sub-02", "sub-03_ses-01", "sub-04_ses-01"]
    for key in keys:
        t = study / "truth" / key
        info = json.loads((t / "truth.json").read_text())
        s2m = np.loadtxt(t / "subject_to_mni.txt")
        for name in ["cst_left", "cst_right", "distractor", "cc"]:
            img = nib.load(t / f"{name}_mask.nii.gz")
            ijk = np.argwhere(np.asanyarray(img.dataobj) > 0)
            assert len(ijk) > 0, (key, name)
            mni = ijk @ (s2m @ img.affine)[:3, :3].T + (s2m @ img.affine)[:3, 3]
            if name == "cst_left":
                assert (mni[:, 0] < 0).all(), key
            if name == "cst_right":
                assert (mni[:, 0] > 0).all(), key
            if name.startswith("cst"):
                assert mni[:, 2].min() < -30 and mni[:, 2].max() > 55  # brainstem to cortex
        fa = np.asanyarray(nib.load(t / "fa_noisefree.nii.gz").dataobj)
        right = np.asanyarray(nib.load(t / "cst_right_mask.nii.gz").dataobj) > 0
        assert 0.5 < fa[right].mean() < 0.8
        if key == "sub-03_ses-01":
            lesion = np.asanyarray(nib.load(t / "lesion_mask.nii.gz").dataobj) > 0
            left = np.asanyarray(nib.load(t / "cst_left_mask.nii.gz").dataobj) > 0
            assert lesion.any() and not (lesion & ~left).any()
            assert fa[lesion].mean() < 0.5 < fa[right].mean()
            assert info["lesion"]["side"] == "left" and info["left_is_lesioned"]
        else:
            assert not (t / "lesion_mask.nii.gz").exists() and info["lesion"] is None
        assert info["snr"] == 30 and 25 < info["b0_snr_measured"] < 35


def test_lesion_lowers_left_fa_only():
    kw = dict(seed=7, voxel_mm=VOX, orientation="RAS", snr=0)
    healthy = make_phantom_session(**kw)
    lesioned = make_phantom_session(lesion="left", **kw)
    les = lesioned.masks["lesion"]
    assert les.any()
    assert lesioned.fa_noisefree[les].mean() < healthy.fa_noisefree[les].mean() - 0.2
    right = healthy.masks["cst_right"]
    assert np.allclose(lesioned.fa_noisefree[right], healthy.fa_noisefree[right], atol=1e-4)


def test_lesion_eigenvalues_set_its_severity():
    """An infarct core (λ⊥ close to λ∥) lowers the lesion's FA further than the default
    moderate lesion, in the same voxels, and leaves the other side alone."""
    kw = dict(seed=7, voxel_mm=VOX, orientation="RAS", snr=0, lesion="left")
    moderate = make_phantom_session(**kw)
    severe = make_phantom_session(lesion_eigenvalues=(1.1e-3, 0.85e-3), **kw)
    les = moderate.masks["lesion"]
    assert np.array_equal(les, severe.masks["lesion"])
    assert severe.fa_noisefree[les].mean() < moderate.fa_noisefree[les].mean() - 0.1
    right = moderate.masks["cst_right"]
    assert np.allclose(severe.fa_noisefree[right], moderate.fa_noisefree[right], atol=1e-4)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------

def test_dicom_files_are_canonical(study):
    """The hand-assembled files decode with pydicom and re-encode to the very same bytes."""
    import io

    import pydicom

    files = sorted((study / "dicom/sub-04/ses-01").glob("*.dcm"))
    twin = nib.load(study / "truth/sub-04_ses-01/twin/sub-04_ses-01_dwi.nii.gz")
    nz = twin.shape[2]
    for f in (files[0], files[nz + 3], files[-1]):
        ds = pydicom.dcmread(f)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        assert buf.getvalue() == f.read_bytes(), f.name
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
        assert ds.Modality == "MR" and float(ds.RescaleSlope) == sample.RESCALE_SLOPE
        inst = int(ds.InstanceNumber) - 1
        vol, k = divmod(inst, nz)
        if float(ds.DiffusionBValue) > 0:
            assert ds.DiffusionDirectionality == "DIRECTIONAL"
            assert abs(np.linalg.norm(ds.DiffusionGradientOrientation) - 1) < 1e-6
        else:
            assert ds.DiffusionDirectionality == "NONE"
        expect = np.asanyarray(twin.dataobj.get_unscaled())[:, :, k, vol].T
        assert np.array_equal(ds.pixel_array, expect)


def test_dicom_roundtrip_with_dcm2niix(study, tmp_path):
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix not on PATH")
    out = tmp_path / "conv"
    out.mkdir()
    res = subprocess.run(["dcm2niix", "-z", "y", "-f", "x", "-o", str(out),
                          str(study / "dicom/sub-04/ses-01")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    niis = sorted(out.glob("*.nii.gz"))
    assert [p.name for p in niis] == ["x.nii.gz"], res.stdout
    conv, cbvals, cbvecs = read_dwi(out / "x")
    twin, tbvals, tbvecs = read_dwi(study / "truth/sub-04_ses-01/twin/sub-04_ses-01_dwi")
    assert conv.shape == twin.shape
    assert np.allclose(cbvals, tbvals, atol=1e-3)
    g_conv = bids_to_world(cbvecs, conv.affine)
    g_twin = bids_to_world(tbvecs, twin.affine)
    assert np.abs(g_conv - g_twin).max() < 1e-3
    # voxel correspondence through the affines: a signed permutation with integer offsets
    m = np.linalg.inv(conv.affine) @ twin.affine
    p = np.rint(m)
    assert np.abs(m - p).max() < 1e-3
    ijk = np.indices(twin.shape[:3]).reshape(3, -1)
    dst = (p[:3, :3] @ ijk + p[:3, 3:4]).astype(int)
    a = conv.get_fdata(dtype=np.float32)[dst[0], dst[1], dst[2]].reshape(twin.shape)
    b = twin.get_fdata(dtype=np.float32)
    assert np.abs(a - b).max() <= sample.RESCALE_SLOPE / 2 + 1e-3


# --------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------

def test_manifest_points_at_generated_study():
    root = REPO / "sample_data"
    manifest = json.loads((root / "manifest.json").read_text())
    try:
        import jsonschema
    except ImportError:  # pragma: no cover
        jsonschema = None
    schema_path = REPO / "cstbatch" / "manifest.schema.json"
    if jsonschema is not None and schema_path.exists():
        jsonschema.validate(manifest, json.loads(schema_path.read_text()))
    outputs = set(sample.sample_outputs(root / "generated"))
    dicom_dirs = {p.parent for p in outputs if p.suffix == ".dcm"}
    seen = []
    for entry in manifest["subjects"]:
        if "nifti" in entry:
            assert (root / entry["nifti"]) in outputs, entry
        else:
            assert (root / entry["dicom"]) in dicom_dirs, entry
        seen.append((entry["id"], entry["session"]))
    assert seen == [(s.subject, s.session) for s in sample.SESSIONS]
