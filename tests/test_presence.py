from palmnode.gate.presence import PresenceDetector, PresencePolicy


def feed(detector, samples, t0=0.0, dt=0.01):
    changes = []
    for i, d in enumerate(samples):
        c = detector.update(d, t0 + i * dt)
        if c:
            changes.append(c)
    return changes


def test_dwell_and_hysteresis():
    det = PresenceDetector(PresencePolicy(far_mm=300, release_mm=340, dwell_s=0.05, absent_s=0.1))
    assert feed(det, [1200] * 10) == []
    assert feed(det, [150] * 3) == []           # 0.02 s in the window: not yet
    arrived = feed(det, [150] * 10, t0=1.0)
    assert [c.present for c in arrived] == [True]
    # jitter between far and release does not flap
    assert feed(det, [320, 330, 310, 335] * 20, t0=2.0) == []
    left = feed(det, [None] * 20, t0=3.0)
    assert [c.present for c in left] == [False] and left[0].distance_mm is None


def test_brief_dropouts_do_not_end_presence():
    det = PresenceDetector()
    feed(det, [150] * 20)
    assert det.present
    assert feed(det, [150, None, None, 150] * 10, t0=1.0) == []
    assert det.present


def test_too_close_is_not_presence():
    det = PresenceDetector()
    assert feed(det, [30] * 50) == []
