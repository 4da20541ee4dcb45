"""PN532 commands: codes, status bytes, and the typed parameters and answers of those used here.

Builders return a :class:`~drivers.card_reader.codec.Command`; parsers take a response's data
(after the response code) and raise :class:`CommandFormatError` on a malformed answer.
Section numbers are NXP UM0701-02 (PN532 user manual, rev. 02).
"""
from __future__ import annotations

import enum
import struct

import attrs

from drivers.card_reader.codec import Command


class CommandFormatError(ValueError):
    """A command's parameters or answer do not have the layout UM0701 §7 gives."""


class Code(enum.IntEnum):
    """Command codes, UM0701 §7.1 table 15."""

    DIAGNOSE = 0x00  # §7.2.1
    GET_FIRMWARE_VERSION = 0x02  # §7.2.2
    GET_GENERAL_STATUS = 0x04  # §7.2.3
    READ_REGISTER = 0x06  # §7.2.4
    WRITE_REGISTER = 0x08  # §7.2.5
    READ_GPIO = 0x0C  # §7.2.6
    WRITE_GPIO = 0x0E  # §7.2.7
    SET_SERIAL_BAUDRATE = 0x10  # §7.2.8
    SET_PARAMETERS = 0x12  # §7.2.9
    SAM_CONFIGURATION = 0x14  # §7.2.10
    POWER_DOWN = 0x16  # §7.2.11
    RF_CONFIGURATION = 0x32  # §7.3.1
    RF_REGULATION_TEST = 0x58  # §7.3.2
    IN_JUMP_FOR_DEP = 0x56  # §7.3.3
    IN_JUMP_FOR_PSL = 0x46  # §7.3.4
    IN_LIST_PASSIVE_TARGET = 0x4A  # §7.3.5
    IN_ATR = 0x50  # §7.3.6
    IN_PSL = 0x4E  # §7.3.7
    IN_DATA_EXCHANGE = 0x40  # §7.3.8
    IN_COMMUNICATE_THRU = 0x42  # §7.3.9
    IN_DESELECT = 0x44  # §7.3.10
    IN_RELEASE = 0x52  # §7.3.11
    IN_SELECT = 0x54  # §7.3.12
    IN_AUTO_POLL = 0x60  # §7.3.13


class Status(enum.IntEnum):
    """Error codes in the status byte of a response, UM0701 §7.1 table 16."""

    OK = 0x00
    TIMEOUT = 0x01  # the target has not answered
    CRC_ERROR = 0x02
    PARITY_ERROR = 0x03
    BIT_COUNT = 0x04  # erroneous bit count during anticollision
    FRAMING = 0x05  # MIFARE framing error
    BIT_COLLISION = 0x06
    BUFFER_TOO_SMALL = 0x07
    RF_BUFFER_OVERFLOW = 0x09
    RF_FIELD_TIMEOUT = 0x0A  # active mode peer did not switch its field on in time
    RF_PROTOCOL = 0x0B
    OVERHEATED = 0x0D
    INTERNAL_OVERFLOW = 0x0E
    INVALID_PARAMETER = 0x10
    DEP_UNSUPPORTED = 0x12
    DATA_FORMAT = 0x13
    MIFARE_AUTH = 0x14
    UID_CHECK_BYTE = 0x23
    DEP_STATE = 0x25
    NOT_ALLOWED = 0x26  # operation not allowed in this configuration
    WRONG_CONTEXT = 0x27  # command not acceptable in the current context
    RELEASED = 0x29
    CARD_EXCHANGED = 0x2A  # 14443-3B: the ID of the card does not match
    CARD_DISAPPEARED = 0x2B
    NFCID3_MISMATCH = 0x2C
    OVER_CURRENT = 0x2D
    NAD_MISSING = 0x2E

    @classmethod
    def describe(cls, value: int) -> str:
        try:
            return cls(value & 0x3F).name.lower().replace("_", " ")
        except ValueError:
            return f"unknown status 0x{value:02X}"


STATUS_MASK = 0x3F  # §7.1: bits 0-5 error code, bit 6 MI (more information), bit 7 NAD present
STATUS_MORE_INFORMATION = 0x40  # §7.3.8


class SamMode(enum.IntEnum):
    """SAMConfiguration modes, §7.2.10."""

    NORMAL = 0x01
    VIRTUAL_CARD = 0x02
    WIRED_CARD = 0x03
    DUAL_CARD = 0x04


class BrTy(enum.IntEnum):
    """InListPassiveTarget baud rate and modulation, §7.3.5."""

    TYPE_A_106 = 0x00
    FELICA_212 = 0x01
    FELICA_424 = 0x02
    TYPE_B_106 = 0x03
    JEWEL_106 = 0x04


class RfItem(enum.IntEnum):
    """RFConfiguration items and their data length, §7.3.1."""

    FIELD = 0x01  # 1 byte: bit1 AutoRFCA, bit0 RF on
    TIMINGS = 0x02  # 3 bytes: RFU, ATR_RES timeout, InCommunicateThru timeout
    MAX_RETRY_COM = 0x04  # 1 byte: MaxRtyCOM
    MAX_RETRIES = 0x05  # 3 bytes: MxRtyATR, MxRtyPSL, MxRtyPassiveActivation
    ANALOG_106A = 0x0A  # 11 bytes: CIU analog settings for 106 kbps type A
    ANALOG_212_424 = 0x0B  # 8 bytes
    ANALOG_TYPE_B = 0x0C  # 3 bytes
    ANALOG_ISO14443_4 = 0x0D  # 9 bytes: 212/424/848 kbps ISO/IEC 14443-4


RF_ITEM_LENGTH = {RfItem.FIELD: 1, RfItem.TIMINGS: 3, RfItem.MAX_RETRY_COM: 1, RfItem.MAX_RETRIES: 3,
                  RfItem.ANALOG_106A: 11, RfItem.ANALOG_212_424: 8, RfItem.ANALOG_TYPE_B: 3,
                  RfItem.ANALOG_ISO14443_4: 9}
RETRY_FOREVER = 0xFF  # §7.3.1 item 5: MxRty* = 0xFF means retry forever

#: §7.2.8: BR byte → baud rate
SERIAL_BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1288000)

# §7.2.9 SetParameters flags
PARAM_NAD_USED = 0x01
PARAM_DID_USED = 0x02
PARAM_AUTOMATIC_ATR_RES = 0x04
PARAM_AUTOMATIC_RATS = 0x10
PARAM_ISO14443_4_PICC = 0x20
PARAM_REMOVE_PRE_POSTAMBLE = 0x40
PARAM_RESET_VALUE = PARAM_AUTOMATIC_ATR_RES | PARAM_AUTOMATIC_RATS  # §7.2.9 default after reset

# §7.2.11 PowerDown WakeUpEnable bits
WAKE_INT0, WAKE_INT1, WAKE_RF, WAKE_HSU, WAKE_SPI, WAKE_GPIO, WAKE_I2C = 0x01, 0x02, 0x08, 0x10, 0x20, 0x40, 0x80

SEL_RES_ISO14443_4 = 0x20  # ISO/IEC 14443-3 §6.5.3.4: SAK bit 6 = compliant with ISO/IEC 14443-4


# ---- builders (host side) ------------------------------------------------------------------
def get_firmware_version() -> Command:
    return Command(Code.GET_FIRMWARE_VERSION)


def get_general_status() -> Command:
    return Command(Code.GET_GENERAL_STATUS)


def sam_configuration(mode: SamMode = SamMode.NORMAL, timeout: int = 0, irq: bool = False) -> Command:
    return Command(Code.SAM_CONFIGURATION, bytes([mode, timeout, int(irq)]))


def set_parameters(flags: int) -> Command:
    return Command(Code.SET_PARAMETERS, bytes([flags]))


def rf_configuration(item: RfItem, data: bytes) -> Command:
    if len(data) != RF_ITEM_LENGTH[item]:
        raise CommandFormatError(f"RFConfiguration item {item.name} takes {RF_ITEM_LENGTH[item]} bytes")
    return Command(Code.RF_CONFIGURATION, bytes([item]) + data)


def rf_field(on: bool, *, auto_rfca: bool = False) -> Command:
    return rf_configuration(RfItem.FIELD, bytes([int(auto_rfca) << 1 | int(on)]))


def rf_max_retries(*, atr: int = 0xFF, psl: int = 0x01, passive_activation: int = RETRY_FOREVER) -> Command:
    return rf_configuration(RfItem.MAX_RETRIES, bytes([atr, psl, passive_activation]))


def set_serial_baudrate(baudrate: int) -> Command:
    if baudrate not in SERIAL_BAUDRATES:
        raise CommandFormatError(f"the PN532 HSU cannot run at {baudrate} baud; use one of {SERIAL_BAUDRATES}")
    return Command(Code.SET_SERIAL_BAUDRATE, bytes([SERIAL_BAUDRATES.index(baudrate)]))


def power_down(wake_up_enable: int = WAKE_HSU, generate_irq: bool = False) -> Command:
    return Command(Code.POWER_DOWN, bytes([wake_up_enable, int(generate_irq)]))


def in_list_passive_target(max_tg: int = 1, brty: BrTy = BrTy.TYPE_A_106, initiator_data: bytes = b"") -> Command:
    return Command(Code.IN_LIST_PASSIVE_TARGET, bytes([max_tg, brty]) + initiator_data)


def in_data_exchange(tg: int, data: bytes, *, more: bool = False) -> Command:
    return Command(Code.IN_DATA_EXCHANGE, bytes([tg | (STATUS_MORE_INFORMATION if more else 0)]) + data)


def in_release(tg: int = 0) -> Command:
    return Command(Code.IN_RELEASE, bytes([tg]))


# ---- answers -------------------------------------------------------------------------------
@attrs.frozen
class FirmwareVersion:
    """GetFirmwareVersion answer, §7.2.2 (a PN532 v1.6 answers 32 01 06 07)."""

    ic: int = 0x32
    ver: int = 1
    rev: int = 6
    support: int = 0x07  # bit0 ISO/IEC 14443 type A, bit1 type B, bit2 ISO 18092

    def encode(self) -> bytes:
        return bytes([self.ic, self.ver, self.rev, self.support])

    @classmethod
    def decode(cls, data: bytes) -> "FirmwareVersion":
        if len(data) != 4:
            raise CommandFormatError(f"GetFirmwareVersion answer has {len(data)} bytes, not 4")
        return cls(*data)

    def __str__(self) -> str:
        return f"PN5{self.ic:02x} v{self.ver}.{self.rev}"


@attrs.frozen
class TargetA:
    """One 106 kbps type A target of an InListPassiveTarget answer, §7.3.5."""

    tg: int
    sens_res: int  # ATQA, as the PN532 reports it (most significant byte first)
    sel_res: int  # SAK
    nfcid1: bytes  # UID, 4, 7 or 10 bytes
    ats: bytes = b""  # RATS answer when the PN532 activated ISO/IEC 14443-4 itself

    @property
    def iso_dep(self) -> bool:
        return bool(self.sel_res & SEL_RES_ISO14443_4)

    def encode(self) -> bytes:
        return (bytes([self.tg]) + struct.pack(">H", self.sens_res) + bytes([self.sel_res, len(self.nfcid1)])
                + self.nfcid1 + self.ats)


def encode_passive_targets(targets: list[TargetA]) -> bytes:
    return bytes([len(targets)]) + b"".join(t.encode() for t in targets)


def decode_passive_targets(data: bytes) -> list[TargetA]:
    """Parse an InListPassiveTarget answer for BrTy 0x00 (106 kbps type A)."""
    if not data:
        raise CommandFormatError("InListPassiveTarget answer is empty")
    count, pos, targets = data[0], 1, []
    if count > 2:
        raise CommandFormatError(f"InListPassiveTarget reports {count} targets; the PN532 lists at most 2")
    for _ in range(count):
        if len(data) < pos + 5:
            raise CommandFormatError("InListPassiveTarget answer is truncated")
        tg, sens_res, sel_res, uid_len = data[pos], (data[pos + 1] << 8) | data[pos + 2], data[pos + 3], data[pos + 4]
        pos += 5
        if uid_len not in (4, 7, 10):
            raise CommandFormatError(f"InListPassiveTarget NFCID1 length {uid_len} is not 4, 7 or 10")
        if len(data) < pos + uid_len:
            raise CommandFormatError(f"InListPassiveTarget NFCID1 is truncated ({len(data) - pos} of {uid_len} bytes)")
        uid = bytes(data[pos:pos + uid_len])
        pos += uid_len
        ats = b""
        if sel_res & SEL_RES_ISO14443_4 and pos < len(data):
            tl = data[pos]  # ISO/IEC 14443-4 §5.2.1: TL counts itself
            if tl < 1 or len(data) < pos + tl:
                raise CommandFormatError("InListPassiveTarget ATS is truncated")
            ats = bytes(data[pos:pos + tl])
            pos += tl
        targets.append(TargetA(tg, sens_res, sel_res, uid, ats))
    if pos != len(data):
        raise CommandFormatError("InListPassiveTarget answer has trailing bytes")
    return targets


@attrs.frozen
class ExchangeResult:
    """InDataExchange / InCommunicateThru answer: status byte and the target's data, §7.3.8."""

    status: int
    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")

    @property
    def error(self) -> int:
        return self.status & STATUS_MASK

    @property
    def more(self) -> bool:
        return bool(self.status & STATUS_MORE_INFORMATION)

    @classmethod
    def decode(cls, data: bytes) -> "ExchangeResult":
        if not data:
            raise CommandFormatError("data exchange answer has no status byte")
        return cls(data[0], bytes(data[1:]))


def decode_status(data: bytes, what: str) -> int:
    """The single status byte of InRelease, InSelect, InDeselect, PowerDown."""
    if len(data) != 1:
        raise CommandFormatError(f"{what} answer has {len(data)} bytes, not a single status byte")
    return data[0]


@attrs.frozen
class GeneralStatus:
    """GetGeneralStatus answer, §7.2.3."""

    last_error: int
    field: bool
    targets: tuple[tuple[int, int, int, int], ...]  # (Tg, BrRx, BrTx, modulation type)
    sam_status: int

    def encode(self) -> bytes:
        out = bytes([self.last_error, int(self.field), len(self.targets)])
        for t in self.targets:
            out += bytes(t)
        return out + bytes([self.sam_status])

    @classmethod
    def decode(cls, data: bytes) -> "GeneralStatus":
        if len(data) < 4 or len(data) != 4 + 4 * data[2]:
            raise CommandFormatError("GetGeneralStatus answer has the wrong length")
        targets = tuple(tuple(data[3 + 4 * i:7 + 4 * i]) for i in range(data[2]))
        return cls(data[0], bool(data[1]), targets, data[-1])  # type: ignore[arg-type]
