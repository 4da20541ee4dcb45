"""Capture on the real virtual gate: lit pairs, lights off after, failures typed, devices away."""
from __future__ import annotations

import trio
import trio.testing

from drivers.camera.scene import Lighting
from palmnode.biometrics.types import FailureReason
from palmnode.gate.capture import CaptureUnavailable, Probe, ProbeFailure, process_pair
from tests.conftest import wait_for


async def lights_off(rig) -> bool:
    """The emulated board applies a command a moment after the host wrote it: wait for it."""
    await wait_for(lambda: rig.gate.lighting() == Lighting(), timeout=1.0)
    return True


async def camera_sees_dark(rig) -> None:
    """Read frames until one shows the unlit gate: every frame after it was exposed after the
    lights went off. (Between two people the gate is dark for a while; right after a capture, a
    host lagging the camera by more than the settle time still reads frames lit for that capture,
    which the next capture would take for its own.)"""
    with trio.fail_after(5):
        while (await rig.capturer.frames.next_frame(timeout=1.0)).image[::8, ::8].mean() >= \
                rig.capturer.policy.lit_min_grey:
            pass


async def hand_over(rig, identity: int, distance_mm: float = 150.0) -> None:
    scene = rig.gate.hand
    scene.present(identity, session=1, hand="right")
    scene.distance_mm = distance_mm
    await trio.to_thread.run_sync(scene.render, Lighting(ir=1.0), 0.0)  # warm the renderer


async def test_pair_is_lit_by_each_light_in_turn_and_lights_end_off(rig):
    await hand_over(rig, 101)
    pair = await rig.capturer.capture_pair()
    assert pair.surface_at > pair.at
    # the emulator renders the lights the board has on: the NIR frame shows veins (dark, broad),
    # the surface frame lines; both show the hand well above the unlit background (~2 grey)
    assert pair.nir.mean() > 10 and pair.surface.mean() > 10
    assert await lights_off(rig)
    probe = await trio.to_thread.run_sync(process_pair, pair)
    assert isinstance(probe, Probe), probe
    t = rig.capturer.timings
    assert t.total_ms > 0 and t.nir_wait_ms > 0 and t.surface_wait_ms > 0


async def test_probe_pipelined_and_empty_gate_fails_typed_without_surface_frame(rig):
    await hand_over(rig, 102)
    probe = await rig.capturer.capture_probe()
    assert isinstance(probe, Probe), probe
    assert rig.capturer.policy.quality.accepts(probe.quality)
    assert await lights_off(rig)
    rig.gate.hand.absent()
    await camera_sees_dark(rig)
    failure = await rig.capturer.capture_probe()
    assert isinstance(failure, ProbeFailure) and failure.reason is FailureReason.NO_HAND
    assert failure.feedback == "hold your palm over the gate"
    assert rig.capturer.timings.process_ms == 0.0  # nothing to warp or encode
    assert await lights_off(rig)


async def test_too_far_hand_fails_with_feedback(rig):
    await hand_over(rig, 103, distance_mm=330)
    failure = await rig.capturer.capture_probe()
    assert isinstance(failure, ProbeFailure) and failure.reason is FailureReason.TOO_FAR, failure
    assert failure.feedback == "move your hand a little closer"


async def test_camera_unplugged_mid_capture_is_unavailable_and_lights_go_off(rig, nursery):
    await hand_over(rig, 104)
    real_lit_frame = rig.capturer._lit_frame
    unplugged = trio.Event()

    async def unplug_after_nir(channel, level, previous):
        if channel == "surface" and not unplugged.is_set():  # the NIR frame is in: pull the camera
            nursery.start_soon(rig.gate.camera.unplug, 1.0)
            unplugged.set()
            await trio.testing.wait_all_tasks_blocked()
        return await real_lit_frame(channel, level, previous)

    rig.capturer._lit_frame = unplug_after_nir
    try:
        with trio.fail_after(3):
            try:
                await rig.capturer.capture_pair()
            except CaptureUnavailable as exc:
                message = str(exc)
            else:
                raise AssertionError("capture went on without a camera")
    finally:
        rig.capturer._lit_frame = real_lit_frame
    assert message.startswith("camera")
    assert "\n" not in message
    assert await lights_off(rig)


async def test_cancelled_capture_turns_lights_off(rig):
    await hand_over(rig, 105)
    with trio.move_on_after(0.01):
        await rig.capturer.capture_pair()
    assert await lights_off(rig)


async def test_burst_alternates_lights_one_new_pair_per_frame_and_stops_clean(rig):
    await hand_over(rig, 106)
    results = []
    async with rig.capturer.burst(3) as pairs:
        async for result in pairs:
            results.append(result)
    assert len(results) == 3 and all(isinstance(r, Probe) for r in results), results
    assert results[0].at < results[2].at  # NIR frames 0, 2, 2: in capture order
    assert await lights_off(rig)
    # leaving early stops the burst: lights off, nothing left running
    async with rig.capturer.burst(5) as pairs:
        first = await pairs.receive()
    assert isinstance(first, Probe)
    assert await lights_off(rig)


async def test_an_overheated_illuminator_is_a_capture_unavailable_while_it_cools(rig):
    """The person was told 'the gate is not ready', as for a device lost; the flows now say it is
    cooling down (the lights stay refused until the board is below its limit less hysteresis)."""
    await hand_over(rig, 106)
    rig.gate.illuminator.heat(50.0)  # ~75 degC against the node's 70 degC limit
    refused = None
    with trio.fail_after(5):
        while refused is None:  # the driver locks out at the board's next thermistor report
            try:
                await rig.capturer.capture_probe()
            except CaptureUnavailable as exc:
                if not str(exc).startswith("camera"):  # a late frame on a loaded machine is not this test's
                    refused = exc
    assert refused.cooling and str(refused).startswith("illuminator"), str(refused)
    assert await lights_off(rig)
    rig.gate.illuminator.heat(-50.0)
