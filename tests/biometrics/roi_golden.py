"""Golden outputs of the ROI + quality + features stage on a fixed set of rendered frame pairs.

Speed work on roi.py, segment.py, keypoints.py, quality.py and features.py must not change what
they compute. This module renders a fixed set of frame pairs (upright and any rotation, both
hands, sessions 1 and 2, the sampler's JPEG, glare and blur rates), runs extract_roi, the two
warps, quality.assess and features.encode on each, and compares the result with the stored
golden file bit for bit (Roi transforms, failure reasons, ROI images, quality values, template
bytes). Run ``python -m tests.biometrics.roi_golden --write`` only when a change of output was
measured on the development sets and adopted (see docs/roi.md); the test is test_roi_golden.py.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import attrs
import numpy as np

from palmnode.biometrics import features, quality, roi
from palmnode.biometrics.synth import Identity, render_pair, sample_capture
from palmnode.biometrics.types import BadImage, Roi

GOLDEN = Path(__file__).parent / "data" / "roi_golden.npz"
N_FRAMES = 64
#: captures made to fail (each refusal path: blur, too close/far, exposure, cut by the border)
#: or to stress a path (glare, fingers held together)
EDGE_CASES = (dict(motion_blur_px=90.0), dict(scale=1.8), dict(scale=0.4), dict(exposure=0.35),
              dict(exposure=3.0), dict(shift=(0.45, 0.0)), dict(shift=(0.0, -0.4)), dict(glare=120.0),
              dict(spread=-0.8, habitual=False), dict(motion_blur_px=30.0))


def frame_pairs(n: int = N_FRAMES) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(31_337)
    out = []
    for i in range(n):
        ident = Identity.from_seed(70_000 + i, ("left", "right")[i % 2])
        cap = sample_capture(rng, session=1 + (i // 4) % 2, rotation=("upright", "any")[(i // 2) % 2])
        out.append(render_pair(ident, cap))
    for i, change in enumerate(EDGE_CASES):
        ident = Identity.from_seed(71_000 + i, ("left", "right")[i % 2])
        out.append(render_pair(ident, attrs.evolve(sample_capture(rng, rotation="any"), **change)))
    return out


def outputs(pairs) -> dict[str, np.ndarray]:
    """Per frame: the transform (NaN when refused), the failure reason, sha256 of both ROI
    images, the quality (4 floats) and the template bytes (sha256)."""
    transforms, reasons, roi_hash, quals, templates = [], [], [], [], []
    frames = hashlib.sha256()
    for nir, surface in pairs:
        frames.update(nir.tobytes() + surface.tobytes())
        found = roi.extract_roi(nir)
        if not isinstance(found, Roi):
            transforms.append(np.full((2, 3), np.nan))
            reasons.append(found.reason.name)
            roi_hash.append("")
            quals.append(np.full(4, np.nan))
            templates.append("")
            continue
        vein_roi, surface_roi = roi.warp(nir, found), roi.warp(surface, found)
        q = quality.assess(nir, found, vein_roi)
        transforms.append(found.transform)
        reasons.append(f"{found.hand} {found.palm_width_px!r} {found.keypoints!r}")
        roi_hash.append(hashlib.sha256(vein_roi.tobytes() + surface_roi.tobytes()).hexdigest())
        quals.append(np.array([q.sharpness, q.exposure, q.completeness, q.score]))
        try:
            tpl = features.encode(surface_roi, vein_roi).to_bytes()
        except BadImage as e:
            tpl = f"BadImage {e}".encode()
        templates.append(hashlib.sha256(tpl).hexdigest())
    return {"transforms": np.array(transforms), "reasons": np.array(reasons), "roi_hash": np.array(roi_hash),
            "quality": np.array(quals), "templates": np.array(templates), "frames": np.array(frames.hexdigest())}


def differences(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> list[str]:
    """Human-readable list of frames whose outputs differ (empty: identical to the bit)."""
    if str(got["frames"]) != str(want.get("frames", got["frames"])):
        return ["the rendered frames themselves differ from the golden file's (the renderer or OpenCV "
                "changed, not this stage): write the golden file anew at the revision before the "
                "change under test, then compare (python -m tests.biometrics.roi_golden --write)"]
    out = []
    for key in ("transforms", "quality"):
        a, b = got[key], want[key]
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        for i in np.flatnonzero(~same.reshape(len(a), -1).all(axis=1)):
            out.append(f"frame {i} {key}: max diff {np.nanmax(np.abs(a[i] - b[i])):.3g}")
    for key in ("reasons", "roi_hash", "templates"):
        for i in np.flatnonzero(got[key] != want[key]):
            out.append(f"frame {i} {key}: {got[key][i]!r} != {want[key][i]!r}")
    return out


def load() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="store the current outputs as the golden file")
    args = ap.parse_args()
    got = outputs(frame_pairs())
    if args.write:
        GOLDEN.parent.mkdir(exist_ok=True)
        np.savez_compressed(GOLDEN, **got)
        print(f"wrote {GOLDEN} ({len(got['reasons'])} frames)")
        return
    diff = differences(got, load())
    print("\n".join(diff) if diff else f"identical: {len(got['reasons'])} frames")


if __name__ == "__main__":
    main()
