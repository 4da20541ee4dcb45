"""The gate's probes carry their variants (capture.finish), enrolment agreement uses them."""
from __future__ import annotations

import cv2

from drivers.camera.scene import Lighting
from palmnode.biometrics import features, matcher, variants
from palmnode.biometrics.variants import IDENTITY
from palmnode.gate.capture import CapturePolicy, FramePair, Probe, ProbeFailure, process_pair
from palmnode.gate.enrol import agreeing
from tests.biometrics import fake_palms
from tests.gate.test_capture import hand_over


async def test_a_probe_carries_its_variants_and_its_template_is_the_base(rig):
    await hand_over(rig, 104)
    probe = await rig.capturer.capture_probe()
    assert isinstance(probe, Probe), probe
    assert probe.variants.base is probe.template
    assert probe.variants.variants == variants.VARIANTS[:len(probe.variants)] and len(probe.variants) >= 3
    assert len({t.to_bytes() for t in probe.variants.templates}) == len(probe.variants)
    # variants re-cut from the frames with the probe's ROI: the same as variants.from_frames
    scene = rig.gate.hand
    nir = scene.render(Lighting(ir=1.0), 0.0)
    surface = scene.render(Lighting(surface=1.0), 0.0)
    pair = FramePair(nir=nir, surface=surface, at=0.0, surface_at=0.0)
    made = process_pair(pair)
    assert isinstance(made, Probe), made
    again = variants.from_frames(surface, nir, made.roi)
    assert [t.to_bytes() for t in made.variants.templates] == [t.to_bytes() for t in again.templates]
    # variants off: a single template
    off = process_pair(pair, CapturePolicy(probe_variants=(IDENTITY,)))
    assert len(off.variants) == 1 and off.variants.base is off.template
    # a camera that changed resolution between the two frames: the ROI would be cut elsewhere
    small = cv2.resize(surface, (surface.shape[1] // 2, surface.shape[0] // 2))
    mixed = process_pair(FramePair(nir=nir, surface=small, at=0.0, surface_at=0.0))
    assert isinstance(mixed, ProbeFailure) and "the camera changed resolution between them" in mixed.detail


def test_enrol_agreement_scores_the_later_capture_as_its_variants():
    ident = fake_palms.identity(8)
    first = features.encode(*fake_palms.capture(ident, 1))
    turn = cv2.getRotationMatrix2D((63.5, 63.5), variants.VARIANTS[1].angle_deg, 1.0)
    later_rois = [cv2.warpAffine(r, turn, (128, 128), borderMode=cv2.BORDER_REFLECT)
                  for r in fake_palms.capture(ident, 2)]
    later = variants.from_rois(*later_rois)
    plain = matcher.match(later.base, first).fused
    best = matcher.match_probe(later, first).fused
    assert best > plain
    threshold = (plain + best) / 2
    assert agreeing([first, later], threshold, 2) == [0, 1]
    assert agreeing([first, later.base], threshold, 2) is None
