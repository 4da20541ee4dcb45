"""A Benewake TFmini Plus (or TFmini-S) on a pseudo-terminal, looking at a scene.

It streams data frames at the configured frame rate while a host has the port open and output is
enabled, answers every §7.4 command with its real reply, keeps a "flash" copy of the settings
(saved by 0x11, restored by 0x10) that a power cycle (unplug/replug) or a system reset (0x02)
reloads, and reports the distance to whatever :meth:`ProximityEmulator.set_target` put in front of
it, else the background, with the noise and strength the manual describes.
"""
from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Literal

import attrs
import trio

from drivers.emulation import SerialEmulator
from drivers.proximity import codec

#: Plus manual §1.5: 0-10 cm is the blind zone, output there is unreliable
BLIND_ZONE_MM = 100.0
#: Plus manual §1.3: operating range 0.1-12 m (90% reflectivity)
MAX_RANGE_MM = 12000.0
#: Plus manual §1.4 repeatability: STD[cm] = p00 + p10 x + p01 y + p20 x^2 + p11 x y,
#: x = log10(strength), y = log10(frame rate)
P00, P01, P10, P20, P11 = 0.9758, 1.175, -0.6072, 0.09501, -0.2904
MIN_NOISE_MM = 2.0  # the fit goes to ~0 at high strength; real units keep a few mm of jitter
HAND_GAIN = 3000.0  # strength of a palm (skin, ~50% NIR reflectivity) at 1 m
BACKGROUND_GAIN = 1000.0  # strength of a ceiling/floor at 1 m
STRENGTH_FALLOFF = 1.2  # strength ~ gain * (1 m / d) ** falloff (AGC flattens the 1/d^2 law)
DEFAULT_FIRMWARE = codec.FirmwareVersion(2, 0, 6)


@attrs.frozen
class SensorSettings:
    """What the sensor keeps in RAM and, after ``save settings``, in flash (§7.4 defaults)."""

    fmt: int = codec.OutputFormat.STANDARD_CM
    frame_rate_hz: int = 100
    baudrate: int = 115200
    output_enabled: bool = True


FACTORY_SETTINGS = SensorSettings()


class ProximityEmulator(SerialEmulator):
    """A TFmini Plus (``model="plus"``, distance 0 when unreliable) or TFmini-S (``model="s"``,
    distance -1/-2 when unreliable). Run with ``await nursery.start(emulator.run)``."""

    device = "proximity"

    def __init__(self, link: Path, *, seed: int | None = None, model: Literal["plus", "s"] = "plus",
                 background_mm: float | None = 1200.0, temperature_c: float = 36.0,
                 firmware: codec.FirmwareVersion = DEFAULT_FIRMWARE) -> None:
        super().__init__(link, seed=seed)
        if model not in ("plus", "s"):
            raise ValueError(f"model must be 'plus' or 's', not {model!r}")
        self.model = model
        self.background_mm = background_mm
        self.temperature_c = temperature_c
        self.firmware = firmware
        self.saved_settings = FACTORY_SETTINGS  # the flash
        self.settings = FACTORY_SETTINGS  # the RAM copy in use
        self.frames_sent = 0
        #: the last 256 well-formed commands, oldest first (what a host really sent)
        self.commands_received: collections.deque[codec.Command | codec.UnknownCommand] = (
            collections.deque(maxlen=256))
        self._target_mm: float | None = None
        self._decoder = codec.CommandDecoder()
        self._settings_changed = trio.Event()

    # ---- the scene ------------------------------------------------------------------------
    def set_target(self, distance_mm: float | None) -> None:
        """Put a hand ``distance_mm`` in front of the sensor; ``None`` takes it away."""
        if distance_mm is not None and not distance_mm >= 0:
            raise ValueError(f"target distance must be >= 0 mm, not {distance_mm}")
        self._target_mm = distance_mm

    @property
    def target_mm(self) -> float | None:
        return self._target_mm

    def reading(self) -> tuple[int, int]:
        """One (distance in the configured unit, strength) as the sensor would report it now."""
        if self._target_mm is not None:
            true_mm, gain = self._target_mm, HAND_GAIN
        elif self.background_mm is not None:
            true_mm, gain = self.background_mm, BACKGROUND_GAIN
        else:
            true_mm, gain = math.inf, 0.0
        rng = self.rng
        if true_mm < BLIND_ZONE_MM:
            strength = codec.SATURATED_STRENGTH  # the emitter floods the receiver
        elif true_mm > MAX_RANGE_MM or gain == 0.0:
            strength = rng.randrange(0, codec.WEAK_STRENGTH // 2)  # nothing returns: noise floor
        else:
            strength = gain * (1000.0 / true_mm) ** STRENGTH_FALLOFF * (1.0 + rng.gauss(0.0, 0.02))
            strength = max(0, min(codec.SATURATED_STRENGTH - 1, int(strength)))
        if strength < codec.WEAK_STRENGTH or strength == codec.SATURATED_STRENGTH:
            if self.model == "plus":
                return 0, strength  # Plus manual §5.4
            weak = strength < codec.WEAK_STRENGTH
            return (codec.S_DIST_WEAK if weak else codec.S_DIST_SATURATED), strength  # S Table 8
        x = math.log10(strength)
        y = math.log10(max(self.settings.frame_rate_hz, 1))
        std_mm = max(MIN_NOISE_MM, 10.0 * (P00 + P10 * x + P01 * y + P20 * x * x + P11 * x * y))
        measured_mm = max(0.0, true_mm + rng.gauss(0.0, std_mm))
        if self.settings.fmt == codec.OutputFormat.STANDARD_MM:
            return round(measured_mm), strength
        return round(measured_mm / 10.0), strength  # cm, also the basis of the Pixhawk string

    def frame(self) -> bytes:
        """The next output frame in the configured format."""
        distance, strength = self.reading()
        if self.settings.fmt == codec.OutputFormat.PIXHAWK:
            return codec.encode_pixhawk(distance / 100.0)
        return codec.encode_measurement(distance, strength, codec.temperature_raw(self.temperature_c))

    def corrupt(self, frame: bytes) -> bytes:
        """``frame`` with its checksum (last byte) broken."""
        return frame[:-1] + bytes(((frame[-1] + 1) & 0xFF,)) if frame else frame

    # ---- power ----------------------------------------------------------------------------
    def power_cycle(self) -> None:
        """What power-up does: reload the settings from flash, forget half-received commands."""
        self._apply(self.saved_settings)
        self._decoder.clear()

    async def unplug(self, seconds: float) -> None:
        """Pull the cable (the sensor loses power) and plug it back after ``seconds``."""
        self.power_cycle()
        await super().unplug(seconds)

    # ---- host commands ----------------------------------------------------------------------
    async def on_receive(self, data: bytes) -> None:
        self._decoder.receive_data(data)
        while (event := self._decoder.next_event()) is not None:
            if isinstance(event, codec.Malformed):
                continue  # a real sensor silently ignores what it cannot parse
            self.commands_received.append(event)
            await self._execute(event)

    async def _execute(self, command: codec.Command | codec.UnknownCommand) -> None:
        s = self.settings
        match command:
            case codec.GetFirmwareVersion():
                await self.send(codec.encode_reply(self.firmware))
            case codec.SystemReset():
                self.power_cycle()  # state first, so a host that saw the reply sees its effect
                await self.send(codec.encode_reply(codec.SystemResetReply(ok=True)))
            case codec.SetFrameRate(rate_hz=rate) if rate <= codec.MAX_FRAME_RATE_HZ:
                self._apply(attrs.evolve(s, frame_rate_hz=rate))
                await self.send(codec.encode_reply(codec.FrameRateReply(rate)))
            case codec.TriggerDetection():
                await self.send(self.frame())
            case codec.SetOutputFormat(fmt=fmt) if fmt in codec.OutputFormat.__members__.values():
                self._apply(attrs.evolve(s, fmt=codec.OutputFormat(fmt)))
                await self.send(codec.encode_reply(codec.OutputFormatReply(fmt)))
            case codec.SetBaudRate(baudrate=baud):
                # a pty has no line rate; the setting is kept and echoed as the sensor does
                self._apply(attrs.evolve(s, baudrate=baud))
                await self.send(codec.encode_reply(codec.BaudRateReply(baud)))
            case codec.EnableOutput(enabled=enabled):
                self._apply(attrs.evolve(s, output_enabled=enabled))
                await self.send(codec.encode_reply(codec.OutputEnableReply(enabled)))
            case codec.RestoreFactorySettings():
                self.saved_settings = FACTORY_SETTINGS
                self._apply(FACTORY_SETTINGS)
                await self.send(codec.encode_reply(codec.RestoreFactoryReply(ok=True)))
            case codec.SaveSettings():
                self.saved_settings = self.settings
                await self.send(codec.encode_reply(codec.SaveSettingsReply(ok=True)))
            case _:
                pass  # undocumented or out-of-range: the sensor does not answer

    def _apply(self, settings: SensorSettings) -> None:
        if settings != self.settings:
            self.settings = settings
            self._settings_changed.set()
            self._settings_changed = trio.Event()

    # ---- running ----------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(super().run)
            nursery.start_soon(self._stream)
            task_status.started()

    async def _stream(self) -> None:
        """The frame clock: one frame per period on trio's clock, one write per frame."""
        next_at = trio.current_time()
        while True:
            s = self.settings
            if not s.output_enabled or s.frame_rate_hz == 0:
                await self._settings_changed.wait()
                next_at = trio.current_time()
                continue
            if not self.host_attached:
                await self.wait_host_attached()  # streams as soon as a host opens the port
                next_at = trio.current_time()
                continue
            period = 1.0 / s.frame_rate_hz
            with trio.move_on_at(next_at) as waiting:
                await self._settings_changed.wait()  # a new rate applies from now
            if not waiting.cancelled_caught:
                next_at = trio.current_time()
                continue
            if self.emit(self.frame()):
                self.frames_sent += 1
            next_at += period
            now = trio.current_time()
            if next_at < now - 10 * period:
                next_at = now  # fell far behind (a loaded machine): skip, a UART does not catch up
