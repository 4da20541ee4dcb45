"""Palm features: competitive orientation codes of the surface (lines) and vein modalities.

Each modality is coded on a grid of cells over the 128x128 ROI (Kong & Zhang's Competitive
Code, 2004): at each cell centre a bank of 6 even-symmetric Gabor filters (line detectors at
0°, 30°, ..., 150°) is applied, only there (native/gabor.c, not a full convolution); the cell's
code is the orientation of the most negative response (dark lines give negative responses to
a filter with a positive centre lobe), written with the 3-bit circular code
000,001,011,111,110,100 so that Hamming distance equals angular distance (0..3 steps of 30°).

- surface: creases are thin (~3 px) and shallow (2-3 grey levels): a fine filter
  (wavelength 10 px) on the raw ROI, 32x32 cells every 4 px.
- vein: broad faint curves (~8 px at ROI scale, ~6 grey levels): local contrast enhancement
  (CLAHE), 2x area down-sampling, then a coarse filter (wavelength 20 ROI px), 16x16 cells
  every 8 px.

A cell is masked (invalid) when its neighbourhood is background/out-of-frame (dark),
saturated, or when its orientation responses are too flat to name an orientation.
Responses are exact integers (uint8-derived int16 pixels x int16 taps), so the C kernel and
its NumPy reference give identical codes.
"""
from __future__ import annotations

import attrs
import cv2
import numpy as np

from palmnode.biometrics import kernels
from palmnode.biometrics.types import SURFACE_ROWS, VEIN_ROWS, BadImage, ModalityCode, PalmTemplate, check_frame

ROI_SIZE = 128
N_ORIENT = 6
#: orientation index -> 3-bit circular code (bit p goes to code plane p)
CIRCULAR_CODE = np.array([0b000, 0b001, 0b011, 0b111, 0b110, 0b100], np.uint8)
#: fewer valid cells than this fraction: no usable palm texture in the image
MIN_VALID_FRACTION = 0.2
#: pixel values treated as background / out of frame, and as saturated
DARK_LEVEL = 20
SATURATED_LEVEL = 250


@attrs.frozen
class CodeSpec:
    """How one modality is coded (filter shape in the pixels it is applied to)."""

    name: str
    grid: int            # cells per side (rows = columns)
    downsample: int      # ROI -> filtered image factor
    wavelength: float    # cosine period across the line
    sigma_across: float  # Gaussian envelope across the line
    sigma_along: float   # ... and along it (elongated: orientation selective)
    radius: int          # filter half size
    clahe: bool          # local contrast enhancement first
    weak_fraction: float  # cells with orientation contrast below this x median are masked

    @property
    def step(self) -> int:
        return ROI_SIZE // self.downsample // self.grid


SURFACE = CodeSpec("surface", grid=SURFACE_ROWS, downsample=1, wavelength=10.0, sigma_across=2.5,
                   sigma_along=6.0, radius=9, clahe=False, weak_fraction=0.5)
VEIN = CodeSpec("vein", grid=VEIN_ROWS, downsample=2, wavelength=10.0, sigma_across=2.5,
                sigma_along=5.0, radius=9, clahe=True, weak_fraction=0.15)


def gabor_bank(spec: CodeSpec) -> np.ndarray:
    """int16 (6, 2r+1, kw): zero-mean even Gabor filters, orientation k*30°, kw padded to 8."""
    r = spec.radius
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    size = 2 * r + 1
    kw = -(-size // 8) * 8
    bank = np.zeros((N_ORIENT, size, kw), np.int16)
    for k in range(N_ORIENT):
        theta = np.pi * k / N_ORIENT            # line direction
        along = x * np.cos(theta) + y * np.sin(theta)
        across = -x * np.sin(theta) + y * np.cos(theta)
        g = np.exp(-0.5 * (across / spec.sigma_across) ** 2 - 0.5 * (along / spec.sigma_along) ** 2)
        g *= np.cos(2 * np.pi * across / spec.wavelength)
        g -= g.mean()                           # no response to flat grey
        taps = np.round(g / np.abs(g).max() * 1023).astype(np.int64)
        taps[r, r] -= taps.sum()                # exactly zero-sum after rounding: flat grey -> 0
        bank[k, :, :size] = taps
    return bank


_BANKS = {spec.name: gabor_bank(spec) for spec in (SURFACE, VEIN)}
_CLAHE = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
#: 1 where a pixel is dark (background, out of frame) or saturated
_BAD_LUT = ((np.arange(256) <= DARK_LEVEL) | (np.arange(256) >= SATURATED_LEVEL)).astype(np.uint8)


def _check_roi(roi: object, name: str) -> np.ndarray:
    img = check_frame(roi, name=name)
    if img.shape != (ROI_SIZE, ROI_SIZE):
        raise BadImage(f"{name} is {img.shape[1]}×{img.shape[0]}; features need the "
                       f"{ROI_SIZE}×{ROI_SIZE} ROI from roi.warp")
    return img


def _prepare(img: np.ndarray, spec: CodeSpec) -> tuple[np.ndarray, np.ndarray]:
    """(filter input padded for the windows as int16, bad-pixel fraction per cell)."""
    bad = cv2.LUT(img, _BAD_LUT)
    if spec.clahe:
        img = _CLAHE.apply(img)
    if spec.downsample > 1:
        side = ROI_SIZE // spec.downsample
        img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
    r, kw = spec.radius, _BANKS[spec.name].shape[2]
    padded = cv2.copyMakeBorder(img.astype(np.int16), r, r, r, r + kw - (2 * r + 1), cv2.BORDER_REFLECT_101)
    # bad pixels within the (cell+1)² box about each cell centre (the filter's central lobe
    # region), the ROI's last row and column repeated where the box passes it: four corners
    # of an integral image instead of a box filter over the whole ROI (same counts)
    cell = spec.step * spec.downsample
    sums = cv2.integral(cv2.copyMakeBorder(bad, 0, 1, 0, 1, cv2.BORDER_REPLICATE))
    n = spec.grid * cell
    lo, hi = slice(0, n, cell), slice(cell + 1, n + 2, cell)
    count = sums[hi, hi] - sums[lo, hi] - sums[hi, lo] + sums[lo, lo]
    return padded, count.astype(np.float32) / np.float32((cell + 1) ** 2)


def _responses(padded: np.ndarray, spec: CodeSpec, reference: bool) -> np.ndarray:
    fn = kernels.gabor_responses_reference if reference else kernels.gabor_responses
    step = spec.step
    return fn(padded, _BANKS[spec.name], y0=step // 2, x0=step // 2, step=step, gh=spec.grid, gw=spec.grid)


def code_from_responses(resp: np.ndarray, bad_fraction: np.ndarray, spec: CodeSpec) -> ModalityCode:
    """Pack responses (grid, grid, 6) int32 into a :class:`ModalityCode` (exact integer rules)."""
    return _code(resp, bad_fraction, spec)[0]


def _code(resp: np.ndarray, bad_fraction: np.ndarray, spec: CodeSpec) -> tuple[ModalityCode, int]:
    """:func:`code_from_responses` and its number of valid cells."""
    g = spec.grid
    orient = np.argmin(resp, axis=2)                              # first minimum on ties
    # (max and min over the orientations as element-wise passes over a transposed copy: a
    # reduction along a 6-long last axis costs several times more)
    cols = np.ascontiguousarray(resp.reshape(-1, resp.shape[2]).T)
    strength = (np.maximum.reduce(cols, axis=0).astype(np.int64) - np.minimum.reduce(cols, axis=0)).reshape(g, g)
    usable = bad_fraction <= 0.25
    usable_strength = strength[usable]
    floor = _median(usable_strength) * spec.weak_fraction if usable_strength.size else np.inf
    valid = usable & (strength > 0) & (strength >= floor)
    # each cell's 3 code bits and its valid bit as one nibble, spread over 4 bit-planes, each
    # grid row packed into one word (bit x = cell x)
    nibble = CIRCULAR_CODE[orient] | (valid.view(np.uint8) << 3)
    bits = np.unpackbits(nibble[None], axis=0, count=4, bitorder="little")
    planes = np.packbits(bits, axis=-1, bitorder="little").view(f"<u{g // 8}").reshape(4, g)
    return ModalityCode.from_planes(planes), int(np.count_nonzero(valid))


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D array by one partial sort (exact: the mean of the two middle
    values is taken as a + (b - a) / 2, equal to (a + b) / 2 for these integers), without its
    per-call overhead."""
    lo, hi = (values.size - 1) // 2, values.size // 2
    part = np.partition(values, (lo, hi))
    a, b = float(part[lo]), float(part[hi])
    return a + 0.5 * (b - a)


def encode_modality(roi: object, spec: CodeSpec, *, reference: bool = False, name: str = "roi") -> ModalityCode:
    """One modality's code from a 128x128 ROI (``reference=True``: NumPy kernel, same result).

    Raises :class:`BadImage` for unusable arrays and for images with too little palm texture
    (all black, all white, flat) to code.
    """
    img = _check_roi(roi, name)
    padded, bad = _prepare(img, spec)
    code, n_valid = _code(_responses(padded, spec, reference), bad, spec)   # (n_valid = code.valid_cells())
    if n_valid < MIN_VALID_FRACTION * spec.grid * spec.grid:
        raise BadImage(f"{name} has too little palm texture to code ({n_valid} of "
                       f"{spec.grid * spec.grid} {spec.name} cells usable): dark, saturated or flat")
    return code


def encode(surface_roi: np.ndarray | None, vein_roi: np.ndarray | None) -> PalmTemplate:
    """The template of one capture: surface code from the surface-lit ROI, vein code from the
    NIR ROI (either may be None, not both)."""
    if surface_roi is None and vein_roi is None:
        raise BadImage("no ROI given: pass the surface ROI, the vein ROI or both")
    surface = None if surface_roi is None else encode_modality(surface_roi, SURFACE, name="surface_roi")
    vein = None if vein_roi is None else encode_modality(vein_roi, VEIN, name="vein_roi")
    return PalmTemplate(surface=surface, vein=vein)


def encode_reference(surface_roi: np.ndarray | None, vein_roi: np.ndarray | None) -> PalmTemplate:
    """:func:`encode` with the NumPy reference kernel (tests assert identical templates)."""
    surface = None if surface_roi is None else encode_modality(surface_roi, SURFACE, reference=True, name="surface_roi")
    vein = None if vein_roi is None else encode_modality(vein_roi, VEIN, reference=True, name="vein_roi")
    return PalmTemplate(surface=surface, vein=vein)
