"""A grid of grey images with labels, written as one PNG (OpenCV only)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def contact_sheet(images: Sequence[np.ndarray], labels: Sequence[str] | None, path: str | Path, *,
                  columns: int | None = None, tile_width: int = 320) -> Path:
    """Tile ``images`` (grey or BGR, any size) with a label under each; returns the PNG path."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    labels = list(labels) if labels is not None else [""] * len(images)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    columns = columns or min(len(images), max(1, round(math.sqrt(len(images) * 1.3))))
    tiles = []
    for img, text in zip(images, labels):
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = np.clip(img, 0, 255).astype(np.uint8)
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        h, w = img.shape[:2]
        th = max(1, round(h * tile_width / w))
        img = cv2.resize(img, (tile_width, th), interpolation=cv2.INTER_AREA)
        band = np.zeros((18, tile_width, 3), np.uint8)
        cv2.putText(band, str(text)[:48], (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
        tiles.append(np.vstack([img, band]))
    th = max(t.shape[0] for t in tiles)
    tiles = [np.vstack([t, np.zeros((th - t.shape[0], tile_width, 3), np.uint8)]) for t in tiles]
    rows = []
    blank = np.zeros_like(tiles[0])
    for i in range(0, len(tiles), columns):
        row = tiles[i:i + columns] + [blank] * (columns - len(tiles[i:i + columns]))
        rows.append(np.hstack([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=60) for t in row]))
    sheet = np.vstack(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet):
        raise OSError(f"could not write the contact sheet to {path}")
    return path
