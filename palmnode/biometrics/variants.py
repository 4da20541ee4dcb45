"""Probe variants: the probe's ROI re-cut at small rotations and scales about its centre.

Two captures of one palm still differ after the ROI by a few degrees and a few per cent of
scale (docs/roi.md: the tail of the ordinary scatter, 3–9° and 6–18% for the pairs that still
fail). The elastic matcher absorbs part of that; the rest is searched at match time: the probe
(never the enrolled template) is encoded at each of :data:`VARIANTS` and the matcher keeps the
variant with the best fused score (``matcher.match_probe``). Impostor comparisons get the same
freedom, so every threshold is calibrated under it (``palmnode eval`` does so by default).

A variant ``(angle, scale)`` maps ROI pixels ``p`` to ``scale · R(angle) · (p − c) + c``, ``c`` the
ROI centre (``cv2.getRotationMatrix2D``): composed with the ROI transform, the frames are cut
again, so the pixels a variant brings in from beyond the base ROI are real ones. From an
already-cut ROI (``palmnode eval --roi-given``) the ROI itself is re-cut and pixels from outside
it are 0, which the encoder masks (features: dark cells are invalid).
"""
from __future__ import annotations

import math

import attrs
import cv2
import numpy as np

from palmnode.biometrics import features
from palmnode.biometrics import roi as roi_module
from palmnode.biometrics.types import BadImage, PalmTemplate, Roi, check_frame


@attrs.frozen
class Variant:
    """A re-cut of the ROI: rotated by ``angle_deg`` and scaled by ``scale`` about its centre."""

    angle_deg: float = attrs.field(converter=float)
    scale: float = attrs.field(converter=float)

    @scale.validator
    def _positive(self, _attribute, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"a variant's scale must be positive, got {value!r}")

    @property
    def is_identity(self) -> bool:
        return self.angle_deg == 0.0 and self.scale == 1.0

    def matrix(self, size: int = roi_module.ROI_SIZE) -> np.ndarray:
        """2×3 affine from ROI pixels to the re-cut ROI's pixels."""
        c = (size - 1) / 2.0
        return cv2.getRotationMatrix2D((c, c), self.angle_deg, self.scale)


IDENTITY = Variant(0.0, 1.0)

#: the probe-side search (docs/engine.md "Probe variants"): the ROI as found, ±6° and ×0.91 / ×1.09.
#: Two captures of one palm differ by the difference of two ROI deviations (p95 ~3.6° and ~6%
#: each, docs/roi.md: ~5° and ~8.5% between two); the elastic match absorbs about half a step,
#: so these steps cover ~9° / ~13%. Chosen on the development sets among 5–21-variant sets: the
#: wider scale steps gave most of the gain, more variants no more (table in docs/engine.md).
VARIANTS: tuple[Variant, ...] = (IDENTITY, Variant(6.0, 1.0), Variant(-6.0, 1.0),
                                 Variant(0.0, 0.91), Variant(0.0, 1.09))


def _check_variants(variants: tuple[Variant, ...]) -> None:
    if not variants or variants[0] != IDENTITY:
        raise ValueError("the variants must start with the identity (the ROI as found)")


@attrs.frozen(eq=False)
class ProbeTemplates:
    """One probe encoded at several variants; ``templates[0]`` (``.base``) is the ROI as found.

    ``variants[i]`` is how ``templates[i]`` was cut. A variant whose ROI could not be encoded is
    left out, so the tuples may be shorter than the variant set asked for (never without the base).
    """

    templates: tuple[PalmTemplate, ...] = attrs.field(converter=tuple)
    variants: tuple[Variant, ...] = attrs.field(converter=tuple)

    def __attrs_post_init__(self) -> None:
        if not self.templates or len(self.templates) != len(self.variants):
            raise ValueError("a probe needs its base template and one variant per template")
        _check_variants(self.variants)
        if not all(isinstance(t, PalmTemplate) for t in self.templates):
            raise TypeError("ProbeTemplates holds PalmTemplate objects")

    @property
    def base(self) -> PalmTemplate:
        return self.templates[0]

    def __len__(self) -> int:
        return len(self.templates)

    @classmethod
    def single(cls, template: PalmTemplate) -> ProbeTemplates:
        """A probe without variants (the search over variants then equals a plain match)."""
        return cls((template,), (IDENTITY,))


def recut_transform(found: Roi, variant: Variant) -> np.ndarray:
    """The ROI transform (frame → ROI pixels) of ``found`` re-cut at ``variant``."""
    m = np.vstack([variant.matrix(found.size), [0.0, 0.0, 1.0]])
    t = np.vstack([np.asarray(found.transform, np.float64), [0.0, 0.0, 1.0]])
    return (m @ t)[:2]


def _encode_variants(base: PalmTemplate, variants: tuple[Variant, ...], cut) -> ProbeTemplates:
    _check_variants(variants)
    kept_t, kept_v = [base], [IDENTITY]
    for v in variants[1:]:
        try:
            kept_t.append(features.encode(*cut(v)))
        except BadImage:  # e.g. a re-cut reaching mostly off the frame: this variant is left out
            continue
        kept_v.append(v)
    return ProbeTemplates(tuple(kept_t), tuple(kept_v))


def from_frames(surface_frame: np.ndarray | None, nir_frame: np.ndarray | None, found: Roi,
                variants: tuple[Variant, ...] = VARIANTS, *, base: PalmTemplate | None = None) -> ProbeTemplates:
    """The probe's templates at ``variants``, cut from the whole frames (either may be None, not
    both) with the ROI ``found``. ``base``: the template of the ROI as found when the caller has
    encoded it already (else it is encoded here; its :class:`BadImage` propagates)."""
    if surface_frame is None and nir_frame is None:
        raise BadImage("no frame given: pass the surface frame, the NIR frame or both")
    surface = None if surface_frame is None else check_frame(surface_frame, name="surface frame")
    nir = None if nir_frame is None else check_frame(nir_frame, name="NIR frame")
    if base is None:
        base = features.encode(None if surface is None else roi_module.warp(surface, found),
                               None if nir is None else roi_module.warp(nir, found))

    def cut(v: Variant) -> tuple[np.ndarray | None, np.ndarray | None]:
        t = recut_transform(found, v)
        return tuple(None if f is None else cv2.warpAffine(f, t, (found.size, found.size), flags=cv2.INTER_LINEAR,
                                                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                     for f in (surface, nir))

    return _encode_variants(base, variants, cut)


def from_rois(surface_roi: np.ndarray | None, vein_roi: np.ndarray | None,
              variants: tuple[Variant, ...] = VARIANTS, *, base: PalmTemplate | None = None) -> ProbeTemplates:
    """The probe's templates at ``variants`` from already-cut 128×128 ROIs (either may be None,
    not both): each ROI re-cut about its centre, pixels from outside it 0 (masked by the encoder)."""
    if surface_roi is None and vein_roi is None:
        raise BadImage("no ROI given: pass the surface ROI, the vein ROI or both")
    rois = tuple(None if r is None else check_frame(r, name=name)
                 for r, name in ((surface_roi, "surface_roi"), (vein_roi, "vein_roi")))
    if base is None:
        base = features.encode(*rois)
    size = roi_module.ROI_SIZE

    def cut(v: Variant) -> tuple[np.ndarray | None, np.ndarray | None]:
        m = v.matrix(size)
        return tuple(None if r is None else cv2.warpAffine(r, m, (size, size), flags=cv2.INTER_LINEAR,
                                                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                     for r in rois)

    return _encode_variants(base, variants, cut)


__all__ = ["IDENTITY", "VARIANTS", "ProbeTemplates", "Variant", "from_frames", "from_rois", "recut_transform"]
