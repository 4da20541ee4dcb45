"""The ROI, quality and feature stages give exactly the stored outputs (speed work must not
change results; see roi_golden.py)."""
from __future__ import annotations

from tests.biometrics import roi_golden


def test_outputs_identical_to_golden():
    got = roi_golden.outputs(roi_golden.frame_pairs())
    want = roi_golden.load()
    assert roi_golden.differences(got, want) == []
    # the set exercises both outcomes and both hands
    roi_found = got["roi_hash"] != ""
    assert 0.8 * len(roi_found) <= roi_found.sum() < len(roi_found)
    assert any(r.startswith("left") for r in got["reasons"]) and any(r.startswith("right") for r in got["reasons"])
