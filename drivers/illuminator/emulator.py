"""The LED driver board as a pty: an Arduino Uno running StandardFirmata 2.5 plus palmnode's
dead-man / over-temperature extension (docs/protocols/illuminator.md).

It behaves like the firmware does (``StandardFirmata.ino`` 2.5.x, ``Boards.h`` Uno layout):
20 pins, PWM on 3, 5, 6, 9, 10, 11, analog channels A0-A5 on pins 14-19, I2C on 18/19, pins 0/1
taken by the serial port. Like an Uno with DTR auto-reset, every host open restarts the board,
which then sends its protocol version and firmware report as ``setup()`` does. A thermal model
moves the NTC thermistor (on ``thermistor_pin``, an analog channel) with total light output.

The virtual gate and tests read :meth:`pwm`, :attr:`pin_modes`, :attr:`lights_on`,
:attr:`temperature_c`, ... and wait on :meth:`wait_until`.
"""
from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Callable, Iterable, Mapping

import trio

from drivers.emulation import SerialEmulator
from drivers.illuminator import codec as fc
from drivers.illuminator.thermistor import Thermistor

#: Boards.h (Arduino Uno / ATmega328P): TOTAL_PINS
UNO_TOTAL_PINS = 20
#: Boards.h Uno: TOTAL_ANALOG_PINS, analog channel n is pin 14 + n
UNO_FIRST_ANALOG_PIN = 14
UNO_ANALOG_CHANNELS = 6
#: Boards.h Uno: IS_PIN_I2C (A4 = SDA, A5 = SCL)
UNO_I2C_PINS = (18, 19)
#: Boards.h Uno: IS_PIN_DIGITAL is 2..19 (0 and 1 are the serial port)
UNO_FIRST_DIGITAL_PIN = 2
#: Boards.h Uno: digitalPinHasPWM on an ATmega328P
UNO_PWM_PINS = (3, 5, 6, 9, 10, 11)
#: StandardFirmata.ino: samplingInterval default (protocol.md Sampling Interval: "default 19ms")
DEFAULT_SAMPLING_MS = 19
#: StandardFirmata.ino 2.5.x: MINIMUM_SAMPLING_INTERVAL
MINIMUM_SAMPLING_MS = 1
#: StandardFirmata.ino: Firmata.setFirmwareVersion(FIRMATA_FIRMWARE_MAJOR_VERSION, ..._MINOR_VERSION)
FIRMWARE_VERSION = (2, 5)
#: Firmata.cpp setFirmwareNameAndVersion keeps the sketch's __FILE__ basename (".ino" is not stripped)
FIRMWARE_NAME = "StandardFirmata.ino"
#: from the DTR reset of a host's open to setup()'s announcement. A real Uno takes ~1.6 s
#: (optiboot waits for an upload first); the emulator takes 50 ms, enough for any host to finish
#: opening the port (pyserial flushes its input then, which would eat an earlier announcement)
#: and short enough for tests that reopen the board
BOOT_S = 0.05
#: FirmataConstants.h FIRMATA_PROTOCOL_MAJOR_VERSION / _MINOR_VERSION
PROTOCOL_VERSION = (2, 5)
#: the board's own over-temperature cutoff (docs/protocols/illuminator.md "Safety")
BOARD_MAX_TEMPERATURE_C = fc.BOARD_MAX_TEMPERATURE_C
BOARD_COOLED_HYSTERESIS_C = 10.0
#: notices the board sends with STRING_DATA (protocol.md String: at most 30 chars on an Arduino)
NOTICE_DEADMAN = "deadman: lights off"
NOTICE_OVERTEMP = "overtemp: lights off"
NOTICE_COOLED = "overtemp: cleared"


class IlluminatorEmulator(SerialEmulator):
    """An Uno-layout StandardFirmata LED board with the dead-man extension and a thermal model."""

    device = "illuminator"

    def __init__(
        self,
        link: Path,
        *,
        seed: int | None = None,
        pwm_pins: Iterable[int] = UNO_PWM_PINS,
        thermistor_pin: int = 0,
        ambient_c: float = 25.0,
        thermistor: Thermistor = Thermistor(),
        rise_per_channel_c: float = 15.0,
        thermal_time_constant_s: float = 60.0,
        board_max_temperature_c: float = BOARD_MAX_TEMPERATURE_C,
        reset_on_open: bool = True,
        boot_s: float = BOOT_S,
    ) -> None:
        super().__init__(link, seed=seed)
        self.pwm_pins = tuple(sorted(set(pwm_pins)))
        for pin in self.pwm_pins:
            if not UNO_FIRST_DIGITAL_PIN <= pin < UNO_TOTAL_PINS:
                raise ValueError(f"PWM pin {pin} is not a digital pin of an Uno (2..19)")
        if not 0 <= thermistor_pin < UNO_ANALOG_CHANNELS:
            raise ValueError(f"thermistor_pin is an analog channel 0..{UNO_ANALOG_CHANNELS - 1}")
        self.thermistor_pin = thermistor_pin
        self.thermistor = thermistor
        self.rise_per_channel_c = rise_per_channel_c
        self.thermal_time_constant_s = thermal_time_constant_s
        self.board_max_temperature_c = board_max_temperature_c
        self.reset_on_open = reset_on_open
        self.boot_s = boot_s
        self.decoder = fc.HostToBoardDecoder()
        #: malformed input from the host, by reason
        self.malformed: dict[str, int] = {}
        #: STRING_DATA notices the board sent (newest last)
        self.notices: collections.deque[str] = collections.deque(maxlen=32)
        self.deadman_trips = 0
        #: a fault to inject: "disarm" (the board arms and acknowledges 0 ms whatever the host
        #: asks, as a firmware misreading the 14-bit timeout would), "no_ack" (it arms, silently)
        self.deadman_fault: str | None = None
        #: a fault to inject: the board stops reporting its analog channels while everything else
        #: (acks, pin states, its own cutoff) goes on, as a firmware whose sampling loop stalled
        self.analog_silent = False
        self.overtemp_trips = 0
        self.boots = 0
        self._ambient_c = ambient_c
        self._temperature_c = ambient_c
        self._thermal_at: float | None = None
        self._changed = trio.Event()
        self._wake = trio.Event()
        self._booting = False
        self._reset_state()

    # ---- state the virtual gate reads ----------------------------------------------------
    def pwm(self, pin: int) -> float:
        """How hard ``pin`` drives its LED, 0..1 (PWM duty, or a digital output's level)."""
        mode = self._mode.get(pin)
        if mode == fc.MODE_PWM:
            return min(max(self._state[pin], 0), 255) / 255.0
        if mode == fc.MODE_OUTPUT:
            return 1.0 if self._state[pin] else 0.0
        return 0.0

    @property
    def pin_modes(self) -> Mapping[int, int]:
        return dict(self._mode)

    @property
    def lights_on(self) -> bool:
        return any(self.pwm(pin) > 0 for pin in self.pwm_pins)

    @property
    def total_duty(self) -> float:
        """Sum of the light pins' output levels (1.0 = one channel fully on)."""
        return sum(self.pwm(pin) for pin in self.pwm_pins)

    @property
    def temperature_c(self) -> float:
        self._update_thermal()
        return self._temperature_c

    @property
    def thermistor_adc(self) -> int:
        return self.thermistor.adc(self.temperature_c)

    @property
    def ambient_c(self) -> float:
        return self._ambient_c

    @property
    def overheated(self) -> bool:
        """The board's own cutoff is latched (lights refused until it cools)."""
        return self._overheated

    @property
    def deadman_timeout_ms(self) -> int:
        """0 when disarmed."""
        return self._deadman_ms

    @property
    def sampling_interval_ms(self) -> int:
        return self._sampling_ms

    @property
    def reporting_channels(self) -> frozenset[int]:
        return frozenset(self._report_analog)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked whenever the board's state moves."""
        while not predicate():
            await self._changed.wait()

    # ---- scenario controls ----------------------------------------------------------------
    def set_ambient(self, celsius: float) -> None:
        """The room temperature the board relaxes toward."""
        self._update_thermal()
        self._ambient_c = celsius

    def heat(self, celsius: float) -> None:
        """Change the board temperature by ``celsius`` at once (sun on the housing; negative cools)."""
        self._update_thermal()
        self._temperature_c += celsius
        self._notify()

    # ---- thermal model --------------------------------------------------------------------
    def _equilibrium_c(self) -> float:
        return self._ambient_c + self.rise_per_channel_c * self.total_duty

    def _update_thermal(self) -> None:
        """First-order relaxation toward ambient + heating; exact for piecewise-constant duty."""
        now = trio.current_time()
        if self._thermal_at is not None:
            dt = now - self._thermal_at
            if dt > 0:
                target = self._equilibrium_c()
                decay = math.exp(-dt / self.thermal_time_constant_s)
                self._temperature_c = target + (self._temperature_c - target) * decay
        self._thermal_at = now

    # ---- power, reset ---------------------------------------------------------------------
    def _reset_state(self) -> None:
        """StandardFirmata systemResetCallback(): analog pins to ANALOG, digital pins to OUTPUT
        low, reporting off; plus the extension: dead-man disarmed."""
        if self._thermal_at is not None:
            self._update_thermal()
        self._mode: dict[int, int] = {}
        self._state: dict[int, int] = {}
        for pin in range(UNO_TOTAL_PINS):
            if self._is_analog(pin):
                self._mode[pin] = fc.MODE_ANALOG
            elif self._is_digital(pin):
                self._mode[pin] = fc.MODE_OUTPUT
            else:
                self._mode[pin] = fc.MODE_INPUT  # pinConfig[] is zero-initialised for 0 and 1
            self._state[pin] = 0
        self._report_analog: set[int] = set()
        self._report_digital: set[int] = set()
        self._sampling_ms = DEFAULT_SAMPLING_MS
        self._deadman_ms = 0
        self._last_host_message = 0.0
        self._overheated = False
        self._next_sample: float | None = None

    async def unplug(self, seconds: float) -> None:
        """USB pulled: the board loses power (every output off) and the port goes away."""
        self._reset_state()
        self._poke()
        await super().unplug(seconds)

    async def on_host_attached(self) -> None:
        """Uno DTR auto-reset: the board restarts and setup() announces itself
        (Firmata.begin(): printVersion(), printFirmwareVersion())."""
        self._booting = True  # the bootloader ignores the host, and loop() waits, until setup() ran
        try:
            if self.reset_on_open:
                self._reset_state()
                self.boots += 1
                self._notify()
                await trio.sleep(self.boot_s)   # the bootloader, then setup()
            await self.send(fc.protocol_version(*PROTOCOL_VERSION))
            await self.send(fc.firmware_report(*FIRMWARE_VERSION, FIRMWARE_NAME))
        finally:
            self._booting = False
            self._poke()

    async def on_host_detached(self) -> None:
        self._notify()  # wait_until() predicates may look at host_attached

    # ---- the firmware's loop ------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(super().run)
            self._update_thermal()
            nursery.start_soon(self._firmware_loop)
            task_status.started()

    async def _firmware_loop(self) -> None:
        while True:
            if self._booting:  # setup() runs before loop(); on_host_attached pokes when done
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            now = trio.current_time()
            interval = self._sampling_ms / 1000.0
            if self._next_sample is None:
                self._next_sample = now + interval
            # Every send below is a checkpoint, and meanwhile the other tasks may reset the board
            # (unplug, a host open, SYSTEM_RESET, a new sampling interval: _next_sample is None
            # again) or boot it: after an await, start over instead of going on with what was read
            # before it. (The real firmware's loop() cannot be interrupted like that.)
            if now >= self._next_sample:
                # loop(): "if (currentMillis - previousMillis > samplingInterval)": catch up, never burst
                self._next_sample = max(self._next_sample + interval, now)
                await self._sample()
                continue
            if self._deadman_ms and now >= self._deadman_deadline():
                await self._trip(fc.TRIP_DEADMAN)
                continue
            deadline = self._next_sample
            if self._deadman_ms:
                deadline = min(deadline, self._deadman_deadline())
            with trio.move_on_at(deadline):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = trio.Event()

    def _deadman_deadline(self) -> float:
        return self._last_host_message + self._deadman_ms / 1000.0

    def _notify(self) -> None:
        """Wake anything waiting on the board's state (:meth:`wait_until`)."""
        self._changed.set()
        self._changed = trio.Event()

    def _poke(self) -> None:
        """State changed in a way the firmware loop must see now (timers, sampling interval)."""
        self._notify()
        self._wake.set()

    async def _sample(self) -> None:
        self._update_thermal()
        temperature = self._temperature_c
        if not self._overheated and temperature >= self.board_max_temperature_c:
            self._overheated = True
            await self._trip(fc.TRIP_OVER_TEMPERATURE)
        elif self._overheated and temperature < self.board_max_temperature_c - BOARD_COOLED_HYSTERESIS_C:
            self._overheated = False
            await self.send(fc.safety_clear(fc.TRIP_OVER_TEMPERATURE))
            await self._notice(NOTICE_COOLED)
        for channel in sorted(self._report_analog):
            # re-checked per channel: a reset during an earlier report's send turns reporting off
            if self.analog_silent:
                break
            if channel in self._report_analog and self._mode.get(self._analog_pin(channel)) == fc.MODE_ANALOG:
                await self.send(fc.analog_message(channel, self._analog_read(channel)))
        self._notify()

    async def _trip(self, cause: int) -> None:
        """Every light pin off, then tell the host (typed sysex first, then the string)."""
        for pin in self.pwm_pins:
            if self._mode.get(pin) in (fc.MODE_PWM, fc.MODE_OUTPUT):
                self._update_thermal()
                self._state[pin] = 0
        if cause == fc.TRIP_DEADMAN:
            self._deadman_ms = 0  # one-shot: the host re-arms when it comes back
            self.deadman_trips += 1
            notice = NOTICE_DEADMAN
        else:
            self.overtemp_trips += 1
            notice = NOTICE_OVERTEMP
        await self.send(fc.safety_trip(cause))
        await self._notice(notice)
        self._notify()

    async def _notice(self, text: str) -> None:
        self.notices.append(text)
        await self.send(fc.string_data(text))

    # ---- the host's messages ------------------------------------------------------------
    async def on_receive(self, data: bytes) -> None:
        if self._booting:
            return
        self.decoder.receive_data(data)
        while (event := self.decoder.next_event()) is not None:
            if isinstance(event, fc.Malformed):
                self.malformed[event.reason] = self.malformed.get(event.reason, 0) + 1
                continue
            self._last_host_message = trio.current_time()  # any whole message feeds the dead-man
            await self._handle(event)
        self._poke()

    async def _handle(self, event: fc.Event) -> None:
        match event:
            case fc.AnalogMessage(pin, value) | fc.ExtendedAnalog(pin, value):
                self._analog_write(pin, value)
            case fc.DigitalMessage(port, mask):
                self._digital_write_port(port, mask)
            case fc.SetDigitalPinValue(pin, value):
                if self._is_digital(pin) and self._mode[pin] == fc.MODE_OUTPUT and self._may_drive(pin, value):
                    self._set_state(pin, 1 if value else 0)
            case fc.SetPinMode(pin, mode):
                await self._set_pin_mode(pin, mode)
            case fc.ReportAnalog(channel, enable):
                await self._report_analog_channel(channel, enable, announce=True)
            case fc.ReportDigital(port, enable):
                if port < self._total_ports():
                    if enable:
                        self._report_digital.add(port)
                        await self.send(fc.digital_message(port, self._read_port(port)))
                    else:
                        self._report_digital.discard(port)
            case fc.SamplingInterval(ms):
                self._sampling_ms = max(ms, MINIMUM_SAMPLING_MS)
                self._next_sample = None
            case fc.VersionQuery():
                await self.send(fc.protocol_version(*PROTOCOL_VERSION))
            case fc.FirmwareQuery():
                await self.send(fc.firmware_report(*FIRMWARE_VERSION, FIRMWARE_NAME))
            case fc.CapabilityQuery():
                await self.send(fc.capability_response(self._capabilities()))
            case fc.AnalogMappingQuery():
                await self.send(fc.analog_mapping_response(
                    self._analog_channel(pin) for pin in range(UNO_TOTAL_PINS)))
            case fc.PinStateQuery(pin):
                if pin < UNO_TOTAL_PINS:
                    await self.send(fc.pin_state_response(pin, self._mode[pin], self._state[pin] & 0x1FFFFF))
                else:
                    await self.send(fc.pin_state_response(pin, None))
            case fc.SystemReset():
                self._reset_state()
            case fc.DeadmanArm(timeout_ms):
                self._deadman_ms = 0 if self.deadman_fault == "disarm" else timeout_ms
                if self.deadman_fault != "no_ack":
                    await self.send(fc.deadman_ack(self._deadman_ms))
            case _:
                pass  # StandardFirmata ignores sysex it does not know (and STRING_DATA from a host)

    # -- pins (StandardFirmata.ino callbacks) --
    @staticmethod
    def _is_digital(pin: int) -> bool:
        return UNO_FIRST_DIGITAL_PIN <= pin < UNO_TOTAL_PINS

    @staticmethod
    def _is_analog(pin: int) -> bool:
        return UNO_FIRST_ANALOG_PIN <= pin < UNO_FIRST_ANALOG_PIN + UNO_ANALOG_CHANNELS

    @staticmethod
    def _analog_pin(channel: int) -> int:
        return UNO_FIRST_ANALOG_PIN + channel

    def _analog_channel(self, pin: int) -> int | None:
        return pin - UNO_FIRST_ANALOG_PIN if self._is_analog(pin) else None

    @staticmethod
    def _total_ports() -> int:
        return (UNO_TOTAL_PINS + 7) // 8

    def _capabilities(self) -> list[list[tuple[int, int]]]:
        """StandardFirmata.ino CAPABILITY_QUERY, pin by pin, in the firmware's order."""
        pins = []
        for pin in range(UNO_TOTAL_PINS):
            caps: list[tuple[int, int]] = []
            if self._is_digital(pin):
                caps += [(fc.MODE_INPUT, 1), (fc.MODE_PULLUP, 1), (fc.MODE_OUTPUT, 1)]
            if self._is_analog(pin):
                caps.append((fc.MODE_ANALOG, 10))
            if pin in self.pwm_pins:
                caps.append((fc.MODE_PWM, 8))
            if self._is_digital(pin):
                caps.append((fc.MODE_SERVO, 14))
            if pin in UNO_I2C_PINS:
                caps.append((fc.MODE_I2C, 1))
            pins.append(caps)
        return pins

    def _set_state(self, pin: int, value: int) -> None:
        self._update_thermal()  # the thermal model integrates the old duty up to now
        self._state[pin] = value

    def _may_drive(self, pin: int, value: int) -> bool:
        """While the board's own cutoff is latched, a light pin cannot be switched on."""
        return not (self._overheated and pin in self.pwm_pins and value)

    def _analog_write(self, pin: int, value: int) -> None:
        # analogWriteCallback(): only PWM (and servo) pins take analog writes
        if pin >= UNO_TOTAL_PINS:
            return
        if self._mode[pin] == fc.MODE_PWM and pin in self.pwm_pins:
            if self._may_drive(pin, value):
                self._set_state(pin, value)
        elif self._mode[pin] == fc.MODE_SERVO:
            self._state[pin] = value

    def _digital_write_port(self, port: int, mask: int) -> None:
        # digitalWriteCallback(): only OUTPUT and INPUT pins of the port are touched
        for bit in range(8):
            pin = port * 8 + bit
            if not self._is_digital(pin):
                continue
            value = 1 if mask & (1 << bit) else 0
            if self._mode[pin] == fc.MODE_OUTPUT and self._may_drive(pin, value):
                self._set_state(pin, value)
            elif self._mode[pin] == fc.MODE_INPUT:
                self._state[pin] = value  # 1 enables the pull-up

    async def _set_pin_mode(self, pin: int, mode: int) -> None:
        # setPinModeCallback()
        if pin >= UNO_TOTAL_PINS or self._mode[pin] == fc.MODE_IGNORE:
            return
        known = (fc.MODE_INPUT, fc.MODE_PULLUP, fc.MODE_OUTPUT, fc.MODE_ANALOG, fc.MODE_PWM,
                 fc.MODE_SERVO, fc.MODE_I2C)
        if self._is_analog(pin):
            await self._report_analog_channel(self._analog_channel(pin), mode == fc.MODE_ANALOG,
                                              announce=False)
        self._set_state(pin, 0)
        if mode == fc.MODE_ANALOG and self._is_analog(pin):
            self._mode[pin] = mode
        elif mode in (fc.MODE_INPUT, fc.MODE_PULLUP, fc.MODE_OUTPUT, fc.MODE_SERVO) and self._is_digital(pin):
            self._mode[pin] = mode
            if mode == fc.MODE_PULLUP:
                self._state[pin] = 1
        elif mode == fc.MODE_PWM and pin in self.pwm_pins:
            self._mode[pin] = mode  # analogWrite(pin, 0)
        elif mode == fc.MODE_I2C and pin in UNO_I2C_PINS:
            self._mode[pin] = mode
        elif mode not in known:
            await self._notice("Unknown pin mode")
        if mode == fc.MODE_ANALOG and self._is_analog(pin):
            # reportAnalogCallback(ch, 1) ran before the mode switch; its immediate report
            # (Firmata >= 2.4) goes out once the pin really is analog
            await self.send(fc.analog_message(self._analog_channel(pin),
                                              self._analog_read(self._analog_channel(pin))))

    async def _report_analog_channel(self, channel: int, enable: bool, *, announce: bool) -> None:
        # reportAnalogCallback(): protocol.md "upon enabling an analog pin, the pin value
        # should be reported"
        if channel >= UNO_ANALOG_CHANNELS:
            return
        if not enable:
            self._report_analog.discard(channel)
            return
        self._report_analog.add(channel)
        if announce:
            await self.send(fc.analog_message(channel, self._analog_read(channel)))

    def _analog_read(self, channel: int) -> int:
        if channel == self.thermistor_pin:
            adc = self.thermistor.adc(self.temperature_c) + self.rng.choice((-1, 0, 0, 1))
            return max(0, min(self.thermistor.adc_max, adc))
        return 0  # the other analog inputs are tied to ground on this board

    def _read_port(self, port: int) -> int:
        mask = 0
        for bit in range(8):
            pin = port * 8 + bit
            if self._is_digital(pin) and self._mode[pin] in (fc.MODE_INPUT, fc.MODE_PULLUP) and self._state[pin]:
                mask |= 1 << bit
        return mask
