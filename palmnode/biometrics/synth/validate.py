"""Measure rendered captures against the real-capture targets in docs/synthetic-hands.md.

    python -m palmnode.biometrics.synth.validate [--identities 34] [--rotation upright|any]

Renders identities × 2 sessions × 3 captures and prints a table (median [5th–95th]) next to the
targets, then one JSON object as the last line.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys

import cv2
import numpy as np

from . import stats
from .capture import sample_capture
from .identity import Identity
from .render import capture_truth, hand_mask, render_pair, scene
from .skin import NIR_VEIN, SURFACE_CREASE, SURFACE_LEVEL, skin_layers

TARGETS = {
    "coverage_%": (30, 22, 37),
    "palm_grey": (107, 91, 128),
    "palm_falloff": (20, None, None),
    "background": (15, 12, 16),
    "edge_10_90_px": (6, None, None),
    "arm_border_cover_%": (40, None, None),
    "vein_depth": (6, None, None),
    "vein_width_%_valley": (8, None, None),
    "crease_depth_surface": (2.5, None, None),
    "principal_line_depth_surface": (None, None, None),
    "crease_width_px": (3, None, None),
}


def _depths(identity, capture) -> tuple[float, float, float]:
    """Vein depth in NIR and crease depths in surface light at their centre lines (grey levels)."""
    s = scene(identity, capture)
    layers = skin_layers(identity)
    both = np.dstack([layers.vein, layers.crease])
    m = cv2.remap(both, s.map_x, s.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    vein, crease = m[..., 0], m[..., 1]
    inside = s.mask > 0.99
    gain = identity.habit(capture.session).crease_gain
    vd = NIR_VEIN * identity.habit(capture.session).vein_gain * s.light * vein
    cd = SURFACE_CREASE * SURFACE_LEVEL * gain * s.light * crease
    vsel = inside & (vein > 0.6) & (vein >= cv2.dilate(vein, np.ones((5, 5), np.uint8)) - 1e-4)
    csel = inside & (crease > 0.25) & (crease >= cv2.dilate(crease, np.ones((3, 3), np.uint8)) - 1e-4)
    psel = inside & (crease > 0.9)
    med = lambda a: float(np.median(a)) if a.size else math.nan  # noqa: E731
    return med(vd[vsel]), med(cd[csel]), med(cd[psel])


def _fwhm_px(layer_profile_sigma: float, thickness: int) -> float:
    """FWHM (canvas px) of a drawn line after its blur, measured on a test image."""
    img = np.zeros((64, 64), np.float32)
    cv2.line(img, (32 * 8, 4 * 8), (32 * 8, 60 * 8), 160.0, thickness, cv2.LINE_AA, 3)
    row = cv2.GaussianBlur(img, (0, 0), layer_profile_sigma)[32]
    above = np.nonzero(row >= row.max() / 2)[0]
    # linear interpolation at both half-maximum crossings
    lo, hi = above[0], above[-1]
    half = row.max() / 2
    left = lo - (row[lo] - half) / (row[lo] - row[lo - 1])
    right = hi + (row[hi] - half) / (row[hi] - row[hi + 1])
    return float(right - left)


def _summary(values) -> list[float]:
    v = np.asarray([x for x in values if not math.isnan(x)], float)
    return [round(float(np.median(v)), 2), round(float(np.percentile(v, 5)), 2),
            round(float(np.percentile(v, 95)), 2)]


def measure(n_identities: int = 34, rotation: str = "upright", seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    rows: dict[str, list[float]] = {k: [] for k in TARGETS}
    glare_px = bg_px = 0
    within = {"rotation": [], "scale": [], "position": [], "exposure": []}
    between = {k: [] for k in within}
    sim_within, sim_between = {"nir": [], "surface": []}, {"nir": [], "surface": []}
    for i in range(n_identities):
        ident = Identity.from_seed(10_000 + i, hand=("right", "left")[i % 2])
        caps = {s: [sample_capture(rng, session=s, rotation=rotation) for _ in range(3)] for s in (1, 2)}
        info = {}
        for s, cs in caps.items():
            for k, cap in enumerate(cs):
                nir, surface = render_pair(ident, cap)
                t = capture_truth(ident, cap)
                mask = hand_mask(ident, cap)
                rows["coverage_%"].append(100 * stats.coverage(mask))
                grey = stats.palm_grey(nir, t)
                rows["palm_grey"].append(grey)
                rows["palm_falloff"].append(stats.palm_falloff(nir, t))
                rows["background"].append(stats.background(nir, mask))
                rows["arm_border_cover_%"].append(100 * stats.border_cover(mask, t.border))
                bg = mask < 0.01
                lvl = np.median(nir[bg])
                glare_px += int((nir[bg] > lvl + 40).sum())
                bg_px += int(bg.sum())
                if cap.motion_blur_px == 0 and k == 0:
                    rows["edge_10_90_px"].append(stats.edge_width(nir, ident, cap))
                    vd, cd, pd = _depths(ident, cap)
                    rows["vein_depth"].append(vd)
                    rows["crease_depth_surface"].append(cd)
                    rows["principal_line_depth_surface"].append(pd)
                info[(s, k)] = (t, stats.palm_mean(nir, t), stats.palm_patch(nir, t), stats.palm_patch(surface, t),
                                cap.motion_blur_px > 0)
        for a, b in itertools.combinations(sorted(info), 2):
            ta, ga, na, sa, ba = info[a]
            tb, gb, nb, sb, bb = info[b]
            d = within if a[0] == b[0] else between
            d["rotation"].append(abs((ta.rotation_deg - tb.rotation_deg + 180) % 360 - 180))
            d["scale"].append(100 * abs(math.log(ta.scale / tb.scale)))
            d["position"].append(math.dist(ta.palm_centre, tb.palm_centre))
            d["exposure"].append(abs(ga - gb))
            if not (ba or bb):
                sims = sim_within if a[0] == b[0] else sim_between
                sims["nir"].append(stats.similarity(na, nb))
                sims["surface"].append(stats.similarity(sa, sb))
    from .skin import VEIN_FWHM
    from .pose import CANVAS_PX, NOMINAL_PALM_PX
    vein_sigma = max(0.5, math.sqrt(max(VEIN_FWHM ** 2 - 4.5 ** 2, 1.0)) / 2.355)
    vein_fwhm = _fwhm_px(vein_sigma, 5)  # canvas px; valley distance ~0.48 palm = 0.48*CANVAS_PX
    rows["vein_width_%_valley"] = [100 * vein_fwhm / (0.48 * CANVAS_PX)]
    rows["crease_width_px"] = [_fwhm_px(1.2, 2) * NOMINAL_PALM_PX / CANVAS_PX]
    out = {"captures": 6 * n_identities, "rotation": rotation,
           "measured": {k: _summary(v) for k, v in rows.items() if v},
           "glare_%_of_background": round(100 * glare_px / max(bg_px, 1), 3),
           "session_median_abs_diff": {k: round(float(np.median(v)), 2) for k, v in between.items()},
           "within_session_median_abs_diff": {k: round(float(np.median(v)), 2) for k, v in within.items()},
           "palm_patch_similarity": {
               "within_session": {k: round(float(np.median(v)), 3) for k, v in sim_within.items()},
               "between_sessions": {k: round(float(np.median(v)), 3) for k, v in sim_between.items()}}}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=34)
    ap.add_argument("--rotation", default="upright", choices=("upright", "any"))
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    out = measure(args.identities, args.rotation)
    print(f"{'quantity':24s} {'measured median [5–95%]':28s} target", file=sys.stderr)
    for k, v in out["measured"].items():
        t = TARGETS[k]
        tt = ("" if t[0] is None else f"{t[0]}") + (f" [{t[1]}–{t[2]}]" if t[1] is not None else "")
        print(f"{k:24s} {v[0]:7.2f} [{v[1]:.2f}–{v[2]:.2f}]{'':8s} {tt}", file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
