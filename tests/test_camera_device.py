"""The camera actor (palmnode/devices/camera.py) against a hostile MJPEG camera on loopback."""
import cv2
import pytest
import trio

from drivers.camera import FULL_IR, DiscScene
from drivers.errors import DeviceLost
from palmnode.actors import EventBus, HealthRegistry
from palmnode.config import CameraConfig
from palmnode.devices import camera as camera_actor
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
