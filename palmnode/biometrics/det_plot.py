"""PNG figures of an evaluation, drawn with OpenCV only: the DET plot and the ROI contact sheet.

The DET plot follows NIST's convention (Martin et al., "The DET curve in assessment of detection
task performance", 1997): FMR on x, FNMR on y, both on normal-deviate (probit) scales, so curves of
normally distributed scores are straight lines and the low-error corner gets room.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np

from palmnode.biometrics.metrics import DetCurve

_PROBIT = NormalDist().inv_cdf
#: tick positions (rates) and the percentages printed under them
TICKS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.4)
#: BGR colour per curve name; others cycle through the rest
COLOURS = {"fused": (40, 40, 200), "vein": (200, 110, 20), "surface": (40, 150, 40)}
_SPARE = [(150, 40, 150), (20, 150, 200), (90, 90, 90)]
_FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GRID = (255, 255, 255), (0, 0, 0), (222, 222, 222)


def tick_label(rate: float) -> str:
    """0.0001 -> "0.01%", 0.05 -> "5%"."""
    pct = rate * 100
    if pct >= 1:
        return f"{pct:g}%"
    return f"{pct:.{max(0, -math.floor(math.log10(pct)))}f}%"


def probit(p: np.ndarray) -> np.ndarray:
    return np.array([_PROBIT(float(x)) for x in np.ravel(p)]).reshape(np.shape(p))


def _low_limit(values: list[np.ndarray], floor: float) -> float:
    positive = [float(v[v > 0].min()) for v in values if np.any(v > 0)]
    low = min(positive) if positive else 1e-2
    return max(floor, min(1e-2, 10 ** math.floor(math.log10(low))))


def write_det(path: str | Path, curves: Mapping[str, DetCurve], *, title: str = "DET",
              width: int = 900, height: int = 760) -> Path:
    """Draw one DET curve per entry of ``curves`` (legend = the keys) into a PNG at ``path``."""
    left, right, top, bottom = 100, 30, 50, 80
    img = np.full((height, width, 3), 255, np.uint8)
    x_lo = _low_limit([c.fmr for c in curves.values()], 1e-7)
    y_lo = _low_limit([c.fnmr for c in curves.values()], 1e-5)
    hi = 0.5
    px0, px1 = _PROBIT(x_lo), _PROBIT(hi)
    py0, py1 = _PROBIT(y_lo), _PROBIT(hi)
    w, h = width - left - right, height - top - bottom

    def to_px(fmr: np.ndarray, fnmr: np.ndarray) -> np.ndarray:
        # rates of 0 sit on the low edge; rates past ``hi`` run off the plot and are cut away below
        x = (probit(np.clip(fmr, x_lo, 1 - 1e-9)) - px0) / (px1 - px0)
        y = (probit(np.clip(fnmr, y_lo, 1 - 1e-9)) - py0) / (py1 - py0)
        return np.stack([left + x * w, top + (1 - y) * h], axis=1)

    for t in TICKS:
        if x_lo <= t <= hi:
            x = int(round(to_px(np.array([t]), np.array([y_lo]))[0, 0]))
            cv2.line(img, (x, top), (x, top + h), GRID, 1)
            label = tick_label(t)
            label = _ascii(label)
            (tw, _), _ = cv2.getTextSize(label, _FONT, 0.42, 1)
            cv2.putText(img, label, (x - tw // 2, top + h + 18), _FONT, 0.42, BLACK, 1, cv2.LINE_AA)
        if y_lo <= t <= hi:
            y = int(round(to_px(np.array([x_lo]), np.array([t]))[0, 1]))
            cv2.line(img, (left, y), (left + w, y), GRID, 1)
            label = tick_label(t)
            label = _ascii(label)
            (tw, th), _ = cv2.getTextSize(label, _FONT, 0.42, 1)
            cv2.putText(img, label, (left - tw - 8, y + th // 2), _FONT, 0.42, BLACK, 1, cv2.LINE_AA)
    # FMR = FNMR: where each curve meets it is its EER
    diag = np.geomspace(max(x_lo, y_lo), hi, 60)
    pts = to_px(diag, diag)
    for a, b in zip(pts[:-1:2], pts[1::2]):
        cv2.line(img, tuple(int(v) for v in a), tuple(int(v) for v in b), (170, 170, 170), 1, cv2.LINE_AA)
    spare = iter(_SPARE * 4)
    legend = []
    layer = img.copy()
    for name, curve in curves.items():
        colour = COLOURS.get(name.split()[0], None) or next(spare)
        pts = np.round(np.clip(to_px(curve.fmr, curve.fnmr), -10 * width, 10 * width)).astype(np.int32)
        cv2.polylines(layer, [pts.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        legend.append((name, colour))
    img[top:top + h + 1, left:left + w + 1] = layer[top:top + h + 1, left:left + w + 1]
    cv2.rectangle(img, (left, top), (left + w, top + h), BLACK, 1)
    _legend(img, legend, left + w - 10, top + 12)
    _centred(img, "false match rate (FMR)", left + w // 2, height - 28, 0.55)
    _centred(img, title if len(title) < 110 else title[:107] + "...", width // 2, 30, 0.55)
    ylabel = np.full((30, h, 3), 255, np.uint8)
    _centred(ylabel, "false non-match rate (FNMR)", h // 2, 21, 0.55)
    img[top:top + h, 18:48] = cv2.rotate(ylabel, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return _write_png(path, img)


def _ascii(text: str) -> str:
    """What OpenCV's Hershey fonts draw: ASCII, anything else escaped. A file name that is not
    UTF-8 reaches Python with surrogates, on which cv2.putText and getTextSize crash the process."""
    return text.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")


def _write_png(path: str | Path, img: np.ndarray) -> Path:
    """``img`` as a PNG at ``path``, written by Python (cv2.imwrite takes the path as UTF-8 text),
    whole or not at all: into a file beside it, renamed over it once complete (a Ctrl-C or a full
    disk mid-way left a truncated PNG that looked like a plot)."""
    from palmnode.private_files import replace_file

    path = Path(path)
    ok, data = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"cannot encode {path}")
    replace_file(path, data.tobytes(), 0o644)
    return path


def _centred(img: np.ndarray, text: str, cx: int, baseline: int, scale: float) -> None:
    text = _ascii(text)
    (tw, _), _ = cv2.getTextSize(text, _FONT, scale, 1)
    cv2.putText(img, text, (cx - tw // 2, baseline), _FONT, scale, BLACK, 1, cv2.LINE_AA)


def _legend(img: np.ndarray, entries: Sequence[tuple[str, tuple]], right_x: int, top_y: int) -> None:
    if not entries:
        return
    entries = [(_ascii(name), colour) for name, colour in entries]
    widths = [cv2.getTextSize(name, _FONT, 0.5, 1)[0][0] for name, _ in entries]
    box_w, line_h = max(widths) + 50, 22
    x0 = right_x - box_w
    cv2.rectangle(img, (x0, top_y), (right_x, top_y + line_h * len(entries) + 8), WHITE, -1)
    cv2.rectangle(img, (x0, top_y), (right_x, top_y + line_h * len(entries) + 8), (160, 160, 160), 1)
    for i, (name, colour) in enumerate(entries):
        y = top_y + 18 + i * line_h
        cv2.line(img, (x0 + 8, y - 5), (x0 + 36, y - 5), colour, 3, cv2.LINE_AA)
        cv2.putText(img, name, (x0 + 42, y), _FONT, 0.5, BLACK, 1, cv2.LINE_AA)


# ---------------------------------------------------------------------------------- contact sheet

#: order of a sample's ROIs inside its tile
ROI_ORDER = ("vein", "surface")


def write_contact_sheet(path: str | Path, tiles: Sequence[tuple[str, Mapping[str, np.ndarray] | str]], *,
                        roi_size: int = 128, max_width: int = 1600) -> Path:
    """A grid of labelled ROI tiles: ``(label, {"vein": roi, "surface": roi})`` shows the ROIs side by
    side; ``(label, "reason")`` is a grey tile naming why that sample gave no ROI."""
    per_tile = max([len([m for m in ROI_ORDER if m in rois]) for _, rois in tiles if not isinstance(rois, str)]
                   or [1])
    tw, th, strip = per_tile * roi_size + 4, roi_size + 4, 18
    cols = max(1, min(len(tiles), max_width // tw))
    rows = max(1, math.ceil(len(tiles) / cols))
    sheet = np.full((rows * (th + strip), cols * tw, 3), 255, np.uint8)
    for i, (label, rois) in enumerate(tiles):
        x, y = (i % cols) * tw, (i // cols) * (th + strip)
        if isinstance(rois, str):
            sheet[y + 2:y + 2 + roi_size, x + 2:x + tw - 2] = 90
            for j, word in enumerate(_wrap(_ascii(rois).replace("_", " "), 16)):
                cv2.putText(sheet, word, (x + 8, y + 30 + 18 * j), _FONT, 0.45, (80, 80, 255), 1, cv2.LINE_AA)
        else:
            for j, m in enumerate(mm for mm in ROI_ORDER if mm in rois):
                roi = np.asarray(rois[m])
                if roi.shape[:2] != (roi_size, roi_size):
                    roi = cv2.resize(roi, (roi_size, roi_size), interpolation=cv2.INTER_AREA)
                if roi.ndim == 2:
                    roi = cv2.cvtColor(roi.astype(np.uint8), cv2.COLOR_GRAY2BGR)
                x0 = x + 2 + j * roi_size
                sheet[y + 2:y + 2 + roi_size, x0:x0 + roi_size] = roi
                cv2.putText(sheet, m[0].upper(), (x0 + 3, y + 14), _FONT, 0.4, (0, 200, 255), 1, cv2.LINE_AA)
        cv2.putText(sheet, _ascii(label)[: tw // 7], (x + 3, y + th + 12), _FONT, 0.38, BLACK, 1, cv2.LINE_AA)
    return _write_png(path, sheet)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return (lines + [line])[:5]
