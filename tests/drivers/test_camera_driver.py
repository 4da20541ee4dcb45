"""The camera driver against the emulator over real loopback sockets (OpenCV FFmpeg backend)."""
import functools
import itertools
import logging
import statistics
import struct
import threading

import cv2
import numpy as np
import pytest
import trio

from drivers.camera import DARK, FULL_IR, Camera, CameraEmulator, DiscScene, Lighting, codec
from drivers.camera import driver as camera_driver
from drivers.camera.driver import jpeg_looks_whole
from drivers.errors import DeviceLost, DeviceTimeout, PortUnavailable
from tests.conftest import wait_for

PERIOD = 1 / 30  # the emulator's default frame rate


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("camera-reader") and t.is_alive()]


def sof_sized(jpeg: np.ndarray, width: int, height: int) -> bytes:
    """``jpeg`` with its SOF0 header declaring ``width`` x ``height`` (the scan data unchanged)."""
    data = bytearray(jpeg.tobytes())
    at = data.find(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def with_scans(jpeg: np.ndarray, scans: int) -> bytes:
    """``jpeg`` (progressive) with its last scan repeated until it has ``scans`` of them."""
    data = jpeg.tobytes()
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:end] + data[last:end] * (scans - data.count(b"\xff\xda")) + data[end:]


async def serve_parts(nursery, part, framing=codec.mjpeg_part) -> str:
    """A minimal hostile MJPEG camera on loopback: ``part(k)`` is the k-th JPEG sent, 30 a second,
    each framed by ``framing`` (well framed by the codec by default). Returns its stream URL."""
    async def handler(stream):
        try:
            await stream.receive_some()  # the request head (one read on loopback)
            await stream.send_all(codec.stream_response_head())
            for k in itertools.count():
                await stream.send_all(framing(part(k)))
                await trio.sleep(PERIOD)
        except trio.BrokenResourceError:
            pass

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/stream.mjpg"


@pytest.fixture
async def light():
    return [FULL_IR]


@pytest.fixture
async def emu(nursery, light):
    emulator = CameraEmulator(seed=11, lighting=lambda: light[0])
    await nursery.start(emulator.run)
    return emulator


async def test_frames_arrive_grey_with_seq_time_and_stats(emu):
    async with await Camera.open(emu.url, width=320, exposure=10) as cam:
        assert cam.backend == "FFMPEG" and cam.raw_jpeg
        frames = [await cam.next_frame(timeout=2) for _ in range(5)]
        now = trio.current_time()
        for frame in frames:
            assert frame.image.shape == (480, 640) and frame.image.dtype == np.uint8
            assert not frame.image.flags.writeable
            assert now - 1.0 < frame.captured_at <= now
        assert [f.seq for f in frames] == sorted({f.seq for f in frames})
        assert [f.captured_at for f in frames] == sorted(f.captured_at for f in frames)
        assert cam.latest() is frames[-1] or cam.latest().seq > frames[-1].seq
        assert cam.stats.frames >= 5 and cam.stats.last_frame_at >= frames[-1].captured_at
        assert 10 < cam.stats.fps < 60 and cam.stats.decode_errors == 0
        # a stream URL takes no capture properties: the camera decides, and the driver says so
        assert {r.name: r.accepted for r in cam.settings} == {"width": False, "exposure": False}
        assert cam.accepted == frozenset()
        result = await cam.set_gain(4)
        assert result.name == "gain" and result.requested == 4 and not result.accepted
        assert not (await cam.set_exposure(20)).accepted
        assert (await cam.next_frame(timeout=2)).seq > frames[-1].seq  # still streaming
    assert not reader_threads()


async def test_lighting_shows_in_brightness_and_dark_is_dark(emu, light):
    async with await Camera.open(emu.url) as cam:
        lit = (await cam.next_frame(timeout=2)).image
        light[0] = DARK
        with trio.fail_after(2):
            async for frame in cam.frames():
                if frame.image.mean() < 6:
                    break
        assert frame.image.max() < 40  # sensor noise only
        light[0] = Lighting(ir=0.5)
        with trio.fail_after(2):
            async for frame in cam.frames():
                if frame.image.mean() > 6:
                    break
        half = frame.image
        centre = (slice(250, 280), slice(300, 340))
        assert 100 < lit[centre].mean() < 125 and 45 < half[centre].mean() < 70


async def test_slow_consumer_gets_newest_frame_and_drops_are_counted(emu):
    async with await Camera.open(emu.url) as cam:
        first = await cam.next_frame(timeout=2)
        before = trio.current_time()
        await trio.sleep(0.4)  # the scenario: a consumer busy for 12 frame times
        assert cam.latest().seq > first.seq + 1
        fresh = await cam.next_frame(timeout=2)
        assert fresh.captured_at > before  # not a stale frame kept from before the pause
        assert fresh.dropped_before >= 1 and fresh.seq - first.seq == fresh.dropped_before + 1
        assert cam.stats.drops >= fresh.dropped_before
        nxt = await cam.next_frame(timeout=2)
        assert nxt.dropped_before == 0 and nxt.seq == fresh.seq + 1


async def test_unplug_is_device_lost_then_reopen_at_same_url(emu, nursery, caplog):
    caplog.set_level(logging.DEBUG, logger="drivers.camera.driver")
    cam = await Camera.open(emu.url)
    await cam.next_frame(timeout=2)
    nursery.start_soon(emu.unplug, 0.5)
    with pytest.raises(DeviceLost, match="stream ended.*reopen"):
        with trio.fail_after(3):
            async for _ in cam.frames():
                pass
    with pytest.raises(DeviceLost):  # stays lost
        await cam.next_frame()
    await cam.aclose()
    assert not reader_threads()
    if not emu.plugged:
        with pytest.raises(PortUnavailable, match="cannot open the stream"):
            await Camera.open(emu.url, open_timeout=2)
    with trio.fail_after(3):
        await emu.replugged()
    async with await Camera.open(emu.url) as again:
        assert (await again.next_frame(timeout=2)).image.shape == (480, 640)
    # the errors reach the caller as exceptions; the driver logs them at debug level only (a node
    # reopening an absent camera every second must not log a warning every second)
    camera_logs = [r for r in caplog.records if r.name == "drivers.camera.driver"]
    assert camera_logs and all(r.levelno == logging.DEBUG for r in camera_logs)


async def test_stall_is_timeout_then_stream_resumes(emu):
    async with await Camera.open(emu.url, read_timeout=3) as cam:
        await cam.next_frame(timeout=2)
        emu.stall(0.8)
        with pytest.raises(DeviceTimeout, match="no frame within"):
            with trio.fail_after(2):
                while True:  # a frame already in flight may still arrive
                    await cam.next_frame(timeout=0.25)
        frame = await cam.next_frame(timeout=3)
        assert frame.image.shape == (480, 640)


async def test_stall_longer_than_read_timeout_is_lost_and_close_is_bounded(emu):
    cam = await Camera.open(emu.url, read_timeout=0.4)
    await cam.next_frame(timeout=2)
    emu.stall(1.0)
    with pytest.raises(DeviceLost, match="no frame for 0.4s"):
        with trio.fail_after(3):
            async for _ in cam.frames(timeout=2):
                pass
    await cam.aclose()
    assert not reader_threads()
    emu.stall(0)

    cam = await Camera.open(emu.url, read_timeout=0.6)
    await cam.next_frame(timeout=2)
    emu.stall(3)
    with pytest.raises(DeviceTimeout):
        while True:  # drain what was in flight: afterwards the reader is blocked in the backend
            await cam.next_frame(timeout=0.15)
    start = trio.current_time()
    await cam.aclose()
    assert trio.current_time() - start < 0.6 + 0.5 and not reader_threads()
    emu.stall(0)


async def test_corrupt_part_is_counted_and_skipped(emu):
    async with await Camera.open(emu.url) as cam:
        await cam.next_frame(timeout=2)
        emu.inject_garbage()
        with trio.fail_after(3):
            async for frame in cam.frames():
                if cam.stats.decode_errors:
                    break
        assert cam.stats.decode_errors == 1 and emu.stats.corrupt_parts == 1
        after = [await cam.next_frame(timeout=2) for _ in range(3)]
        assert all(f.image.shape == (480, 640) for f in after)
        assert cam.stats.decode_errors == 1


async def test_slow_first_answer_open_timeout(emu):
    emu.slow_first_answer(1.0)
    with pytest.raises(DeviceTimeout, match="no stream within 0.3s"):
        await Camera.open(emu.url, open_timeout=0.3)
    async with await Camera.open(emu.url, open_timeout=3) as cam:
        assert (await cam.next_frame(timeout=2)).seq == 0
    assert not reader_threads()


async def test_close_stops_thread_promptly_and_ends_iteration(emu, nursery):
    cam = await Camera.open(emu.url)
    seen = []
    streaming, ended = trio.Event(), trio.Event()

    async def consume():
        async for frame in cam.frames():
            seen.append(frame)
            if len(seen) == 3:
                streaming.set()
        ended.set()

    nursery.start_soon(consume)
    with trio.fail_after(2):
        await streaming.wait()
    start = trio.current_time()
    await cam.aclose()
    assert trio.current_time() - start < 0.5
    with trio.fail_after(1):
        await ended.wait()
    assert not reader_threads()
    with pytest.raises(trio.ClosedResourceError):
        await cam.next_frame()


async def test_bad_sources_are_named():
    with pytest.raises(ValueError, match="not a device index"):
        await Camera.open("camera.avi")
    with pytest.raises(PortUnavailable, match="/dev/video99: cannot open the device"):
        await Camera.open("/dev/video99", open_timeout=2)
    assert not reader_threads()


# ---- decoding only on demand -------------------------------------------------------------------
class CountingToken:
    """The reader's TrioToken, counting its calls into trio."""

    def __init__(self, token):
        self.token = token
        self.calls = 0

    def run_sync_soon(self, fn, *args):
        self.calls += 1
        self.token.run_sync_soon(fn, *args)


async def test_nothing_is_decoded_and_trio_not_woken_while_nobody_asks(emu):
    async with await Camera.open(emu.url) as cam:
        token = cam._reader.token = CountingToken(cam._reader.token)
        await wait_for(lambda: cam.stats.frames >= 15, timeout=3)
        stats = cam.stats
        assert stats.decoded == 0 and stats.decode_errors == 0 and stats.drops == 0
        assert 10 < stats.fps < 60 and trio.current_time() - stats.last_frame_at < 0.5
        assert token.calls == 0  # not one cross-thread call for 15 frames
        assert cam.latest() is None  # nothing decoded yet (the call starts a burst of decoding)


async def test_first_ask_gets_a_fresh_frame_at_once_then_the_burst_ends(emu, monkeypatch):
    monkeypatch.setattr(camera_driver, "DEMAND_WINDOW_S", 0.3)
    async with await Camera.open(emu.url) as cam:
        await wait_for(lambda: cam.stats.frames >= 10, timeout=3)
        emu.stall(1.5)  # no next frame for 1.5 s (the reader gives up at 1.8): waiting for one would time out below
        read = 0
        while cam.stats.frames != read:  # what was in flight has been read
            read = cam.stats.frames
            await trio.sleep(0.15)
        first = await cam.next_frame(timeout=0.4)  # decoded on the spot, no wait for the next frame
        assert first.seq == read - 1  # the newest frame read
        assert cam.stats.last_frame_at == first.captured_at  # one moment, one trio time
        assert first.dropped_before == 0 and first.image.shape == (480, 640)
        assert cam.stats.decoded == 1
        burst = [await cam.next_frame(timeout=2) for _ in range(5)]
        assert [f.seq for f in burst] == list(range(first.seq + 1, first.seq + 6))
        assert all(f.dropped_before == 0 for f in burst) and cam.stats.drops == 0
        assert cam.latest() is burst[-1] or cam.latest().seq > burst[-1].seq
        # the reader decoded the burst as it read it; once nobody asks for 0.3 s it stops
        await wait_for(lambda: cam.stats.frames > burst[-1].seq + 20, timeout=3)
        decoded = cam.stats.decoded
        await wait_for(lambda: cam.stats.frames > burst[-1].seq + 35, timeout=3)
        assert cam.stats.decoded == decoded
        again = await cam.next_frame(timeout=2)
        assert again.dropped_before == 0  # a new burst: the frames nobody wanted are not drops


async def test_waiting_consumer_is_woken_by_the_next_frame_within_a_period(emu):
    async with await Camera.open(emu.url) as cam:
        frame = await cam.next_frame(timeout=2)
        handed_over = []
        for _ in range(9):
            nxt = await cam.next_frame(timeout=2)
            assert nxt.seq == frame.seq + 1
            handed_over.append(trio.current_time() - nxt.captured_at)
            frame = nxt
        # woken as the frame is read, not by a poll: how long the emulator takes to send it is its
        # own business (a loaded machine sends late), and one scheduling hiccup is not the driver's
        assert statistics.median(handed_over) < PERIOD / 2, handed_over


async def test_newest_does_not_take_and_latest_follows_it(emu):
    async with await Camera.open(emu.url) as cam:
        await wait_for(lambda: cam.stats.frames >= 3, timeout=3)
        newest = await cam.newest()
        assert cam.latest() is newest and cam.stats.decoded == 1
        taken = await cam.next_frame(timeout=2)
        assert taken.seq >= newest.seq  # newest() took nothing away from next_frame()


async def test_watch_without_consumer_reports_stall_then_the_stream_resumes(emu):
    async with await Camera.open(emu.url, read_timeout=3) as cam:
        with trio.move_on_after(0.3):  # frames flow: watch just waits
            await cam.watch(stall_timeout=0.2)
        emu.stall(1.0)
        with pytest.raises(DeviceTimeout, match="no frame read for"):
            with trio.fail_after(2):
                await cam.watch(stall_timeout=0.3)
        frame = await cam.next_frame(timeout=3)
        assert frame.image.shape == (480, 640) and cam.stats.decoded >= 1


async def test_watch_without_consumer_reports_lost_and_returns_on_close(emu, nursery):
    cam = await Camera.open(emu.url)
    await wait_for(lambda: cam.stats.frames >= 3, timeout=3)
    nursery.start_soon(emu.unplug, 0.3)
    with pytest.raises(DeviceLost, match="stream ended"):
        with trio.fail_after(3):
            await cam.watch()
    await cam.aclose()
    assert cam.stats.decoded == 0
    with trio.fail_after(3):
        await emu.replugged()
    async with await Camera.open(emu.url) as again:
        returned = trio.Event()

        async def watch():
            await again.watch()
            returned.set()

        nursery.start_soon(watch)
        await wait_for(lambda: again.stats.frames >= 3, timeout=3)
        await again.aclose()
        with trio.fail_after(1):
            await returned.wait()


async def test_corrupt_part_is_counted_without_decoding(emu):
    async with await Camera.open(emu.url) as cam:
        await wait_for(lambda: cam.stats.frames >= 3, timeout=3)
        emu.inject_garbage()
        await wait_for(lambda: cam.stats.decode_errors == 1, timeout=3)
        await wait_for(lambda: cam.stats.frames >= 10, timeout=3)
        assert cam.stats.decode_errors == 1 and cam.stats.decoded == 0


def test_jpeg_structure_check():
    image = DiscScene()(FULL_IR, 0.5)
    grey = cv2.imencode(".jpg", image)[1]
    colour = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_GRAY2BGR),
                          [cv2.IMWRITE_JPEG_RST_INTERVAL, 4, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    padded = np.concatenate([grey, np.frombuffer(b"\r\n", np.uint8)])
    assert all(jpeg_looks_whole(j) for j in (grey, colour, padded, grey.reshape(1, -1)))
    noise = np.frombuffer(b"\xff\xd8" + np.random.default_rng(1).bytes(5000) + b"\xff\xd9", np.uint8)
    for bad in (grey[:-200], grey[:300], grey[2:], noise, np.zeros(0, np.uint8), grey[:3]):
        assert not jpeg_looks_whole(bad)
    limit = camera_driver.MAX_FRAME_PIXELS
    assert jpeg_looks_whole(np.frombuffer(sof_sized(grey, limit // 4096, 4096), np.uint8))
    for width, height in ((limit // 4096 + 1, 4096), (30000, 30000), (0, 480), (640, 0)):
        assert not jpeg_looks_whole(np.frombuffer(sof_sized(grey, width, height), np.uint8))
    scans = colour.tobytes().count(b"\xff\xda")  # libjpeg's progressive script for colour: 10
    assert scans == 10 and jpeg_looks_whole(np.frombuffer(with_scans(colour, camera_driver.MAX_SCANS),
                                                           np.uint8))
    assert not jpeg_looks_whole(np.frombuffer(with_scans(colour, camera_driver.MAX_SCANS + 1), np.uint8))


async def test_jpeg_imdecode_refuses_is_counted_and_the_stream_goes_on(nursery):
    good = cv2.imencode(".jpg", DiscScene()(FULL_IR, 0.5))[1]
    huge = sof_sized(good, 60000, 60000)  # more than CV_IO_MAX_IMAGE_PIXELS: imdecode raises
    assert camera_driver._to_grey(np.frombuffer(huge, np.uint8), True) is None
    url = await serve_parts(nursery, lambda k: huge if k == 3 else good.tobytes())
    async with await Camera.open(url) as cam:
        with trio.fail_after(3):
            async for frame in cam.frames():  # a consumer: every part is decoded as it is read
                assert frame.image.shape == (480, 640)
                if cam.stats.decode_errors:
                    break
        assert (await cam.next_frame(timeout=2)).image.shape == (480, 640)
        assert cam.stats.decode_errors == 1


def _huge_frame(good):
    # 30000x30000 in a 10 KB part: imdecode would fill a 900 MB image (~3 s of CPU) with grey
    return sof_sized(good, 30000, 30000)


def _thousand_scans(good):
    # a progressive 4096x4096 grey part of ~100 KB repeating its last scan: libjpeg makes a pass
    # over the whole frame per scan, 11 s of CPU for this one part
    return with_scans(cv2.imencode(".jpg", np.full((4096, 4096), 128, np.uint8),
                                   [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1], 1000)


@pytest.mark.parametrize("make_bad", [_huge_frame, _thousand_scans])
async def test_a_part_too_costly_to_decode_is_counted_and_never_decoded(nursery, monkeypatch, make_bad):
    decoded = []
    to_grey = camera_driver._to_grey
    monkeypatch.setattr(camera_driver, "_to_grey", lambda data, raw: decoded.append(len(data))
                        or to_grey(data, raw))
    good = cv2.imencode(".jpg", DiscScene()(FULL_IR, 0.5))[1]
    bad = make_bad(good)
    url = await serve_parts(nursery, lambda k: bad if k == 3 else good.tobytes())
    async with await Camera.open(url) as cam:
        with trio.fail_after(3):
            async for frame in cam.frames():
                assert frame.image.shape == (480, 640)
                if cam.stats.decode_errors:
                    break
        assert (await cam.next_frame(timeout=2)).image.shape == (480, 640)
        assert cam.stats.decode_errors == 1 and len(bad) not in decoded


async def test_stream_of_parts_that_are_not_jpeg_is_named_not_called_unplugged(nursery):
    jpeg = cv2.imencode(".jpg", DiscScene()(FULL_IR, 0.5))[1].tobytes()
    url = await serve_parts(nursery, lambda k: jpeg, framing=lambda data: codec.mjpeg_part(
        data).replace(b"Content-Type: image/jpeg", b"Content-Type: text/plain"))
    with trio.fail_after(5), pytest.raises(DeviceLost, match="before its first frame .*image/jpeg"):
        async with await Camera.open(url) as cam:  # the first read fails during or just after open
            await cam.next_frame(timeout=2)
