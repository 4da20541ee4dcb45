"""A PN532 on a pty, speaking HSU frames, with a field where emulated cards come and go.

It follows the chip's documented state (UM0701-02): asleep in LowVbat after power-on until the
HSU wake-up condition, and back to sleep after each command until SAMConfiguration; ACK before
every answer, the last answer again on NACK, a syntax error frame for malformed commands, status
bytes for commands that do not fit the context; SetSerialBaudRate switches after the host's
ACK; PowerDown sleeps until the wake-up sources it names; a CIU register file; the passive
activation retry count of RFConfiguration (0xFF waits for a card forever, as the chip does).
"""
from __future__ import annotations

import collections
import logging
from pathlib import Path

import attrs
import trio

from drivers.card_reader import codec
from drivers.card_reader import commands as c
from drivers.card_reader.cards import Card, CardSession
from drivers.card_reader.codec import Ack, Command, Malformed, Nack
from drivers.card_reader.hsu import HsuReceiver, garbled
from drivers.card_reader.isodep import FSD_TABLE, IsoDepInitiator, crc_a
from drivers.card_reader.registers import (
    CIU_RX_MODE, CIU_TX_AUTO, CIU_TX_CONTROL, CIU_TX_MODE, CRC_ENABLE, REQA, RegisterFile, TX_RF_ENABLE,
    ANALOG_106A_REGISTERS)
from drivers.emulation import SerialEmulator

log = logging.getLogger(__name__)

PASSIVE_ATTEMPT_S = 0.004  # one REQA + anticollision attempt that nobody answers (emulator timing)
FIELD_SETTLE_S = 0.0005  # a card powering up after the field comes on (emulator timing)
RATS_PARAM = 0x50  # FSDI 5 (64 bytes, the PN532's ISO-DEP frame buffer), CID 0
MAX_RETRIES_RESET = (0xFF, 0x01, 0xFF)  # §7.3.1 item 5 values after reset: MxRtyATR, MxRtyPSL, MxRtyPassiveActivation
TIMINGS_RESET = (0x00, 0x0B, 0x0A)  # §7.3.1 item 2 values after reset (RFU, ATR_RES 102.4 ms, 51.2 ms)


class _SyntaxError(Exception):
    """The command cannot be parsed: answer with the error frame (UM0701 §6.2.1.5)."""


@attrs.define
class _Target:
    tg: int
    session: CardSession
    isodep: IsoDepInitiator | None


@attrs.define
class EmulatorStats:
    commands: collections.Counter[str] = attrs.Factory(collections.Counter)
    dropped: collections.Counter[str] = attrs.Factory(collections.Counter)  # malformed frames by reason
    nacks: int = 0
    aborts: int = 0
    error_frames: int = 0


class CardReaderEmulator(SerialEmulator):
    """A PN532 v1.6 behind HSU. ``place(card)`` / ``remove()`` change what is in its field."""

    device = "card reader"

    def __init__(self, link: Path, *, seed: int | None = None,
                 firmware: c.FirmwareVersion = c.FirmwareVersion()) -> None:
        super().__init__(link, seed=seed)
        self.firmware = firmware
        self.stats = EmulatorStats()
        self.card: Card | None = None
        self._nursery: trio.Nursery | None = None
        self._field_changed = trio.Event()
        self._command_seen = trio.Event()
        self._remove_after: int | None = None
        self._power_on()

    # ---- power ---------------------------------------------------------------------------
    def _power_on(self) -> None:
        self.hsu = HsuReceiver(self.rng)
        self.decoder = codec.HostFrameDecoder()
        self.registers = RegisterFile()
        self.low_vbat = True  # §7.2.10: after power-up only SAMConfiguration leaves LowVbat
        self.sam_mode: c.SamMode | None = None
        self.parameters = c.PARAM_RESET_VALUE
        self.max_retries = MAX_RETRIES_RESET
        self.max_retry_com = 0
        self.timings = TIMINGS_RESET
        self.analog: dict[int, bytes] = {}
        self.wake_sources = 0xFF
        self.last_error = 0
        self.targets: dict[int, _Target] = {}
        self.field_on = False
        self.session: CardSession | None = None
        self._last_response: bytes | None = None
        self._pending_baudrate: int | None = None
        self._running: trio.CancelScope | None = None
        self._power_down_pending = False

    async def unplug(self, seconds: float) -> None:
        """Pull the cable: the reader loses power and comes back in its power-on state."""
        self._abort()
        self._power_on()
        await super().unplug(seconds)

    def reset(self) -> None:
        """Fault: the chip resets (brown-out, ESD) while the port stays: it is back in its
        power-on state (LowVbat, asleep, default parameters, field off) and tells no one."""
        self._abort()
        self._power_on()

    @property
    def baudrate(self) -> int:
        return self.hsu.baudrate

    @property
    def asleep(self) -> bool:
        return self.hsu.asleep

    # ---- the field -----------------------------------------------------------------------
    def place(self, card: Card) -> None:
        """Put ``card`` on the reader (replacing any card there)."""
        self.card = card
        self.session = card.power_up() if self.field_on else None
        self._notify_field()

    def remove(self) -> None:
        """Take the card away."""
        self.card = None
        self.session = None
        self._notify_field()

    def remove_card_after(self, exchanges: int) -> None:
        """Fault: the card leaves the field right after answering ``exchanges`` more InDataExchange."""
        self._remove_after = exchanges

    def _set_field(self, on: bool) -> None:
        if on == self.field_on:
            return
        self.field_on = on
        control = self.registers.read(CIU_TX_CONTROL)
        self.registers.set(CIU_TX_CONTROL, (control | TX_RF_ENABLE) if on else (control & ~TX_RF_ENABLE))
        # the card is powered by the field: off resets it, on starts a fresh session
        self.session = self.card.power_up() if (on and self.card) else None
        if not on:
            self.targets.clear()
        self._notify_field()

    def _notify_field(self) -> None:
        self._field_changed.set()
        self._field_changed = trio.Event()

    async def wait_for_command(self, code: int, count: int = 1) -> None:
        """Wait until the chip has received command ``code`` ``count`` times in all (for tests)."""
        name = c.Code(code).name
        while self.stats.commands[name] < count:
            await self._command_seen.wait()

    # ---- host link -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(super().run)
            task_status.started()

    def corrupt(self, frame: bytes) -> bytes:
        # break the data checksum, the byte before the postamble
        if len(frame) < 8:
            return super().corrupt(frame)
        return frame[:-2] + bytes([frame[-2] ^ 0x5A]) + frame[-1:]

    async def on_receive(self, data: bytes) -> None:
        if self.hsu.asleep and not self.wake_sources & c.WAKE_HSU:
            return  # powered down without HSU among the wake-up sources: deaf until power-cycled
        host = self.endpoint.host_baudrate()
        if self._pending_baudrate is not None and host == self._pending_baudrate:
            # the host changes speed only after its ACK (§7.2.8); a pty may have lost that ACK
            # (bytes written just before the host closes its end), a UART would not
            self.hsu.baudrate, self._pending_baudrate = self._pending_baudrate, None
        self.decoder.receive_data(self.hsu.receive(data, trio.current_time(), host))
        while (event := self.decoder.next_event()) is not None:
            await self._on_event(event)

    async def _on_event(self, event: codec.Event) -> None:
        if isinstance(event, Malformed):
            self.stats.dropped[event.reason] += 1
            if "identifier" in event.reason or "without a code" in event.reason:
                await self._send_frame(codec.ERROR_FRAME)  # a checked frame the firmware cannot use
            return  # bad checksums get no ACK: the host times out and sends again (§6.2.2)
        if isinstance(event, Ack):
            if self._pending_baudrate is not None:
                self.hsu.baudrate, self._pending_baudrate = self._pending_baudrate, None
            elif self._running is not None:
                self.stats.aborts += 1  # §6.2.2 d): an ACK from the host aborts the current command
                self._abort()
            return
        if isinstance(event, Nack):
            self.stats.nacks += 1
            if self._last_response is not None:  # §6.2.1.4: send the previous response again
                await self._send_frame(self._last_response)
            return
        if isinstance(event, Command):
            self._abort()  # a new command replaces one still waiting (e.g. for a card)
            self._pending_baudrate = None
            await self._send_frame(codec.ACK_FRAME, corruptible=False)
            assert self._nursery is not None
            self._nursery.start_soon(self._execute, event)

    def _abort(self) -> None:
        if self._running is not None:
            self._running.cancel()
            self._running = None

    async def _send_frame(self, frame: bytes, *, corruptible: bool = True) -> None:
        host = self.endpoint.host_baudrate()
        if host is not None and host != self.hsu.baudrate:
            frame = garbled(frame, self.hsu.baudrate, host, self.rng)
        await self.send(frame, corruptible=corruptible)

    async def _execute(self, command: Command) -> None:
        name = _name(command.code)
        self.stats.commands[name] += 1
        self._command_seen.set()
        self._command_seen = trio.Event()
        with trio.CancelScope() as scope:
            self._running = scope
            try:
                data = await self._dispatch(command)
                frame = codec.encode_response(command.code, data, preamble=not self._no_preamble)
            except _SyntaxError as exc:
                log.debug("PN532 emulator: syntax error in %s: %s", name, exc)
                self.stats.error_frames += 1
                frame = codec.ERROR_FRAME
            self._last_response = frame
            self._running = None
            await self._send_frame(frame)
            if self._power_down_pending or (self.low_vbat and command.code != c.Code.SAM_CONFIGURATION):
                self._power_down_pending = False
                self.hsu.sleep()
        if scope.cancelled_caught:
            log.debug("PN532 emulator: %s aborted", name)

    @property
    def _no_preamble(self) -> bool:
        return bool(self.parameters & c.PARAM_REMOVE_PRE_POSTAMBLE)

    # ---- commands ------------------------------------------------------------------------
    async def _dispatch(self, command: Command) -> bytes:
        handler = _HANDLERS.get(command.code)
        if handler is None:
            raise _SyntaxError(f"command 0x{command.code:02X} is not supported")
        return await handler(self, command.data)

    async def _diagnose(self, data: bytes) -> bytes:
        if not data:
            raise _SyntaxError("Diagnose without NumTst")
        if data[0] == 0x00:  # §7.2.1 communication line test: InParam comes back unchanged
            return data
        if data[0] in (0x01, 0x02):  # ROM and RAM tests pass
            return b"\x00"
        raise _SyntaxError("unsupported Diagnose test")

    async def _get_firmware_version(self, data: bytes) -> bytes:
        return self.firmware.encode()

    async def _get_general_status(self, data: bytes) -> bytes:
        targets = tuple((t.tg, 0x00, 0x00, 0x00) for t in self.targets.values())  # 106 kbps type A
        return c.GeneralStatus(self.last_error, self.field_on, targets, 0x00).encode()

    async def _read_register(self, data: bytes) -> bytes:
        if not data or len(data) % 2:
            raise _SyntaxError("ReadRegister takes 16-bit addresses")
        return bytes(self.registers.read((data[i] << 8) | data[i + 1]) for i in range(0, len(data), 2))

    async def _write_register(self, data: bytes) -> bytes:
        if not data or len(data) % 3:
            raise _SyntaxError("WriteRegister takes address, value triples")
        for i in range(0, len(data), 3):
            addr = (data[i] << 8) | data[i + 1]
            self.registers.write(addr, data[i + 2])
            if addr == CIU_TX_CONTROL:
                self._set_field(bool(self.registers.read(CIU_TX_CONTROL) & TX_RF_ENABLE))
        return b""

    async def _set_serial_baudrate(self, data: bytes) -> bytes:
        if len(data) != 1 or data[0] >= len(c.SERIAL_BAUDRATES):
            raise _SyntaxError("SetSerialBaudRate BR out of range")
        self._pending_baudrate = c.SERIAL_BAUDRATES[data[0]]  # §7.2.8: switch after the host's ACK
        return b""

    async def _set_parameters(self, data: bytes) -> bytes:
        if len(data) != 1:
            raise _SyntaxError("SetParameters takes one flags byte")
        self.parameters = data[0]
        return b""

    async def _sam_configuration(self, data: bytes) -> bytes:
        if not data or data[0] not in tuple(c.SamMode):
            raise _SyntaxError("SAMConfiguration mode must be 1 to 4")
        if data[0] == c.SamMode.VIRTUAL_CARD and len(data) < 2:
            raise _SyntaxError("virtual card mode needs a timeout")
        self.sam_mode = c.SamMode(data[0])
        self.low_vbat = False
        return b""

    async def _power_down(self, data: bytes) -> bytes:
        if not data:
            raise _SyntaxError("PowerDown needs WakeUpEnable")
        self.wake_sources = data[0]
        self._release_all()
        self._set_field(False)
        self._power_down_pending = True  # §7.2.11: answer first, then sleep
        return b"\x00"

    async def _rf_configuration(self, data: bytes) -> bytes:
        if not data or data[0] not in tuple(c.RfItem) or len(data) - 1 != c.RF_ITEM_LENGTH[c.RfItem(data[0])]:
            raise _SyntaxError("RFConfiguration item or length is wrong")
        item, value = c.RfItem(data[0]), data[1:]
        if item is c.RfItem.FIELD:
            self._set_field(bool(value[0] & 0x01))
        elif item is c.RfItem.TIMINGS:
            self.timings = tuple(value)  # type: ignore[assignment]
        elif item is c.RfItem.MAX_RETRY_COM:
            self.max_retry_com = value[0]
        elif item is c.RfItem.MAX_RETRIES:
            self.max_retries = tuple(value)  # type: ignore[assignment]
        else:
            self.analog[item] = bytes(value)
            if item is c.RfItem.ANALOG_106A:
                for addr, v in zip(ANALOG_106A_REGISTERS, value):
                    self.registers.set(addr, v)
        return b""

    async def _in_list_passive_target(self, data: bytes) -> bytes:
        if len(data) < 2 or data[0] not in (1, 2) or data[1] not in tuple(c.BrTy):
            raise _SyntaxError("InListPassiveTarget MaxTg must be 1 or 2 and BrTy 0 to 4")
        brty, wanted = data[1], _uid_from_initiator_data(data[2:])
        self.targets.clear()  # the firmware forgets earlier targets
        if not self.field_on:
            self._set_field(True)
            await trio.sleep(FIELD_SETTLE_S)
        retries = self.max_retries[2]
        attempt = 0
        while True:
            session = self.session
            if brty == c.BrTy.TYPE_A_106 and session is not None and session.answer_request():
                if wanted is None or wanted == session.card.uid:
                    return c.encode_passive_targets([self._activate(session)])
            self.registers.left_in_fifo(bytes([REQA]))  # nfcpy reads it back: "no SENS_RES"
            attempt += 1
            if retries != c.RETRY_FOREVER and attempt > retries:
                return b"\x00"
            if retries == c.RETRY_FOREVER and self.session is None:
                await self._field_changed.wait()  # nothing in the field: wait for a card
            else:
                await trio.sleep(PASSIVE_ATTEMPT_S)

    def _activate(self, session: CardSession) -> c.TargetA:
        session.select()
        card, ats, initiator = session.card, b"", None
        if card.iso_dep and self.parameters & c.PARAM_AUTOMATIC_RATS:
            ats = session.rats(RATS_PARAM) or b""
            initiator = IsoDepInitiator(lambda block: self._air(session, block), fsc=_fsc(ats))
        self.registers.set(CIU_TX_MODE, CRC_ENABLE)  # 106 kbps type A framing, CRC on
        self.registers.set(CIU_RX_MODE, CRC_ENABLE)
        self.registers.set(CIU_TX_AUTO, 0x40)  # Force100ASK for type A
        self.registers.left_in_fifo(bytes([card.sak]))
        self.targets[1] = _Target(1, session, initiator)
        return c.TargetA(1, card.atqa, card.sak, card.uid, ats)

    def _air(self, session: CardSession, frame: bytes) -> bytes | None:
        """One frame over the air to ``session``'s card, if it is still in the field."""
        if session is not self.session:
            return None
        return session.receive(frame)

    async def _in_data_exchange(self, data: bytes) -> bytes:
        if not data:
            raise _SyntaxError("InDataExchange without Tg")
        target = self.targets.get(data[0] & 0x0F)
        if target is None:
            return self._status(c.Status.WRONG_CONTEXT)
        payload = data[1:]
        if target.isodep is not None:
            answer = target.isodep.exchange(payload)
        else:
            answer = self._air(target.session, payload)
        if self._remove_after is not None:
            self._remove_after -= 1
            if self._remove_after <= 0:
                self._remove_after = None
                self.remove()
        if answer is None:
            await trio.sleep(self._frame_waiting_time(target))
            return self._status(c.Status.TIMEOUT)
        self.last_error = 0
        return b"\x00" + answer

    def _frame_waiting_time(self, target: _Target) -> float:
        fwi = (target.session.card.ats[3] >> 4) if len(target.session.card.ats) > 3 else 4
        return 4096 / 13.56e6 * (2 ** fwi) * (self.max_retry_com + 1)  # ISO/IEC 14443-4 §7.2

    async def _in_communicate_thru(self, data: bytes) -> bytes:
        frame = data
        if not self.registers.read(CIU_TX_MODE) & CRC_ENABLE:
            if len(frame) < 3 or crc_a(frame[:-2]) != frame[-2:]:
                frame = b""  # the card drops a frame with a bad CRC
            else:
                frame = frame[:-2]
        session = self.session
        answer = session.receive(frame) if (session is not None and frame) else None
        if answer is None:
            index = self.timings[2]
            await trio.sleep(min(100e-6 * 2 ** max(index - 1, 0), 0.5) if index else 0.05)
            return self._status(c.Status.TIMEOUT)
        if not self.registers.read(CIU_RX_MODE) & CRC_ENABLE:
            answer += crc_a(answer)
        self.last_error = 0
        return b"\x00" + answer

    async def _in_release(self, data: bytes) -> bytes:
        return self._release(data, forget=True)

    async def _in_deselect(self, data: bytes) -> bytes:
        return self._release(data, forget=False)

    def _release(self, data: bytes, *, forget: bool) -> bytes:
        if len(data) != 1:
            raise _SyntaxError("InRelease / InDeselect take one Tg")
        tg = data[0]
        if tg and tg not in self.targets:
            return self._status(c.Status.WRONG_CONTEXT)
        for target in [t for t in self.targets.values() if tg in (0, t.tg)]:
            self._halt(target)
            if forget:
                del self.targets[target.tg]
        return self._status(c.Status.OK)

    def _release_all(self) -> None:
        for target in self.targets.values():
            self._halt(target)
        self.targets.clear()

    def _halt(self, target: _Target) -> None:
        # ISO-DEP: S(DESELECT) (ISO/IEC 14443-4 §8); plain type A: HLTA (ISO/IEC 14443-3 §6.4.3)
        if target.isodep is not None:
            target.isodep.deselect()
        elif target.session is self.session:
            target.session.halt()

    async def _in_select(self, data: bytes) -> bytes:
        if len(data) != 1:
            raise _SyntaxError("InSelect takes one Tg")
        target = self.targets.get(data[0])
        if target is None:
            return self._status(c.Status.WRONG_CONTEXT)
        session = target.session
        if session is not self.session or not session.answer_request(wake_up=True):
            await trio.sleep(PASSIVE_ATTEMPT_S)
            return self._status(c.Status.TIMEOUT)
        self._activate(session)
        return self._status(c.Status.OK)

    def _status(self, status: int) -> bytes:
        self.last_error = status
        return bytes([status])


def _name(code: int) -> str:
    try:
        return c.Code(code).name
    except ValueError:
        return f"0x{code:02X}"


def _fsc(ats: bytes) -> int:
    fsci = (ats[1] & 0x0F) if len(ats) > 1 else 2  # ISO/IEC 14443-4 §5.2.3: default FSCI 2
    return FSD_TABLE[min(fsci, 8)]


def _uid_from_initiator_data(data: bytes) -> bytes | None:
    """The UID a host asked for, without its cascade tags (UM0701 §7.3.5, 106 kbps type A)."""
    if not data:
        return None
    if len(data) == 8 and data[0] == 0x88:
        return data[1:]
    if len(data) == 12 and data[0] == 0x88 and data[4] == 0x88:
        return data[1:4] + data[5:]
    return bytes(data)


_HANDLERS = {
    c.Code.DIAGNOSE: CardReaderEmulator._diagnose,
    c.Code.GET_FIRMWARE_VERSION: CardReaderEmulator._get_firmware_version,
    c.Code.GET_GENERAL_STATUS: CardReaderEmulator._get_general_status,
    c.Code.READ_REGISTER: CardReaderEmulator._read_register,
    c.Code.WRITE_REGISTER: CardReaderEmulator._write_register,
    c.Code.SET_SERIAL_BAUDRATE: CardReaderEmulator._set_serial_baudrate,
    c.Code.SET_PARAMETERS: CardReaderEmulator._set_parameters,
    c.Code.SAM_CONFIGURATION: CardReaderEmulator._sam_configuration,
    c.Code.POWER_DOWN: CardReaderEmulator._power_down,
    c.Code.RF_CONFIGURATION: CardReaderEmulator._rf_configuration,
    c.Code.IN_LIST_PASSIVE_TARGET: CardReaderEmulator._in_list_passive_target,
    c.Code.IN_DATA_EXCHANGE: CardReaderEmulator._in_data_exchange,
    c.Code.IN_COMMUNICATE_THRU: CardReaderEmulator._in_communicate_thru,
    c.Code.IN_RELEASE: CardReaderEmulator._in_release,
    c.Code.IN_DESELECT: CardReaderEmulator._in_deselect,
    c.Code.IN_SELECT: CardReaderEmulator._in_select,
}
