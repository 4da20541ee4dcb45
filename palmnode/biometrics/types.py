"""Value types shared by the biometric engine's stages (ROI, quality, features, matching)."""
from __future__ import annotations

import enum

import attrs
import numpy as np

from palmnode import MAX_FRAME_PIXELS  # frames larger are refused rather than processed slowly

#: a frame longer than this many times its width (a line-scan strip, a mis-set stride) is refused:
#: the hand segmentation downscales by the long side and would leave the short one no pixels
MAX_FRAME_ASPECT = 8
#: a frame narrower than this (either side) cannot hold a palm
MIN_FRAME_SIDE = 16


class BadImage(ValueError):
    """An image array the engine cannot use; the message names the problem in one line."""


class FailureReason(enum.Enum):
    """Why no ROI came out of a frame; ``feedback`` is what the gate tells the person."""

    NO_HAND = "no_hand"
    PARTIAL_HAND = "partial_hand"
    FINGERS_UNCLEAR = "fingers_unclear"
    TOO_CLOSE = "too_close"
    TOO_FAR = "too_far"
    MOTION_BLUR = "motion_blur"
    OVER_EXPOSED = "over_exposed"
    UNDER_EXPOSED = "under_exposed"

    @property
    def feedback(self) -> str:
        return _FEEDBACK[self]


_FEEDBACK = {
    FailureReason.NO_HAND: "hold your palm over the gate",
    FailureReason.PARTIAL_HAND: "move your hand into view",
    FailureReason.FINGERS_UNCLEAR: "spread your fingers a little",
    FailureReason.TOO_CLOSE: "move your hand a little higher",
    FailureReason.TOO_FAR: "move your hand a little closer",
    FailureReason.MOTION_BLUR: "hold still",
    FailureReason.OVER_EXPOSED: "move your hand a little higher",
    FailureReason.UNDER_EXPOSED: "move your hand a little closer",
}


@attrs.frozen
class RoiFailure:
    reason: FailureReason
    detail: str


@attrs.frozen(eq=False)
class Roi:
    """Where the palm is: ``transform`` maps frame pixels to ROI pixels (2×3 affine)."""

    transform: np.ndarray
    size: int
    hand: str
    palm_width_px: float
    keypoints: tuple[tuple[float, float], ...]


@attrs.frozen
class Quality:
    """Each in 0..1; ``score`` combines them (see quality.py)."""

    sharpness: float
    exposure: float
    completeness: float
    score: float


def check_frame(image: object, *, name: str = "image") -> np.ndarray:
    """``image`` as a 2-D uint8 array, or :class:`BadImage` saying what is wrong with it.

    Colour (H×W×3) is converted to grey; float images in 0..1 or 0..255 are converted when finite;
    16-bit images keep the top 8 of their sensor's bits (:func:`sixteen_to_8bit`).
    """
    if not isinstance(image, np.ndarray):
        raise BadImage(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise BadImage(f"{name} is empty (shape {image.shape})")
    if image.ndim == 3 and image.shape[2] in (3, 4):
        # the channels' mean in the frame's own dtype: the grey rules below then apply as to a grey
        # frame (a 16-bit colour frame keeps its sensor's bits; an int64 one is refused as grey is)
        exact = np.float64 if image.dtype.kind in "uif" else None   # (complex stays complex: refused)
        image = image[..., :3].mean(axis=2, dtype=exact).astype(image.dtype)
    if image.ndim != 2:
        raise BadImage(f"{name} must be 2-D grey (or H×W×3), got shape {image.shape}")
    if image.shape[0] * image.shape[1] > MAX_FRAME_PIXELS:
        raise BadImage(f"{name} is {image.shape[1]}×{image.shape[0]}: larger than the "
                       f"{MAX_FRAME_PIXELS} pixels the engine accepts")
    if image.shape[0] < MIN_FRAME_SIDE or image.shape[1] < MIN_FRAME_SIDE:
        raise BadImage(f"{name} is {image.shape[1]}×{image.shape[0]}: too small to hold a palm")
    if max(image.shape[:2]) > MAX_FRAME_ASPECT * min(image.shape[:2]):
        raise BadImage(f"{name} is {image.shape[1]}×{image.shape[0]}: too elongated to hold a hand "
                       f"(more than {MAX_FRAME_ASPECT}:1)")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise BadImage(f"{name} holds NaN or infinite values")
        top = float(image.max())
        scale = 255.0 if top <= 1.0 else 1.0
        return np.clip(image * scale, 0, 255).astype(np.uint8)
    if image.dtype.kind in "ui" and image.dtype.itemsize == 2:
        return sixteen_to_8bit(image)
    raise BadImage(f"{name} has dtype {image.dtype}; use uint8 (or uint16, float)")


def sensor_bits(image: np.ndarray) -> int:
    """The bit depth of the sensor a 16-bit image likely came from: the fewest of 8, 10, 12, 14
    and 16 bits that hold its largest value (sensors come in even depths, and a frame rarely
    reaches its top bit: a 12-bit frame whose brightest pixel is 1,500 is still 12-bit)."""
    bits = int(image.max()).bit_length()
    return min(max(bits + bits % 2, 8), 16)


def sixteen_to_8bit(image: np.ndarray, bits: int | None = None) -> np.ndarray:
    """A 16-bit grey image (negative values count as 0) as 8-bit: the top 8 of its ``bits``
    bits. ``bits`` None: :func:`sensor_bits`, so a 12-bit sensor's 0..4095 and the same data
    moved to the top of 16 bits both come out as the sensor's top 8 bits (keeping the top 8 of
    16 would leave the first nearly black). Given, it is the sensor's bit depth and exposure
    keeps its meaning: a dark 12-bit frame stays dark."""
    values = np.clip(image, 0, None).astype(np.uint16, copy=False)
    bits = sensor_bits(values) if bits is None else bits
    return np.minimum(values >> (bits - 8), 255).astype(np.uint8)  # values above ``bits``: white


# --- templates (owner: kernels helper; layout in docs/engine.md) --------------------------
#: grid rows of each modality's code: surface 32x32 cells (4 px), vein 16x16 cells (8 px)
SURFACE_ROWS = 32
VEIN_ROWS = 16
_TEMPLATE_MAGIC = b"PT"
_TEMPLATE_VERSION = 1


class BadTemplate(ValueError):
    """Bytes that are not a palm template of this version; the message says why."""


@attrs.frozen(eq=False)
class ModalityCode:
    """One modality's competitive code: 3 bit-planes and a validity mask of uint32 grid rows.

    ``planes()``: uint32 (4, rows), read-only. Planes 0-2 are the code (bit x of word y = cell
    (y, x); a cell's orientation k in 0..5 is the 3-bit circular code 000,001,011,111,110,100
    spread over the planes, so Hamming distance = angular distance), plane 3 the mask (1 = valid).
    ``bits`` / ``mask``: the code planes / the mask viewed as uint64 words. Made by
    :meth:`from_planes`, which copies.
    """

    _planes: np.ndarray = attrs.field(repr=False)

    @property
    def bits(self) -> np.ndarray:
        return self._planes[:3].reshape(-1).view(np.uint64)

    @property
    def mask(self) -> np.ndarray:
        return self._planes[3].view(np.uint64)

    @property
    def rows(self) -> int:
        return self._planes.shape[1]

    def planes(self) -> np.ndarray:
        """uint32 (4, rows), read-only: the 3 code planes then the mask (the kernels' layout)."""
        return self._planes

    @classmethod
    def from_planes(cls, planes: np.ndarray) -> ModalityCode:
        planes = np.array(planes, dtype=np.uint32, order="C")      # a copy the code owns
        if planes.ndim != 2 or planes.shape[0] != 4 or planes.shape[1] % 2:
            raise ValueError(f"a code is 4 planes of an even number of rows, got shape {planes.shape}")
        planes.flags.writeable = False
        return cls(planes)

    def valid_cells(self) -> int:
        return int(np.bitwise_count(self.mask).sum())


@attrs.frozen(eq=False)
class PalmTemplate:
    """Both modalities of one palm capture (either may be None when its frame was unusable)."""

    surface: ModalityCode | None
    vein: ModalityCode | None

    def __attrs_post_init__(self) -> None:
        for name, code, rows in (("surface", self.surface, SURFACE_ROWS), ("vein", self.vein, VEIN_ROWS)):
            if code is not None and code.rows != rows:   # a matcher would score it against the wrong grid
                raise BadTemplate(f"a {name} code of {code.rows} rows where {rows} are expected")

    def to_bytes(self) -> bytes:
        """``PT``, version, flags (1 surface, 2 vein), then each present modality's 4 planes of
        uint32 little-endian rows (surface 512 bytes, vein 256 bytes): at most 772 bytes."""
        flags = (1 if self.surface is not None else 0) | (2 if self.vein is not None else 0)
        parts = [_TEMPLATE_MAGIC, bytes([_TEMPLATE_VERSION, flags])]
        for code in (self.surface, self.vein):
            if code is not None:
                parts.append(code.planes().astype("<u4").tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> PalmTemplate:
        data = bytes(data)
        if len(data) < 4 or data[:2] != _TEMPLATE_MAGIC:
            raise BadTemplate("not a palm template (bad magic)")
        if data[2] != _TEMPLATE_VERSION:
            raise BadTemplate(f"palm template version {data[2]}, this build reads {_TEMPLATE_VERSION}")
        flags, pos, codes = data[3], 4, []
        for bit, rows in ((1, SURFACE_ROWS), (2, VEIN_ROWS)):
            if not flags & bit:
                codes.append(None)
                continue
            size = 4 * rows * 4
            if len(data) < pos + size:
                raise BadTemplate(f"palm template truncated at byte {len(data)}")
            codes.append(ModalityCode.from_planes(np.frombuffer(data, "<u4", 4 * rows, pos).reshape(4, rows)))
            pos += size
        if pos != len(data):
            raise BadTemplate(f"palm template has {len(data) - pos} trailing bytes")
        if flags & ~3:
            raise BadTemplate(f"palm template flags {flags:#x} unknown")
        return cls(surface=codes[0], vein=codes[1])
