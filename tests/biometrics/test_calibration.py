"""Decision thresholds from impostor scores: measured where the impostors reach, extrapolated
from the fitted tail beyond, and written by ``palmnode eval --calibration-out``."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from palmnode.biometrics import evaluate as ev
from palmnode.biometrics.matcher import Calibration
from tests.biometrics.test_evaluate import run_main, write_folder


def test_gaussian_tail_is_extrapolated_to_where_no_impostor_set_reaches():
    imp = np.random.default_rng(5).normal(0.0, 1.0, 2_000_000)
    cal = Calibration.from_impostors(imp, keep=20_000)
    a, b = cal.tail_fit()
    assert b == pytest.approx(1.0, rel=0.05) and a == pytest.approx(0.0, abs=0.1)
    for fmr in (1e-7, 1e-9, 1e-12):
        want = -statistics.NormalDist().inv_cdf(fmr)
        assert cal.decision_threshold(fmr) == pytest.approx(want, abs=0.1)
    assert cal.decision_threshold(1e-4) == cal.threshold_for(1e-4)  # measured where 200 impostors are above
    assert cal.threshold_beyond(1e-30) > cal.threshold_beyond(1e-12) > imp.max()


def test_extrapolation_never_goes_below_the_highest_impostor_seen():
    imp = np.random.default_rng(6).normal(0.0, 1.0, 200_000)
    imp[:3] = 50.0  # a heavy tail the fit cannot see
    cal = Calibration.from_impostors(imp)
    assert cal.threshold_beyond(1e-7) > 50.0


def test_too_few_impostors_to_fit_is_a_clear_error():
    cal = Calibration.from_impostors(np.random.default_rng(7).normal(size=1000))
    with pytest.raises(ValueError, match="too few to fit the tail"):
        cal.threshold_beyond(1e-9)
    with pytest.raises(ValueError, match="fmr must be in"):
        cal.threshold_beyond(0.0)


@pytest.mark.parametrize("modality", ["both", "vein"])
def test_eval_writes_the_calibration_a_gate_loads(tmp_path, capsys, modality):
    """Both modalities measured: the fused impostor tail, and beside it the vein similarity's own
    (the gate's vein check); one modality: its tail alone."""
    folder = write_folder(tmp_path / "imgs")
    out_path = tmp_path / "calibration.json"
    rc, out, err = run_main(capsys, [str(folder), "--out", str(tmp_path / "out"), "--modality", modality,
                                     "--calibration-out", str(out_path)])
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])["calibration"]
    cal = Calibration.from_json(out_path.read_text())
    assert report["impostors"] == cal.n and report["modality"] == ("fused" if modality == "both" else "vein")
    if modality == "vein":
        assert cal.vein is None and report["vein_impostors"] is None
        return
    assert cal.n == json.loads(out.strip().splitlines()[-1])["cross_session"]["counts"]["impostor"]
    assert cal.vein is not None and report["vein_impostors"] == cal.vein.n == cal.n
    assert Calibration.from_json(cal.to_json()).vein.tail.tolist() == cal.vein.tail.tolist()


@pytest.mark.parametrize("text, message", [
    ('{"version": 1, "n": 3}', "calibration data is inconsistent: it needs n and a tail of scores"),
    ('{"version": 1, "n": "x", "tail": [1.0]}', "calibration data is inconsistent: it needs n and a tail of scores"),
    ('{"version": 1, "n": 3, "tail": [1.0], "vein": [1.0]}', "calibration version [1.0] unknown"),
    ('{"version": 1, "n": 3, "tail": [1.0], "vein": {"version": 1, "n": 3, "tail": [1.0], "vein": {}}}',
     "calibration data is inconsistent: a vein tail inside the vein tail"),
    ('{"version": 1, "n": 1, "tail": [1.0, 0.5]}', "calibration data is inconsistent"),
])
def test_a_damaged_calibration_is_a_one_line_value_error(text, message):
    """The node turns a ValueError into one line and exit 78; a missing key was a KeyError (a traceback)."""
    with pytest.raises(ValueError) as info:
        Calibration.from_json(text)
    assert str(info.value) == message


def test_unwritable_calibration_path_is_one_line(tmp_path, capsys):
    folder = write_folder(tmp_path / "imgs")
    rc, out, err = run_main(capsys, [str(folder), "--out", str(tmp_path / "out"),
                                     "--calibration-out", str(tmp_path / "missing" / "c.json")])
    assert rc == 1 and "cannot write the calibration" in err and "Traceback" not in err
    assert ev.CALIBRATION_KEEP >= 10_000
