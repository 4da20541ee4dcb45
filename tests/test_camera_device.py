"""The camera actor (palmnode/devices/camera.py) against a hostile MJPEG camera on loopback."""
import cv2
import pytest
import trio

from drivers.camera import FULL_IR, DiscScene
from drivers.errors import DeviceLost
from drivers.camera import CameraEmulator
from palmnode.actors import Backoff, DeviceState, EventBus, HealthRegistry
from palmnode.config import CameraConfig
from palmnode.devices import camera as camera_actor
from palmnode.devices.session import DeviceSession
from tests.conftest import wait_for
from tests.drivers.test_camera_driver import serve_parts


async def test_bad_parts_that_end_the_session_are_counted_in_health(nursery, monkeypatch):
    monkeypatch.setattr(camera_actor, "HEALTH_PERIOD_S", 60.0)  # only the session's end mirrors
    jpeg = cv2.imencode(".jpg", DiscScene()(FULL_IR, 0.5))[1].tobytes()
    url = await serve_parts(nursery, lambda k: jpeg[: len(jpeg) // 2])  # every part truncated
    bus = EventBus()
    health = HealthRegistry(bus)
    health.register(camera_actor.NAME)
    with trio.fail_after(5), pytest.raises(DeviceLost, match="30 undecodable frames in a row"):
        await camera_actor.serve(CameraConfig(source=url), health, bus, camera_actor.FrameSource(),
                                 lambda: None)
    assert health.device(camera_actor.NAME).counters == {"dropped_decode": 30}


async def test_settings_a_stream_does_not_accept_are_logged_once_a_run_not_at_each_reopen(nursery, caplog):
    """A URL camera accepts none of width/height/fps/exposure/gain: each open logged five lines
    'backend FFMPEG did not accept …', again at every reopen after a loss. Now one line listing
    them the first time in the run (the actor's FrameSource lives as long as the node), none at
    a reopen that changes nothing."""
    emu = CameraEmulator(seed=3)
    await nursery.start(emu.run)
    cfg = CameraConfig(source=emu.url, width=640, height=480, fps=30, exposure=-6, gain=4)
    bus = EventBus()
    health = HealthRegistry(bus)
    health.register(camera_actor.NAME)
    session = DeviceSession(camera_actor.NAME, health, Backoff(initial=0.05, maximum=0.05))
    frames = camera_actor.FrameSource()
    caplog.set_level("DEBUG")

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelname == "INFO" and "did not accept" in r.getMessage()]

    def state() -> DeviceState:
        return health.device(camera_actor.NAME).state

    nursery.start_soon(session.run, lambda ready: camera_actor.serve(cfg, health, bus, frames, ready))
    await wait_for(lambda: state() is DeviceState.READY)
    assert said() == [f"camera {emu.url}: backend FFMPEG did not accept width=640, height=480, fps=30, "
                      "exposure=-6, gain=4 (logged once a run)"]
    for _ in range(2):  # the stream lost and reopened: nothing new to say
        await emu.unplug(0.1)
        await wait_for(lambda: state() is DeviceState.LOST)
        await wait_for(lambda: state() is DeviceState.READY)
    assert len(said()) == 1, said()
    # the driver's own line (one per open) is at debug level
    assert len([r for r in caplog.records if r.levelname == "DEBUG" and "did not accept" in r.getMessage()]) == 3
