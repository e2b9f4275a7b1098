"""Manifest loading: the plan's schema, every problem at once with its JSON path."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cstbatch import load_manifest, validate_manifest_schema, validate_subject_inputs
from cstbatch.errors import ManifestError, OptionError
from cstbatch.study.options import merge_options


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_plan_example_loads_with_effective_options(tmp_path):
    (tmp_path / "data").mkdir()
    m = write(tmp_path / "study.json", {
        "name": "Study", "description": "d",
        "options": {"denoise_method": "patch2self", "generate_pdf": True, "extraction_method": "passthrough"},
        "subjects": [
            {"id": "sub-001", "session": "ses-01", "nifti": "data/sub-001_ses-01_dwi.nii.gz"},
            {"id": "sub-002", "session": "ses-01", "dicom": "/abs/dicom/"},
            {"id": "sub-003", "session": None, "nifti": "x.nii", "options": {"denoise_method": "nlmeans"}},
        ]})
    specs, config = load_manifest(m, cli_options={"track_step_size": 0.75})
    assert [s.key for s in specs] == ["sub-001_ses-01", "sub-002_ses-01", "sub-003"]
    assert specs[0].input_path == tmp_path / "data/sub-001_ses-01_dwi.nii.gz"   # relative to manifest
    assert specs[0].bval == tmp_path / "data/sub-001_ses-01_dwi.bval"
    assert specs[1].input_type == "dicom" and specs[1].input_path == Path("/abs/dicom")
    assert specs[0].options["denoise_method"] == "patch2self"
    assert specs[2].options["denoise_method"] == "nlmeans"                      # entry overrides root
    assert all(s.options["track_step_size"] == 0.75 for s in specs)              # command line on top
    assert specs[0].options["generate_pdf"] is True and config.generate_pdf is True
    missing = validate_subject_inputs(specs)
    assert any("subjects[0]" in line and "file not found" in line for line in missing)


def test_every_problem_reported_with_json_path(tmp_path):
    m = write(tmp_path / "bad.json", {
        "name": 3, "extra": 1,
        "options": {"denoise_methd": "nlmeans", "track_step_size": "big"},
        "subjects": [
            {"id": "sub-01", "session": "ses-01"},
            {"id": "sub-01", "session": "ses-01", "nifti": "a.nii.gz", "dicom": "d"},
            {"id": "../etc", "session": "ses/1", "nifti": "a.nii.gz"},
            {"id": "sub-02", "session": "ses-01", "nifti": "a.nii.gz", "options": {"bogus": 1}},
        ]})
    with pytest.raises(ManifestError) as info:
        load_manifest(m)
    problems = info.value.problems
    text = "\n".join(problems)
    for expected in ["name: 3 is not of type 'string'",
                     "(root): Additional properties are not allowed ('extra' was unexpected)",
                     "options.denoise_methd: unknown option (did you mean denoise_method",
                     "options.track_step_size: expected int or float",
                     "subjects[0]: needs exactly one of 'nifti' or 'dicom' (has neither)",
                     "subjects[1]: needs exactly one of 'nifti' or 'dicom' (has nifti, dicom)",
                     "subjects[1]: duplicate of subjects[0] (sub-01, ses-01)",
                     "subjects[2].id: '../etc' is not a BIDS label",
                     "subjects[2].session: 'ses/1' is not a BIDS label",
                     "subjects[3].options.bogus: unknown option"]:
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert str(m) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content, message", [
    ("{not json", "invalid JSON at line 1 column 2"),
    ("", "invalid JSON at line 1 column 1"),
    ("[]", "(root): [] is not of type 'object'"),
    ('{"subjects": []}', "subjects: [] should be non-empty"),
])
def test_malformed_manifest(tmp_path, content, message):
    m = write(tmp_path / "m.json", content)
    with pytest.raises(ManifestError, match=None) as info:
        load_manifest(m)
    assert message in str(info.value) and "m.json" in str(info.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(tmp_path / "none.json")


def test_yaml_uses_safe_loader(tmp_path):
    m = write(tmp_path / "m.yaml", "subjects:\n  - id: sub-01\n    session: null\n    nifti: a.nii.gz\n")
    specs, _ = load_manifest(m)
    assert specs[0].key == "sub-01"
    evil = write(tmp_path / "e.yaml", "subjects: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ManifestError, match="invalid YAML"):
        load_manifest(evil)


def test_schema_validation_function_direct():
    assert validate_manifest_schema({"subjects": [{"id": "sub-1", "session": None, "nifti": "x"}]}) == []
    assert validate_manifest_schema({"subjects": [{"id": "sub-1", "nifti": "x"}]}) == [
        "subjects[0]: 'session' is a required property"]


def test_options_layering_and_type_errors():
    merged = merge_options({"denoise_method": "nlmeans"}, {"track_max_angle": 45})
    assert merged["denoise_method"] == "nlmeans" and merged["track_max_angle"] == 45
    assert merged["track_step_size"] == 1.0
    with pytest.raises(OptionError, match="generate_pdf: expected bool"):
        merge_options({"generate_pdf": "yes"})


def test_an_unset_option_reads_the_tables_default_and_an_explicit_null_stays():
    from cstbatch.study.options import OPTIONS, option_value

    assert option_value({}, "extract_tdi_keep") == OPTIONS["extract_tdi_keep"].default
    assert option_value({"extract_tdi_keep": 0.4}, "extract_tdi_keep") == 0.4
    # null switches the front limit off; it must not fall back to the 5 mm default
    assert OPTIONS["extract_front_mm"].default is not None
    assert option_value({"extract_front_mm": None}, "extract_front_mm") is None
    with pytest.raises(KeyError):
        option_value({}, "no_such_option")


def test_a_null_method_or_count_reads_as_the_default_where_null_has_no_meaning_of_its_own():
    from cstbatch.steps.track_region import SEED_REGIONS, seed_regions
    from cstbatch.study.options import OPTIONS, option_value

    for name in ("track_region", "registration_method", "motion_correction", "profile_nodes",
                 "report_convention", "track_cst_seed_regions"):
        assert option_value({name: None}, name, null_is_default=True) == OPTIONS[name].default, name
    assert option_value({"extract_front_mm": None}, "extract_front_mm", null_is_default=False) is None
    # the step reads the table's default, not a literal of its own
    assert seed_regions({"track_cst_seed_regions": None}) == SEED_REGIONS == seed_regions({})
    assert seed_regions({"track_cst_seed_regions": "capsule"}) == ("capsule",)


def test_option_values_outside_their_choices_fail_at_planning():
    from cstbatch.study.options import OPTIONS

    for name, opt in OPTIONS.items():
        if opt.choices:
            assert opt.default is None or opt.default in opt.choices, name
    with pytest.raises(OptionError, match="track_denoise: 'gaussian' is not one of mppca, none"):
        merge_options({"track_denoise": "gaussian"})
    with pytest.raises(OptionError, match="registration_method: 'SyN' is not one of affine, syn"):
        merge_options({}, {"registration_method": "SyN"})
    assert merge_options({"extract_clean": "fan"})["extract_clean"] == "fan"


@pytest.mark.parametrize("name, value, message", [
    ("track_step_size", -1.0, r"track_step_size: -1.0 is outside \(0, \)"),
    ("track_step_size", 0, r"track_step_size: 0 is outside \(0, \)"),
    ("track_max_angle", 120, r"track_max_angle: 120 is outside \(0, 90\]"),
    ("track_stop_fa", 15, r"track_stop_fa: 15 is outside \[0, 1\)"),
    ("profile_nodes", 1, r"profile_nodes: 1 is outside \[2, \)"),
    ("track_seed_fa", float("nan"), r"track_seed_fa: nan is not a number in \[0, 1\)"),
])
def test_numbers_outside_their_range_fail_at_planning(name, value, message):
    with pytest.raises(OptionError, match=message):
        merge_options({name: value})


def test_ranges_hold_defaults_and_edges_and_the_length_pair():
    from cstbatch.cli import main
    from cstbatch.study.options import OPTIONS, options_table_markdown, parse_cli_value

    for name, opt in OPTIONS.items():
        assert opt.out_of_bounds(opt.default) is None, name
    # the closed ends are allowed
    assert merge_options({"track_stop_fa": 0, "track_max_angle": 90, "extract_tdi_keep": 1})["track_max_angle"] == 90
    with pytest.raises(OptionError, match=r"--option.track_max_angle: -5 is outside"):
        parse_cli_value("track_max_angle", "-5")
    # each layer's value is fine alone; together no streamline could be kept
    with pytest.raises(OptionError, match=r"extract_min_length \(300\) must be below extract_max_length \(250.0\)"):
        merge_options({"extract_min_length": 300})
    assert merge_options({"extract_max_length": 400}, {"extract_min_length": 300})["extract_min_length"] == 300
    assert "| `track_max_angle` | `30.0` | (0, 90] | track |" in options_table_markdown()
    assert main(["options"]) == 0
