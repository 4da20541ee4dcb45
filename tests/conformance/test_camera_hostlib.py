"""Independent clients, unchanged, against the camera emulator: plain OpenCV VideoCapture on the
URL (FFmpeg's http + mpjpeg demuxer + mjpeg decoder) and urllib for the snapshot."""
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import trio

from drivers.camera import CameraEmulator, Lighting


def videocapture_frames(url: str, n: int) -> tuple[str, list[np.ndarray]]:
    cap = cv2.VideoCapture(url)  # no backend, no options: what any OpenCV user would write
    try:
        assert cap.isOpened(), f"VideoCapture could not open {url}"
        frames = []
        for _ in range(n):
            ok, frame = cap.read()
            assert ok, "VideoCapture.read failed"
            frames.append(frame)
        return cap.getBackendName(), frames
    finally:
        cap.release()


def fetch(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers["Content-Type"], response.read()


async def test_plain_videocapture_reads_frames_of_the_right_size(nursery):
    emu = CameraEmulator(seed=21, width=640, height=480, lighting=lambda: Lighting(ir=1.0))
    await nursery.start(emu.run)
    with trio.fail_after(15):
        backend, frames = await trio.to_thread.run_sync(videocapture_frames, emu.url, 10)
    assert backend == "FFMPEG"
    for frame in frames:
        assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
        # a grey JPEG decodes to B == G == R, and the lit disc stands out from the background
        assert np.array_equal(frame[:, :, 0], frame[:, :, 2])
        assert frame[260, 320, 0] > 80 > frame[10, 10, 0]


async def test_two_videocaptures_at_once_and_another_size(nursery):
    emu = CameraEmulator(seed=22, width=320, height=240, fps=20)
    await nursery.start(emu.run)
    with trio.fail_after(15):
        async with trio.open_nursery() as clients:
            results = []

            async def one():
                results.append(await trio.to_thread.run_sync(videocapture_frames, emu.url, 5))

            clients.start_soon(one)
            clients.start_soon(one)
    assert len(results) == 2
    assert all(f.shape == (240, 320, 3) for _, frames in results for f in frames)
    assert emu.stats.connections >= 2


async def test_urllib_snapshot_decodes_and_unknown_path_is_404(nursery):
    emu = CameraEmulator(seed=23)
    await nursery.start(emu.run)
    with trio.fail_after(10):
        status, media, body = await trio.to_thread.run_sync(fetch, emu.snapshot_url)
    assert status == 200 and media == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.shape == (480, 640)
    with pytest.raises(urllib.error.HTTPError) as info:
        with trio.fail_after(10):
            await trio.to_thread.run_sync(fetch, emu.url.replace("stream.mjpg", "nothing"))
    assert info.value.code == 404
