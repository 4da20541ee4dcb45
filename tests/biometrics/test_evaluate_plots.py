"""The DET plot (probit axes) and the ROI contact sheet, drawn with cv2."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from palmnode.biometrics import det_plot, metrics
from tests.conftest import run_with_file_size_limit


def test_tick_labels():
    assert [det_plot.tick_label(t) for t in (1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.4)] == \
        ["0.0001%", "0.01%", "0.1%", "1%", "5%", "20%", "40%"]


def test_probit():
    np.testing.assert_allclose(det_plot.probit(np.array([0.5, 0.8413447460685429, 0.01])),
                               [0.0, 1.0, -2.3263478740408408], atol=1e-9)


def curve_pixels(img, colour, tol=40):
    d = np.abs(img.astype(int) - np.array(colour)).sum(axis=2)
    ys, xs = np.nonzero(d < tol)
    return xs, ys


def test_normal_scores_draw_a_straight_line(tmp_path):
    # equal-variance normal scores give a straight DET on probit axes (that is what the axes are for)
    rng = np.random.default_rng(2)
    s = metrics.ScoreSet.from_arrays(rng.normal(2.5, 1, 200_000), rng.normal(0, 1, 200_000))
    path = det_plot.write_det(tmp_path / "det.png", {"fused": metrics.det_curve(s)}, title="test")
    img = cv2.imread(str(path))
    assert img.shape == (760, 900, 3)
    xs, ys = curve_pixels(img, det_plot.COLOURS["fused"])
    # the middle of the curve, away from the legend and the sparse tails
    keep = (ys > 200) & (ys < 600) & (xs > 300)
    xs, ys = xs[keep], ys[keep]
    assert xs.size > 200
    slope, icpt = np.polyfit(xs, ys, 1)
    assert np.abs(ys - (slope * xs + icpt)).max() < 6
    assert slope > 0  # FNMR falls (image y grows downwards) as FMR rises


def test_det_one_colour_per_curve_and_legend(tmp_path):
    rng = np.random.default_rng(0)
    curves = {name: metrics.det_curve(metrics.ScoreSet.from_arrays(rng.normal(mu, 1, 2000), rng.normal(0, 1, 20000)))
              for name, mu in (("surface (EER 9%)", 2.7), ("vein (EER 5%)", 3.3), ("fused (EER 2%)", 4.1))}
    img = cv2.imread(str(det_plot.write_det(tmp_path / "d.png", curves)))
    for name in ("surface", "vein", "fused"):
        assert curve_pixels(img, det_plot.COLOURS[name])[0].size > 100


def test_contact_sheet_layout(tmp_path):
    roi = np.tile(np.arange(128, dtype=np.uint8), (128, 1))
    tiles = [("a s1 #1", {"vein": roi, "surface": 255 - roi}), ("a s1 #2", "partial_hand"),
             ("b s1 #1", {"vein": cv2.resize(roi, (64, 64))})]
    img = cv2.imread(str(det_plot.write_contact_sheet(tmp_path / "s.png", tiles)))
    assert img.shape == (128 + 4 + 18, 3 * (2 * 128 + 4), 3)
    assert img[100, 2 + 100, 0] == 100  # the vein ROI, unchanged
    assert img[100, 2 + 128 + 100, 0] == 155  # the surface ROI beside it
    assert img[120, 260 + 100, 0] == 90  # the failure tile's grey


def test_write_errors_are_oserrors(tmp_path):
    with pytest.raises(OSError):
        det_plot.write_contact_sheet(tmp_path / "missing" / "s.png", [("x", "no_hand")])


@pytest.mark.parametrize("output", ["plot", "calibration"])
def test_an_output_that_cannot_be_written_whole_is_not_left_half_written(tmp_path, output):
    """A plot (or the calibration) that could not be written to its end (the disk full, a Ctrl-C
    mid-write) was left truncated under its final name, where it looks like the run's output (a
    calibration a gate would then be set from). Now each is written beside its name and renamed
    over it once whole: the write fails as before (an OSError, the eval's one-line error), and the
    folder holds nothing of it. A real write refused past 4 KiB by the kernel."""
    if output == "plot":
        code = ("import numpy as np; from palmnode.biometrics import det_plot\n"
                "noise = np.random.default_rng(0).integers(0, 256, (128, 128), np.uint8)\n"
                f"det_plot.write_contact_sheet({str(tmp_path / 'sheet.png')!r}, [('a', {{'vein': noise}})])")
    else:
        code = ("import numpy as np; from pathlib import Path; from palmnode.biometrics import evaluate\n"
                "impostors = np.random.default_rng(0).normal(0.3, 0.05, 50_000)\n"
                f"evaluate.write_calibration(Path({str(tmp_path / 'cal.json')!r}), impostors, 'fused')")
    proc = run_with_file_size_limit(code)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "File too large" in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
