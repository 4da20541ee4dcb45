"""The valley-line choice (roi._valley_lines / _valley_frame) and the thumb taken in among the
four tips when two fingers show one tip (keypoints._thumb_among), on hand-made keypoints."""
from __future__ import annotations

import cv2
import numpy as np

from palmnode.biometrics import keypoints, roi

LIMITS = roi.DEFAULT_LIMITS
UP = np.array([0.0, -1.0])      # fingers towards the top of the frame
RADIUS = 100.0
# a right palm seen from the camera, fingers up: index on the right (x grows towards the thumb)
IM, MR, RL = np.array([150.0, 100.0]), np.array([101.6, 100.0]), np.array([50.0, 100.0])


#: fingertips of straight fingers over those valleys (index, middle, ring, little)
STRAIGHT_TIPS = np.array([[175.0, -120.0], [125.0, -140.0], [75.0, -130.0], [25.0, -100.0]])


def all_lines(valleys, deep, tips=None):
    return list(roi._valley_lines(np.array(valleys), deep, UP, RADIUS, LIMITS, tips))


def first_line(valleys, deep, tips=None):
    return next(iter(all_lines(valleys, deep, tips)), None)


def axis_line(valleys, deep):
    """The one line straight fingers give when a single web is open: as long as a full line (the
    notches keep their place across the fingers), leaned back by the fingers' usual lean."""
    lines = all_lines(valleys, deep, STRAIGHT_TIPS)
    assert len(lines) == 1
    x, v1, v3, length = lines[0]
    assert 90.0 < length < 110.0
    assert abs(abs(np.degrees(np.arcsin(-x[1]))) - LIMITS.finger_axis_lean_deg) < 3.0
    return lines[0]


def test_all_three_valleys_on_a_line_give_the_index_little_pair():
    x, v1, v3, length = first_line([IM, MR, RL], (True, True, True))
    assert np.allclose(v1, IM) and np.allclose(v3, RL) and abs(length - 100.0) < 1e-9
    assert np.allclose(x, [1.0, 0.0])


def test_middle_valley_too_far_up_leaves_the_pair_standing():
    # middle and ring fingers touching: their "valley" is a notch up the seam (smaller y = up)
    x, v1, v3, length = first_line([IM, MR + [0.0, -30.0], RL], (True, True, True))
    assert np.allclose(v1, IM) and np.allclose(v3, RL)


def test_index_middle_valley_too_far_up_is_stood_in_for():
    # index held against the middle finger: the index-middle notch sits up the seam, the middle
    # valley then lies below the line, and the middle-ring valley stands in
    high = IM + [-5.0, -25.0]
    x, v1, v3, length = first_line([high, MR, RL], (True, True, True))
    assert np.allclose(v3, RL)
    assert abs(length - np.linalg.norm(MR - RL) / LIMITS.middle_valley_mean) < 1e-9
    assert np.allclose(x, [1.0, 0.0])


def test_shallow_middle_valley_does_not_veto_the_pair():
    x, v1, v3, length = first_line([IM, MR + [0.0, -60.0], RL], (True, False, True))
    assert np.allclose(v1, IM) and np.allclose(v3, RL)


def test_only_ring_little_valley_uses_the_pressed_fingers_axis():
    # index, middle and ring held together: notches high up the seams, straight fingers
    im, mr = IM + [0.0, -70.0], MR + [0.0, -70.0]
    x, v1, v3, length = axis_line([im, mr, RL], (False, False, True))
    assert np.allclose(v3, RL)


def test_frame_from_the_valleys_is_a_proper_scale_normalised_square():
    centre, up, side = roi._valley_frame(np.array([IM, MR, RL]), (True, True, True), UP, RADIUS,
                                         LIMITS)
    assert abs(side - LIMITS.valley_side * 100.0) < 1e-9
    assert centre[1] > 100.0                     # the ROI lies below the finger valleys
    assert up @ UP > np.cos(np.radians(LIMITS.valley_lean_deg + 0.1))


def test_no_trusted_valley_gives_no_valley_frame():
    assert roi._valley_frame(np.array([IM, MR, RL]), (False, False, False), UP, RADIUS,
                             LIMITS) is None


def test_thumb_among_four_tips_is_told_by_wide_gap_and_short_reach():
    # little, middle+ring (one tip), index, thumb: wide last gap, short reach
    assert keypoints._thumb_among(np.array([2.15, 2.63, 2.6, 1.77]), np.array([25.3, 12.3, 34.7])) == 3
    assert keypoints._thumb_among(np.array([1.6, 2.6, 2.6, 2.1]), np.array([40.0, 14.0, 20.0])) == 0
    # four fingers spread wide, a short little finger: not a thumb
    assert keypoints._thumb_among(np.array([3.25, 3.19, 2.82, 2.43]), np.array([18.5, 14.7, 30.7])) is None
    assert keypoints._thumb_among(np.array([2.3, 2.6, 2.5, 2.2]), np.array([15.0, 15.0, 18.0])) is None


def test_merged_pair_gives_index_middle_and_ring_little_valleys():
    # a path over four bumps: thumb at the end, middle+ring showing one tip
    t = np.linspace(0, 1, 400)
    path = np.stack([t * 400, 50 + 0 * t], axis=1)
    r = np.interp(t, [0, .1, .2, .35, .5, .65, .75, .9, 1], [1, 2.2, 1, 2.6, 1, 2.6, 1.2, 1.7, 1])
    tips = [40, 140, 260, 360]
    f = keypoints._with_merged_pair(path, r, tips, 3)
    assert f.deep == (True, False, True) and f.thumb_seen
    assert np.allclose(f.valleys[1], 0.5 * (f.valleys[0] + f.valleys[2]))
    # ordered from the thumb's side: index first
    assert f.tips[0][0] > f.tips[3][0] and f.valleys[0][0] > f.valleys[2][0]


def _merged_case(reach_first: float, radius: float):
    path = np.stack([np.arange(50.0), np.zeros(50)], axis=1)
    r = np.full(50, 20.0)
    r[[10, 20, 30, 40]] = [30.0, reach_first, 35.0, 30.0]   # thumb, then three finger tips
    r[25], r[35] = 5.0, 5.0                                  # the valleys between them
    return keypoints._with_merged_pair(path, r, [10, 20, 30, 40], 0, radius)


def test_merged_tip_one_finger_from_the_next_valley_reads_as_index_and_middle_together():
    # valleys 10 apart, radius 20: one finger apart; the thumb-side tip reaches farthest
    split = _merged_case(reach_first=40.0, radius=20.0)
    assert split.deep == (False, True, True)
    assert np.allclose(split.valleys[1:], [[25, 0], [35, 0]])
    assert np.allclose(split.tips[:2], [[20, 0], [20, 0]]) and np.allclose(split.tips[2:], [[30, 0], [40, 0]])
    # one finger apart but the thumb-side tip shorter: ring and little held together
    ring_little = _merged_case(reach_first=32.0, radius=20.0)
    assert ring_little.deep == (True, True, False)
    assert np.allclose(ring_little.valleys[:2], [[25, 0], [35, 0]])
    assert np.allclose(ring_little.tips[2], ring_little.tips[3])
    # two fingers apart: middle and ring together, as before
    fingers = _merged_case(reach_first=40.0, radius=10.0)
    assert fingers.deep == (True, False, True)
    assert np.allclose(fingers.tips[1], fingers.tips[2])


def test_pair_leaning_off_the_fingers_axis_trusts_only_the_ring_little_valley():
    # index, middle and ring held together: both their notches up the seams, the middle one above
    # the pair's line, so the middle-valley rule alone would leave the tilted pair standing
    im, mr = IM + [0.0, -35.0], MR + [0.0, -30.0]
    valleys = np.array([im, mr, RL])
    x, v1, v3, length = first_line(valleys, (True, True, True))
    assert np.allclose(v1, im)                   # (no fingertips: the old reading)
    # the straight fingers' axis leans ~19° from the tilted pair's normal: refused, and neither
    # stand-in built on a suspect notch is used, only the ring-little valley and the axis
    tips = np.array([[175.0, -120.0], [0.5 * (im[0] + mr[0]), -140.0], [0.5 * (mr[0] + RL[0]), -130.0],
                     [25.0, -100.0]])
    lines = all_lines(valleys, (True, True, True), tips)
    assert len(lines) == 1
    x, v1, v3, length = lines[0]
    assert np.allclose(v3, RL) and abs(length - 100.0) < 1e-9
    assert abs(abs(np.degrees(np.arcsin(-x[1]))) - LIMITS.finger_axis_lean_deg) < 1e-6


def test_pair_along_the_fingers_axis_stands():
    tips = np.array([[175.0, -120.0], [126.0, -140.0], [76.0, -130.0], [25.0, -100.0]])
    _, v1, v3, _ = first_line([IM, MR, RL], (True, True, True), tips)
    assert np.allclose(v1, IM) and np.allclose(v3, RL)


def test_pair_leaning_the_other_way_trusts_only_the_index_middle_valley():
    # middle, ring and little held together: the middle-ring and ring-little notches up the seams
    mr, rl = MR + [0.0, -30.0], RL + [0.0, -35.0]
    valleys = np.array([IM, mr, rl])
    tips = np.array([[175.0, -120.0], [0.5 * (IM[0] + mr[0]), -140.0], [0.5 * (mr[0] + rl[0]), -130.0],
                     [25.0, -100.0]])
    lines = all_lines(valleys, (True, True, True), tips)
    assert len(lines) == 1
    x, v1, v3, length = lines[0]
    assert np.allclose(v1, IM) and abs(length - 100.0) < 1e-9
    assert np.allclose(v3, v1 - x * length)
    assert abs(abs(np.degrees(np.arcsin(x[1]))) - LIMITS.finger_axis_lean_deg) < 1e-6


def _turned(deg):
    a = np.radians(deg)
    return np.array([np.sin(a), -np.cos(a)])


def test_fingertips_direction_vouches_only_for_the_pair_of_open_valleys():
    valleys = np.array([IM, MR, RL])
    off_up = _turned(-30.0)              # a heel axis pulled aside (the frame cuts the heel)
    assert roi._valley_frame(valleys, (True, True, True), off_up, RADIUS, LIMITS) is None
    _, _, side = roi._valley_frame(valleys, (True, True, True), off_up, RADIUS, LIMITS,
                                         also_up=UP)
    assert abs(side - LIMITS.valley_side * 100.0) < 1e-9
    # a stand-in line (index-middle valley not open) needs the heel axis itself
    assert roi._valley_frame(valleys, (False, True, True), off_up, RADIUS, LIMITS, also_up=UP) is None


def test_thumb_is_the_side_tip_standing_out_most_not_the_one_beyond_the_wider_gap():
    # radial profile round a palm: thumb (short, out from a deep web), four fingers, then a low
    # bump of the palm's edge beyond the little finger at a wider angle than the thumb's
    centre, radius = np.array([200.0, 200.0]), 50.0
    theta = np.radians(np.arange(0.0, 200.0, 0.25))
    bumps = [(30, 0.9), (63, 1.9), (90, 1.95), (103, 1.7), (118, 1.6), (157, 0.6)]  # (deg, height / R)
    r = 0.95 + sum(h * np.exp(-0.5 * ((np.degrees(theta) - a) / 3.0) ** 2) for a, h in bumps)
    path = centre + radius * r[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    fingers = keypoints.find_fingers(path, centre, radius, None)
    assert fingers is not None and fingers.thumb_seen
    angles = np.degrees(np.arctan2(*(fingers.tips - centre).T[::-1]))
    assert np.allclose(angles, [63, 90, 103, 118], atol=1.0)       # index first: the thumb's side


def _profile_path(bumps, start=0.0, stop=200.0):
    """A path round a palm (centre (200, 200), radius 50) with Gaussian bumps (deg, height / R)."""
    centre, radius = np.array([200.0, 200.0]), 50.0
    theta = np.radians(np.arange(start, stop, 0.25))
    r = 0.95 + sum(h * np.exp(-0.5 * ((np.degrees(theta) - a) / 3.0) ** 2) for a, h in bumps)
    return centre + radius * r[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1), centre, radius


def _tip_angles(fingers, centre):
    return np.degrees(np.arctan2(*(fingers.tips - centre).T[::-1]))


def test_thumb_held_out_towards_the_arms_side_still_names_the_thumb_side():
    # the fingers point along +y; the thumb points 110° away from them (towards the arm's side),
    # and the outline runs on longer past the little finger than past the thumb
    path, centre, radius = _profile_path([(-20, 0.9), (63, 1.9), (90, 1.95), (103, 1.7), (118, 1.6)],
                                         start=-60.0, stop=260.0)
    fingers = keypoints.find_fingers(path, centre, radius, np.array([0.0, 1.0]))
    assert fingers is not None and fingers.thumb_seen
    assert np.allclose(_tip_angles(fingers, centre), [63, 90, 103, 118], atol=1.0)


def test_short_little_finger_beyond_a_wide_gap_is_no_thumb_when_the_thumb_shows_beyond_the_index():
    path, centre, radius = _profile_path([(30, 0.9), (63, 1.9), (90, 1.95), (103, 1.7), (135, 0.9)])
    fingers = keypoints.find_fingers(path, centre, radius, None)
    assert fingers is not None and fingers.deep == (True, True, True)   # no merged-pair reading
    assert np.allclose(_tip_angles(fingers, centre), [63, 90, 103, 135], atol=1.0)


def test_pair_may_span_more_palm_radii_where_the_border_cuts_the_palm_circle():
    valleys = np.array([IM, MR, RL])
    small_radius = 100.0 / 1.6           # the circle stopped short by the frame border
    assert roi._valley_frame(valleys, (True, True, True), UP, small_radius, LIMITS) is None
    found = roi._valley_frame(valleys, (True, True, True), UP, small_radius, LIMITS, wide_span=True)
    assert found is not None and abs(found[2] - LIMITS.valley_side * 100.0) < 1e-9
    # a stand-in line keeps the usual span
    assert roi._valley_frame(valleys, (False, True, True), UP, small_radius, LIMITS, wide_span=True) is None


def test_palm_circle_meeting_the_frame_border_is_told():
    from palmnode.biometrics import segment
    small = np.full((240, 320), 15, np.uint8)
    cv2.circle(small, (160, 120), 40, 120, -1)
    assert not roi._circle_cut(segment.segment(small, 2, 60.0, 15.0, 105.0))
    small[:] = 15
    cv2.circle(small, (160, 215), 40, 120, -1)                 # a palm held low, cut by the border
    assert roi._circle_cut(segment.segment(small, 2, 60.0, 15.0, 105.0))


def test_middle_stand_in_tilted_far_off_the_fingers_axis_is_refused():
    # index held against the middle finger (its valley shallow) and the middle-ring notch far up
    # its seam too: the stand-in line from it leans ~38° off the straight fingers' axis
    im, mr = IM + [0.0, -70.0], MR + [0.0, -40.0]
    valleys = np.array([im, mr, RL])
    tips = np.array([[175.0, -120.0], [0.5 * (im[0] + mr[0]), -140.0], [0.5 * (mr[0] + RL[0]), -130.0],
                     [25.0, -100.0]])
    assert np.allclose(first_line(valleys, (False, True, True))[2], RL)      # (no tips: the stand-in)
    lines = all_lines(valleys, (False, True, True), tips)
    assert len(lines) == 1
    _, _, v3, length = lines[0]
    assert np.allclose(v3, RL) and abs(length - 100.0) < 1e-9         # the ring-little valley + axis


def test_merged_middle_and_ring_lean_more_loosely():
    # middle and ring held together show one tip, taken for both (keypoints._with_merged_pair):
    # the axis from that tip to the midpoint of the pair's valleys leans ~20° towards the index
    # finger, which refuses a pair of separate fingers (> 16°) but not a merged one (<= 24°)
    valleys = np.array([IM, 0.5 * (IM + RL), RL])
    mid = 0.5 * (IM + RL)

    def tips_leaning(deg, merged=True):
        tip = [mid[0] + 220.0 * np.tan(np.radians(deg)), -120.0]
        other = tip if merged else [tip[0] - 2.0, tip[1]]
        return np.array([[175.0, -120.0], tip, other, [25.0, -100.0]])

    _, v1, v3, _ = first_line(valleys, (True, False, True), tips_leaning(20.0))
    assert np.allclose(v1, IM) and np.allclose(v3, RL)
    _, v1, v3, _ = first_line(valleys, (True, False, True), tips_leaning(20.0, merged=False))
    assert not (np.allclose(v1, IM) and np.allclose(v3, RL))
    # leaning 30°: a notch up a seam, refused for merged fingers too
    _, v1, v3, _ = first_line(valleys, (True, False, True), tips_leaning(30.0))
    assert not (np.allclose(v1, IM) and np.allclose(v3, RL))


def test_only_middle_ring_valley_gives_a_line_through_it_from_the_fingers_axis():
    # index and middle held together, ring and little held together: both side notches up the
    # seams, only the middle-ring web open; straight fingers
    im, rl = IM + [0.0, -70.0], RL + [0.0, -70.0]
    x, v1, v3, length = axis_line([im, MR, rl], (False, True, False))
    # the line passes through the middle-ring valley at its average share from the ring-little end
    assert np.allclose(v3 + x * LIMITS.middle_valley_mean * length, MR)
    # without the fingers' axis there is no such line
    assert first_line([im, MR, rl], (False, True, False)) is None


def _disc_hand():
    from palmnode.biometrics import segment
    small = np.full((240, 320), 15, np.uint8)
    cv2.circle(small, (160, 140), 40, 120, -1)
    return segment.segment(small, 2, 60.0, 15.0, 105.0)


def _fingers(valley_y: float) -> keypoints.Fingers:
    # working px; a right palm, fingers up, the valleys 40 px (one palm radius) apart
    valleys = np.array([[180.0, valley_y], [160.0, valley_y], [140.0, valley_y]])
    tips = np.array([[190.0, valley_y - 50], [170.0, valley_y - 60], [150.0, valley_y - 58],
                     [130.0, valley_y - 45]])
    return keypoints.Fingers(tips=tips, valleys=valleys, deep=(True, True, True), thumb_seen=True)


def test_valley_frame_below_the_palm_circle_is_refused():
    from palmnode.biometrics.types import FailureReason, Roi, RoiFailure
    hand = _disc_hand()
    assert abs(hand.radius - 40) < 3 and not roi._circle_cut(hand)
    # webs ~1.1 radii above the palm circle's centre: the ROI centre lies just above it
    assert isinstance(roi._palm_frame(_fingers(95.0), hand, None, LIMITS), Roi)
    # "webs" at the level of the circle's centre (a thumb web read as a finger's, say): the ROI
    # centre would lie 0.8 radii below the palm's bulk
    found = roi._palm_frame(_fingers(140.0), hand, None, LIMITS)
    assert isinstance(found, RoiFailure) and found.reason is FailureReason.FINGERS_UNCLEAR
    assert "fingers" in found.detail


def test_ring_little_notch_above_the_middle_ring_web_gives_way_to_it():
    # index, middle and ring held together and ring and little too: the ring-little "valley" is
    # a notch up its seam, above the open middle-ring web along the fingers; the line goes
    # through the middle-ring web instead of the notch
    im, rl = IM + [0.0, -70.0], RL + [0.0, -40.0]
    lines = all_lines([im, MR, rl], (False, True, True), STRAIGHT_TIPS)
    x, v1, v3, length = lines[-1]
    assert np.allclose(v3 + x * LIMITS.middle_valley_mean * length, MR)
    assert not any(np.allclose(line[2], rl) for line in lines)
    # the ring-little web below the middle-ring one: it anchors the line as before
    low = RL + [0.0, 10.0]
    lines = all_lines([im, MR, low], (False, True, True), STRAIGHT_TIPS)
    assert np.allclose(lines[-1][2], low)
