"""One capture: both lights sequenced with the camera, then ROI, quality and features off the loop.

Sequence (``Capturer.capture_pair``): IR on → the first frame read at least ``settle_s`` after the
board took the command → IR off, surface on → the first frame at least ``settle_s`` after that →
all lights off. The lights are on only inside that sequence and go off on any way out of it
(error, cancellation) by a shielded ``finally``.

Why a settle time: a frame is stamped when it reaches the host, after exposure, readout, encoding
and transport; a frame stamped less than that latency after the light change was exposed (in
part) before it. The second light is switched as soon as the first lit frame arrives, so the
change falls just after an exposure and the next frame (one period later) is already clean when
``settle_s`` lies between the camera's latency and one frame period (docs/flows.md measures both).

``Capturer.capture_probe`` overlaps the work: the NIR frame's ROI is searched in a worker thread
while the surface frame is awaited, and a NIR frame without a usable hand ends the attempt at
once (no surface frame), with the reason and the words for the person. ``Capturer.burst`` keeps
the lights alternating (NIR, surface, NIR, ...) so that every further frame completes another
pair with the one before it: the identify flow's second and third attempts cost one frame period
each. The enrol flow takes independent captures (``capture_probe``) instead, since pairs of one
burst share frames and would agree with each other too easily.
"""
from __future__ import annotations

import collections
import contextlib
import functools
from typing import AsyncIterator, Iterator

import attrs
import numpy as np
import trio

from drivers.errors import DeviceError
from drivers.illuminator.driver import OverTemperatureLockout
from palmnode.biometrics import features, quality, roi
from palmnode.biometrics import variants as probe_variants
from palmnode.biometrics.quality import QualityPolicy
from palmnode.biometrics.roi import RoiLimits
from palmnode.biometrics.types import (
    BadImage,
    FailureReason,
    PalmTemplate,
    Quality,
    Roi,
    RoiFailure,
)
from palmnode.biometrics.variants import ProbeTemplates, Variant
from palmnode.config import IR_CHANNEL, SURFACE_CHANNEL
from palmnode.devices.camera import FrameSource
from palmnode.devices.illuminator import Lights
from palmnode.gate.debug_captures import DebugCaptures

#: camera latency observations kept (one per switch on that showed a still-dark frame)
LATENCY_WINDOW = 32


@attrs.frozen
class CapturePolicy:
    ir_channel: str = IR_CHANNEL
    surface_channel: str = SURFACE_CHANNEL
    ir_level: float = 1.0
    surface_level: float = 1.0
    #: a frame counts as lit when it reached the host this long after the light change (≥ the
    #: camera's exposure-to-host latency, < one frame period: see docs/flows.md)
    settle_s: float = 0.028
    #: a frame whose mean grey (strided sample) is below this was taken with every light off
    lit_min_grey: float = 8.0
    #: added to the longest camera latency observed (see ``Capturer.settle_s``)
    latency_margin_s: float = 0.006
    #: no lit frame within this long: the camera is stalled (the attempt fails, lights go off)
    frame_timeout_s: float = 0.4
    #: the illuminator must take a light command within this long
    light_timeout_s: float = 0.3
    quality: QualityPolicy = QualityPolicy()
    roi_limits: RoiLimits = roi.DEFAULT_LIMITS
    #: the probe is also encoded at these re-cuts of its ROI and searched as its best variant
    #: (variants.py; the gate's calibration is made under the same search); (IDENTITY,) = off
    probe_variants: tuple[Variant, ...] = probe_variants.VARIANTS


@attrs.frozen(eq=False)
class FramePair:
    """An NIR-lit and a surface-lit frame of one pose; ``at`` is when the NIR frame was read."""

    nir: np.ndarray
    surface: np.ndarray
    at: float
    surface_at: float


@attrs.frozen(eq=False)
class Probe:
    """A usable capture: the probe variants the identify flow searches with (their base, the ROI
    as found, is ``template``: what enrolment stores), its quality, the ROI, when the pair was taken."""

    variants: ProbeTemplates
    quality: Quality
    roi: Roi
    at: float

    @property
    def template(self) -> PalmTemplate:
        return self.variants.base


@attrs.frozen
class ProbeFailure:
    """A pair that gave no usable template; ``feedback`` is what the person is told."""

    reason: FailureReason
    detail: str

    @property
    def feedback(self) -> str:
        return self.reason.feedback


class CaptureUnavailable(Exception):
    """The camera or the illuminator cannot take a capture now (one-line reason); ``cooling``: the
    illuminator refuses light until it has cooled (what the person is told differs)."""

    def __init__(self, reason: str, *, cooling: bool = False) -> None:
        super().__init__(reason)
        self.cooling = cooling


@attrs.define
class CaptureTimings:
    """Where the time of the last capture went (ms); ``waits`` counts frames skipped as unlit."""

    lights_ms: float = 0.0
    nir_wait_ms: float = 0.0
    surface_wait_ms: float = 0.0
    process_ms: float = 0.0
    total_ms: float = 0.0
    skipped: int = 0
    settle_ms: float = 0.0  # the settle time in use at the end (Capturer.settle_s)


def locate(nir: np.ndarray, policy: CapturePolicy = CapturePolicy()) -> Roi | RoiFailure:
    """The ROI of an NIR frame, or why there is none (sync: run it in a worker thread)."""
    try:
        return roi.extract_roi(nir, limits=policy.roi_limits)
    except BadImage as exc:
        return RoiFailure(FailureReason.NO_HAND, str(exc))


def finish(nir: np.ndarray, surface: np.ndarray, found: Roi, at: float,
           policy: CapturePolicy = CapturePolicy()) -> Probe | ProbeFailure:
    """Warp both frames to the ROI, judge the quality, encode the template and the probe variants
    (``policy.probe_variants``, ~1.2 ms each) (sync: run it in a worker thread)."""
    if surface.shape[:2] != nir.shape[:2]:  # the ROI found in the NIR frame would be cut elsewhere
        (h, w), (sh, sw) = nir.shape[:2], surface.shape[:2]
        return ProbeFailure(FailureReason.NO_HAND, f"the NIR frame is {w}×{h} and the surface frame {sw}×{sh}: "
                            "the camera changed resolution between them")
    try:
        vein_roi = roi.warp(nir, found)
        q = quality.assess(nir, found, vein_roi, policy=policy.quality, limits=policy.roi_limits)
        if not policy.quality.accepts(q):
            return _quality_failure(q, vein_roi, policy.quality)
        template = features.encode(roi.warp(surface, found), vein_roi)
        probe = probe_variants.from_frames(surface, nir, found, policy.probe_variants, base=template)
    except BadImage as exc:
        return ProbeFailure(FailureReason.NO_HAND, str(exc))
    return Probe(variants=probe, quality=q, roi=found, at=at)


def process_pair(pair: FramePair, policy: CapturePolicy = CapturePolicy()) -> Probe | ProbeFailure:
    """ROI on the NIR frame, both frames warped, quality, features (sync: a worker thread's job)."""
    found = locate(pair.nir, policy)
    if isinstance(found, RoiFailure):
        return ProbeFailure(found.reason, found.detail)
    return finish(pair.nir, pair.surface, found, pair.at, policy)


def _quality_failure(q: Quality, vein_roi: np.ndarray, policy: QualityPolicy) -> ProbeFailure:
    detail = f"quality {q.score:.2f} (sharpness {q.sharpness:.2f}, exposure {q.exposure:.2f}, " \
             f"completeness {q.completeness:.2f})"
    if q.sharpness < policy.min_sharpness:
        return ProbeFailure(FailureReason.MOTION_BLUR, detail)
    if q.completeness < policy.min_completeness:
        return ProbeFailure(FailureReason.PARTIAL_HAND, detail)
    if q.exposure < policy.min_exposure:
        dark = float(np.median(vein_roi)) < policy.exposure_good_low
        return ProbeFailure(FailureReason.UNDER_EXPOSED if dark else FailureReason.OVER_EXPOSED, detail)
    weakest = min((q.sharpness, FailureReason.MOTION_BLUR), (q.completeness, FailureReason.PARTIAL_HAND),
                  key=lambda x: x[0])[1]
    return ProbeFailure(weakest, detail)


class Capturer:
    """Takes lit frame pairs through the node's :class:`Lights` and :class:`FrameSource`.

    One per gate, shared by the flows: ``reserved_by`` names the flow that has the gate to itself
    (an enrolment); the identify flow leaves hands alone while it is set.
    """

    def __init__(self, lights: Lights, frames: FrameSource, policy: CapturePolicy = CapturePolicy()) -> None:
        self.lights = lights
        self.frames = frames
        self.policy = policy
        self.timings = CaptureTimings()
        self.reserved_by: str | None = None
        #: delays of frames seen still dark after a switch on (the camera's latency, lately)
        self._delays: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._lock = trio.Lock()  # one capture at a time: the lights are one resource
        #: the operator's debug capture folder (node config [debug]): every lit frame offered to it
        self.debug: DebugCaptures | None = None

    @contextlib.contextmanager
    def reserve(self, owner: str) -> Iterator[None]:
        """``with capturer.reserve("enrol"):`` the gate serves ``owner`` only."""
        if self.reserved_by is not None:
            raise RuntimeError(f"the gate is already reserved by {self.reserved_by}")
        self.reserved_by = owner
        try:
            yield
        finally:
            self.reserved_by = None

    async def capture_pair(self) -> FramePair:
        """Both frames of one pose; :class:`CaptureUnavailable` when a device cannot serve."""
        async with self._lock:
            return await self._capture_pair()

    async def _capture_pair(self) -> FramePair:
        t0 = trio.current_time()
        self.timings = CaptureTimings()
        try:
            nir = await self._lit_frame(self.policy.ir_channel, self.policy.ir_level, None)
            self.timings.nir_wait_ms = (trio.current_time() - t0) * 1e3
            t1 = trio.current_time()
            surface = await self._lit_frame(self.policy.surface_channel, self.policy.surface_level,
                                            self.policy.ir_channel)
            self.timings.surface_wait_ms = (trio.current_time() - t1) * 1e3
        finally:
            await self._all_off()
        self.timings.total_ms = (trio.current_time() - t0) * 1e3
        return FramePair(nir=nir[0], surface=surface[0], at=nir[1], surface_at=surface[1])

    async def capture_probe(self) -> Probe | ProbeFailure:
        """One capture, processed: the NIR frame's ROI is searched while the surface frame is
        awaited; a NIR frame without a usable hand ends the attempt without the surface frame."""
        async with self._lock:
            return await self._capture_probe()

    async def _capture_probe(self) -> Probe | ProbeFailure:
        p = self.policy
        t0 = trio.current_time()
        self.timings = CaptureTimings()
        found: Roi | RoiFailure | None = None
        surface: tuple[np.ndarray, float] | None = None
        try:
            nir, nir_at = await self._lit_frame(p.ir_channel, p.ir_level, None)
            t1 = trio.current_time()
            self.timings.nir_wait_ms = (t1 - t0) * 1e3
            async with trio.open_nursery() as nursery:
                async def find() -> None:
                    nonlocal found
                    found = await trio.to_thread.run_sync(locate, nir, p)
                    if isinstance(found, RoiFailure):
                        nursery.cancel_scope.cancel()  # no hand to pair: skip the surface frame

                async def take_surface() -> None:
                    nonlocal surface
                    surface = await self._lit_frame(p.surface_channel, p.surface_level, p.ir_channel)
                    self.timings.surface_wait_ms = (trio.current_time() - t1) * 1e3

                nursery.start_soon(find)
                nursery.start_soon(take_surface)
        except* CaptureUnavailable as group:   # a device went away mid-pair: as from the NIR frame
            raise group.exceptions[0] from None
        finally:
            await self._all_off()
        if isinstance(found, RoiFailure):
            result: Probe | ProbeFailure = ProbeFailure(found.reason, found.detail)
        else:
            assert found is not None and surface is not None
            t2 = trio.current_time()
            result = await trio.to_thread.run_sync(finish, nir, surface[0], found, nir_at, p)
            self.timings.process_ms = (trio.current_time() - t2) * 1e3
        self.timings.total_ms = (trio.current_time() - t0) * 1e3
        return result

    @contextlib.asynccontextmanager
    async def burst(self, pairs: int) -> AsyncIterator[trio.MemoryReceiveChannel[Probe | ProbeFailure | CaptureUnavailable]]:
        """Up to ``pairs`` processed pairs from frames taken with the lights alternating
        (NIR, surface, NIR, ...): every frame after the first completes a new pair with the frame
        before it, so the second and later pairs cost one frame period each instead of two. Each
        NIR frame's ROI (searched once, in a worker thread, while the next frame is awaited)
        serves both pairs it is part of. Results arrive in order on the channel: a ``Probe``, a
        ``ProbeFailure``, or a ``CaptureUnavailable`` (then nothing more). Leaving the block
        stops the burst and turns the lights off::

            async with capturer.burst(3) as results:
                async for result in results: ...
        """
        send, receive = trio.open_memory_channel[Probe | ProbeFailure | CaptureUnavailable](pairs + 1)
        async with self._lock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._burst, send, pairs)
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()

    async def _burst(self, send: trio.MemorySendChannel, pairs: int) -> None:
        p = self.policy
        t0 = trio.current_time()
        self.timings = CaptureTimings()
        lanes = [(p.ir_channel, p.ir_level), (p.surface_channel, p.surface_level)]
        async with send, trio.open_nursery() as workers:
            try:
                # ROI results of NIR frames, and the order in which pairs are handed out
                rois: dict[int, trio.Event] = {}
                found: dict[int, Roi | RoiFailure] = {}
                turn = [trio.Event() for _ in range(pairs + 1)]
                turn[0].set()
                frames: list[tuple[np.ndarray, float]] = []
                for k in range(pairs + 1):
                    channel, level = lanes[k % 2]
                    previous = lanes[(k + 1) % 2][0] if k else None
                    t = trio.current_time()
                    frames.append(await self._lit_frame(channel, level, previous))
                    if k == 0:
                        self.timings.nir_wait_ms = (trio.current_time() - t) * 1e3
                    elif k == 1:
                        self.timings.surface_wait_ms = (trio.current_time() - t) * 1e3
                    if k % 2 == 0:
                        rois[k] = trio.Event()
                        workers.start_soon(self._locate_into, frames[k][0], k, found, rois[k])
                    if k:
                        nir_k = k if k % 2 == 0 else k - 1
                        workers.start_soon(self._pair, frames[nir_k], frames[k if k % 2 else k - 1],
                                           rois[nir_k], found, nir_k, turn[k - 1], turn[k], send)
            except CaptureUnavailable as exc:
                await send.send(exc)
            finally:
                await self._all_off()
                self.timings.total_ms = (trio.current_time() - t0) * 1e3

    async def _locate_into(self, nir: np.ndarray, k: int, found: dict, done: trio.Event) -> None:
        found[k] = await trio.to_thread.run_sync(locate, nir, self.policy)
        done.set()

    async def _pair(self, nir: tuple[np.ndarray, float], surface: tuple[np.ndarray, float], located: trio.Event,
                    found: dict, k: int, mine: trio.Event, next_turn: trio.Event, send: trio.MemorySendChannel) -> None:
        await located.wait()
        where = found[k]
        t = trio.current_time()
        if isinstance(where, RoiFailure):
            result: Probe | ProbeFailure = ProbeFailure(where.reason, where.detail)
        else:
            result = await trio.to_thread.run_sync(finish, nir[0], surface[0], where, nir[1], self.policy)
        self.timings.process_ms = (trio.current_time() - t) * 1e3
        await mine.wait()  # hand results out in capture order
        await send.send(result)
        next_turn.set()

    async def _lit_frame(self, channel: str, level: float, previous: str | None) -> tuple[np.ndarray, float]:
        """Switch ``previous`` off and ``channel`` on, then the first frame read ``settle_s`` after."""
        p = self.policy
        t = trio.current_time()
        try:
            if previous is None:
                await self.lights.set(channel, level, timeout=p.light_timeout_s)
            else:  # both commands queued at once: the illuminator actor serves them in one wake-up
                async with trio.open_nursery() as both:
                    both.start_soon(functools.partial(self.lights.set, previous, 0.0, timeout=p.light_timeout_s))
                    both.start_soon(functools.partial(self.lights.set, channel, level, timeout=p.light_timeout_s))
        except* trio.TooSlowError:
            raise CaptureUnavailable(f"illuminator did not take the {channel} light within "
                                     f"{p.light_timeout_s:.2f} s") from None
        except* (DeviceError, ValueError) as group:
            raise CaptureUnavailable(f"illuminator: {group.exceptions[0]}",
                                     cooling=group.subgroup(OverTemperatureLockout) is not None) from None
        changed = trio.current_time()
        self.timings.lights_ms += (changed - t) * 1e3
        self.timings.settle_ms = self.settle_s * 1e3
        deadline = changed + p.frame_timeout_s
        while True:
            left = deadline - trio.current_time()
            try:
                if left <= 0:
                    raise trio.TooSlowError
                frame = await self.frames.next_frame(timeout=left)
            except trio.TooSlowError:
                raise CaptureUnavailable(f"camera gave no {channel}-lit frame within "
                                         f"{p.frame_timeout_s:.2f} s") from None
            except (DeviceError, trio.ClosedResourceError) as exc:
                raise CaptureUnavailable(f"camera: {exc}") from None
            delay = frame.captured_at - changed
            if previous is None and delay > 0 and not self._lit(frame.image):
                # still dark although stamped after the switch: it was exposed before the light
                # came on, so the camera's latency is at least this much (learned for later switches)
                self._delays.append(delay)
                self.timings.skipped += 1
                continue
            if delay >= self.settle_s and (previous is not None or self._lit(frame.image)):
                if self.debug is not None:
                    self.debug.offer(channel, frame.image, frame.captured_at)
                return frame.image, frame.captured_at
            self.timings.skipped += 1

    def _lit(self, image: np.ndarray) -> bool:
        """A frame taken with a light on: the lit background alone is ~15 grey (docs/synthetic-hands.md),
        an unlit gate ~2; a strided sample is plenty to tell."""
        return float(image[::8, ::8].mean()) >= self.policy.lit_min_grey

    @property
    def settle_s(self) -> float:
        """The settle time in use: the policy's, or the camera latency observed lately (the longest
        delay of a frame still dark after a switch on, over the last ``LATENCY_WINDOW`` captures)
        plus ``latency_margin_s`` when that is longer — a loaded host or a slow camera stretches
        it, and a frame stamped within it may still show the previous light."""
        observed = max(self._delays, default=0.0) + self.policy.latency_margin_s
        return max(self.policy.settle_s, observed if self._delays else 0.0)

    async def _all_off(self) -> None:
        p = self.policy
        with trio.CancelScope(shield=True), trio.move_on_after(2 * p.light_timeout_s):
            for channel in (p.ir_channel, p.surface_channel):
                try:
                    await self.lights.set(channel, 0.0, timeout=p.light_timeout_s)
                except (DeviceError, ValueError, trio.TooSlowError):
                    pass  # a board that is away has its lights off (closing it turns them off)


__all__ = ["CapturePolicy", "CaptureTimings", "CaptureUnavailable", "Capturer", "FramePair", "Probe",
           "ProbeFailure", "finish", "locate", "process_pair"]
