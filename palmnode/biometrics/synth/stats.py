"""Measure rendered captures the way the real-capture targets of docs/synthetic-hands.md describe real ones (used by tests and validate)."""
from __future__ import annotations

import math

import cv2
import numpy as np

from .pose import CaptureTruth
from .render import _fill, hand_mask, make_pose, silhouette_polygons


def palm_disk(truth: CaptureTruth, shape: tuple[int, int], radius: float = 0.35) -> np.ndarray:
    """Boolean mask of a disk of ``radius`` palm widths around the true palm centre."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = truth.palm_centre
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= (radius * truth.palm_width_px) ** 2


def coverage(mask: np.ndarray) -> float:
    return float((mask > 0.5).mean())


def palm_grey(frame: np.ndarray, truth: CaptureTruth) -> float:
    return float(np.median(frame[palm_disk(truth, frame.shape)]))


def palm_mean(frame: np.ndarray, truth: CaptureTruth) -> float:
    """Mean grey of the central palm (finer than the median of 8-bit values, for differences)."""
    return float(frame[palm_disk(truth, frame.shape)].mean())


def palm_falloff(frame: np.ndarray, truth: CaptureTruth) -> float:
    """Brightest minus darkest (95th − 5th percentile) of the smoothed palm, edge to edge."""
    smooth = cv2.GaussianBlur(frame.astype(np.float32), (0, 0), 6.0)
    v = smooth[palm_disk(truth, frame.shape, 0.45)]
    return float(np.percentile(v, 95) - np.percentile(v, 5))


def background(frame: np.ndarray, mask: np.ndarray) -> float:
    return float(np.median(frame[mask < 0.01]))


def glare_fraction(frame: np.ndarray, mask: np.ndarray, over: float = 40.0) -> float:
    bg = mask < 0.01
    level = np.median(frame[bg])
    return float((frame[bg] > level + over).mean())


def border_cover(mask: np.ndarray, border: str) -> float:
    """Fraction of the border row/column the arm covers."""
    line = {"top": mask[0], "bottom": mask[-1], "left": mask[:, 0], "right": mask[:, -1]}[border]
    return float((line > 0.5).mean())


def edge_width(frame: np.ndarray, identity, capture) -> float:
    """10–90 % rise distance (px) of the hand outline, from the median profile across it."""
    h, w = frame.shape
    pose = make_pose(identity, capture, w, h)
    hard = _fill(silhouette_polygons(pose), (w, h)) > 127
    inside = cv2.distanceTransform(hard.astype(np.uint8), cv2.DIST_L2, 5)
    outside = cv2.distanceTransform((~hard).astype(np.uint8), cv2.DIST_L2, 5)
    signed = np.where(hard, inside - 0.5, 0.5 - outside)
    # profile only beside thick skin (palm, arm: 14 px or more of hand behind the edge)
    thick = cv2.dilate((inside >= 14).astype(np.uint8), np.ones((51, 51), np.uint8)) > 0
    d, v = signed[thick], frame[thick].astype(np.float32)
    bins = np.arange(-10, 11)
    prof = np.array([np.median(v[np.abs(d - b) < 0.5]) if np.any(np.abs(d - b) < 0.5) else np.nan
                     for b in bins])
    lo, hi = np.nanmedian(prof[:3]), np.nanmedian(prof[-3:])
    if not hi > lo + 10:
        return math.nan
    norm = (prof - lo) / (hi - lo)
    x10 = np.interp(0.1, norm, bins)
    x90 = np.interp(0.9, norm, bins)
    return float(x90 - x10)


def palm_patch(frame: np.ndarray, truth: CaptureTruth, size: int = 96) -> np.ndarray:
    """The central palm square (0.6 palm widths), upright, from the ground truth."""
    up = np.array(truth.up)
    right = np.array([-up[1], up[0]])
    half = 0.3 * truth.palm_width_px
    c = np.array(truth.palm_centre)
    src = np.float32([c - half * right + half * up, c + half * right + half * up,
                      c - half * right - half * up])
    if truth.hand == "left":  # mirror back so left and right patches compare alike
        src = np.float32([src[1], src[0], c + half * right - half * up])
    dst = np.float32([[0, 0], [size - 1, 0], [0, size - 1]])
    m = cv2.getAffineTransform(src, dst)
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation of two band-passed patches (what matching on texture sees)."""
    def band(x):
        x = x.astype(np.float32)
        x = cv2.GaussianBlur(x, (0, 0), 1.0) - cv2.GaussianBlur(x, (0, 0), 6.0)
        return (x - x.mean()) / (x.std() + 1e-6)
    return float((band(a) * band(b)).mean())


__all__ = ["background", "border_cover", "palm_mean", "coverage", "edge_width", "glare_fraction", "hand_mask",
           "palm_disk", "palm_falloff", "palm_grey", "palm_patch", "similarity"]
