"""benchmarks/anatomy_sweep.py's bookkeeping: which cached tractograms a run may reuse, and how a
set's Dice is put beside the Dice of a tract that fills its bundle."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from anatomy_sweep import cache_key, fill_summary  # noqa: E402

from cstbatch.study.options import OPTIONS, defaults  # noqa: E402


def test_a_changed_registration_is_not_served_the_default_registrations_tractograms():
    base = defaults()
    key = cache_key(47000, 3.0, base, {"phantom": "tubes"})
    # the registration places the tracking corridor: another method, another tractogram
    assert cache_key(47000, 3.0, {**base, "registration_method": "syn"}, {"phantom": "tubes"}) != key
    # the default written out, or an extraction option changed, reuses it
    assert cache_key(47000, 3.0, {**base, "registration_method": OPTIONS["registration_method"].default},
                     {"phantom": "tubes"}) == key
    assert cache_key(47000, 3.0, {**base, "extract_tdi_keep": 0.4}, {"phantom": "tubes"}) == key
    assert cache_key(47000, 3.0, {**base, "track_step_size": 0.5}, {"phantom": "tubes"}) != key
    assert cache_key(47001, 3.0, base, {"phantom": "tubes"}) != key


def test_fill_summary_counts_the_sides_above_the_fill():
    rows = [{"dice_L": 0.70, "dice_R": 0.60, "fill_L": 0.65, "fill_R": 0.66},
            {"dice_L": 0.50, "dice_R": 0.64, "fill_L": 0.64, "fill_R": 0.62}]
    text = fill_summary(rows)
    assert "above it on 2 of 4 sides" in text
    assert "min 0.620 median 0.645" in text
    # fill minus Dice: -0.05, +0.06, +0.14, -0.02 -> median +0.020
    assert "median +0.020 (-0.050 to +0.140)" in text


def test_fill_needs_the_whole_bundle():
    from anatomy_sweep import main

    with pytest.raises(SystemExit):
        main(["--fill", "--fov-bottom-z", "-30", "--n", "1"])
