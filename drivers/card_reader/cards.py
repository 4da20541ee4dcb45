"""Emulated contactless cards for the PN532 emulator: an access badge and an EMV payment card.

A card is a frozen description; :meth:`power_up` gives the :class:`CardSession` that lives while
the card sits in a powered field (ISO/IEC 14443-3 §6.2 state machine: IDLE → ACTIVE, with
ISO/IEC 14443-4 PROTOCOL after RATS, HALT after HLTA or DESELECT).
"""
from __future__ import annotations

import calendar
import enum
import secrets

import attrs

from drivers.card_reader import emv, tlv
from drivers.card_reader.isodep import FSD_TABLE, RATS, IsoDepTarget

HLTA = b"\x50\x00"  # ISO/IEC 14443-3 §6.4.3
MIFARE_READ = 0x30  # MIFARE Ultralight / Classic READ (16 bytes from a page/block)
SAK_MIFARE_CLASSIC_1K = 0x08
SAK_ULTRALIGHT = 0x00
SAK_ISO14443_4 = 0x20  # ISO/IEC 14443-3 §6.5.3.4


def _atqa_for(uid: bytes) -> int:
    # ISO/IEC 14443-3 §6.5.2.1: ATQA bits 8-7 give the UID size (single, double, triple)
    return {4: 0x0004, 7: 0x0044, 10: 0x0084}[len(uid)]


def _check_uid(_inst: object, _attr: object, uid: bytes) -> None:
    if len(uid) not in (4, 7, 10):
        raise ValueError(f"a type A UID has 4, 7 or 10 bytes, not {len(uid)}")
    if uid[0] == 0x88:
        raise ValueError("a UID cannot start with the cascade tag 0x88")


class CardState(enum.Enum):
    IDLE = "idle"
    ACTIVE = "active"
    PROTOCOL = "protocol"  # ISO/IEC 14443-4 activated
    HALT = "halt"


@attrs.frozen
class Badge:
    """A plain ISO/IEC 14443-A badge (MIFARE Classic / Ultralight-like): UID, ATQA, SAK, no ISO-DEP."""

    uid: bytes = attrs.field(validator=_check_uid)
    sak: int = SAK_MIFARE_CLASSIC_1K
    memory: bytes = b""  # READ (30 nn) answers 16 bytes from here, page nn × 4

    @property
    def atqa(self) -> int:
        return _atqa_for(self.uid)

    @property
    def iso_dep(self) -> bool:
        return False

    ats = b""

    def power_up(self) -> "CardSession":
        return CardSession(self)

    def apdu(self, command: bytes) -> bytes:
        return emv.ResponseApdu(b"", emv.SW_INS_NOT_SUPPORTED).encode()

    def read(self, page: int) -> bytes:
        memory = self.uid.ljust(16, b"\x00") + self.memory
        return memory[page * 4:page * 4 + 16].ljust(16, b"\x00")


def _random_uid() -> bytes:
    return b"\x08" + secrets.token_bytes(3)  # ISO/IEC 14443-3 §6.5.4: UID0 = 08 marks a random UID


DEFAULT_PDOL = bytes.fromhex("9F6604 9F0206 9F3704 5F2A02 9A03 9C01 9505 9F1A02".replace(" ", ""))


@attrs.frozen
class EmvCard:
    """An ISO-DEP EMV contactless card that answers PPSE, SELECT, GPO and READ RECORD.

    ``pan_in_track2_only`` leaves 5A and 5F24 out of the records, so a reader must take the card
    number and expiry from the track-2 equivalent data (57).
    """

    pan: str = attrs.field(repr=lambda p: f"…{p[-4:]}")
    expiry: str  # YYMM
    aid: bytes = emv.VISA_AID
    uid: bytes = attrs.field(factory=_random_uid, validator=_check_uid)
    name: str = "PALMNODE/TEST"
    pan_in_track2_only: bool = False
    label: str | None = None
    pdol: bytes = DEFAULT_PDOL
    has_ppse: bool = True  # False: an ISO-DEP card with no payment directory (SELECT PPSE → 6A82)
    # TL T0 TA TB TC: FSCI 8 (256 bytes), FWI 7 (~39 ms), CID supported (ISO/IEC 14443-4 §5.2)
    ats: bytes = bytes.fromhex("0578807002")
    sak: int = SAK_ISO14443_4

    def __attrs_post_init__(self) -> None:
        if not self.pan.isdigit() or not 12 <= len(self.pan) <= 19:
            raise ValueError("pan must be 12 to 19 digits")
        if len(self.expiry) != 4 or not self.expiry.isdigit() or not 1 <= int(self.expiry[2:]) <= 12:
            raise ValueError("expiry must be YYMM")

    @property
    def atqa(self) -> int:
        return _atqa_for(self.uid)

    @property
    def iso_dep(self) -> bool:
        return True

    def power_up(self) -> "CardSession":
        return CardSession(self)

    def read(self, page: int) -> bytes | None:
        return None

    # ---- file system ---------------------------------------------------------------------
    @property
    def app_label(self) -> bytes:
        return (self.label or emv.scheme_for(self.aid).upper()).encode("ascii")

    def ppse_fci(self) -> bytes:
        entry = tlv.encode(emv.TAG_DIRECTORY_ENTRY, tlv.encode(emv.TAG_AID, self.aid),
                           tlv.encode(emv.TAG_LABEL, self.app_label), tlv.encode(emv.TAG_PRIORITY, b"\x01"))
        return tlv.encode(emv.TAG_FCI, tlv.encode(emv.TAG_DF_NAME, emv.PPSE),
                          tlv.encode(emv.TAG_FCI_PROPRIETARY, tlv.encode(emv.TAG_FCI_ISSUER_DISCRETIONARY, entry)))

    def application_fci(self) -> bytes:
        proprietary = [tlv.encode(emv.TAG_LABEL, self.app_label), tlv.encode(emv.TAG_PRIORITY, b"\x01")]
        if self.pdol:
            proprietary.append(tlv.encode(emv.TAG_PDOL, self.pdol))
        proprietary.append(tlv.encode(0x5F2D, b"en"))  # language preference
        return tlv.encode(emv.TAG_FCI, tlv.encode(emv.TAG_DF_NAME, self.aid),
                          tlv.encode(emv.TAG_FCI_PROPRIETARY, *proprietary))

    def _track2(self) -> bytes:
        nibbles = f"{self.pan}D{self.expiry}201" + "0000000000"  # service code 201, discretionary data
        if len(nibbles) % 2:
            nibbles += "F"
        return bytes.fromhex(nibbles)

    def records(self) -> dict[tuple[int, int], bytes]:
        """(SFI, record) → record template 70."""
        year, month = 2000 + int(self.expiry[:2]), int(self.expiry[2:])
        last_day = calendar.monthrange(year, month)[1]
        out = {(1, 1): tlv.encode(emv.TAG_RECORD, tlv.encode(emv.TAG_TRACK2, self._track2()),
                                  tlv.encode(emv.TAG_NAME, self.name.encode("ascii")))}
        if not self.pan_in_track2_only:
            pan = self.pan + ("F" if len(self.pan) % 2 else "")
            out[(2, 1)] = tlv.encode(
                emv.TAG_RECORD,
                tlv.encode(emv.TAG_PAN, bytes.fromhex(pan)),
                tlv.encode(emv.TAG_EXPIRY, bytes.fromhex(f"{self.expiry}{last_day:02d}")),
                tlv.encode(0x5F25, bytes.fromhex("200101")),  # application effective date
                tlv.encode(0x5F34, b"\x01"))  # PAN sequence number
            out[(2, 2)] = tlv.encode(emv.TAG_RECORD, tlv.encode(0x8E, bytes(8) + bytes.fromhex("1E031F00")))  # CVM list
        return out

    def afl(self) -> bytes:
        # Book 3 §10.2: SFI << 3, first record, last record, records for offline data authentication
        return bytes.fromhex("08010100") + (b"" if self.pan_in_track2_only else bytes.fromhex("10010201"))

    def apdu(self, command: bytes) -> bytes:
        """Answer one command APDU in a fresh application context (for tests)."""
        return EmvApplication(self).handle(command)


class EmvApplication:
    """The card's APDU processing for one activation (selection state lives here)."""

    def __init__(self, card: EmvCard) -> None:
        self.card = card
        self.selected: bytes | None = None
        self.processing = False

    def handle(self, command: bytes) -> bytes:
        parsed = _parse_apdu(command)
        if parsed is None:
            return _sw(emv.SW_WRONG_LENGTH)
        cla, ins, p1, p2, data = parsed
        if cla not in (0x00, 0x80):
            return _sw(emv.SW_CLA_NOT_SUPPORTED)
        if cla == 0x00 and ins == 0xA4:
            return self._select(p1, p2, data)
        if cla == 0x80 and ins == 0xA8:
            return self._gpo(p1, p2, data)
        if cla == 0x00 and ins == 0xB2:
            return self._read_record(p1, p2)
        return _sw(emv.SW_INS_NOT_SUPPORTED)

    def _select(self, p1: int, p2: int, name: bytes) -> bytes:
        if p1 != 0x04 or p2 not in (0x00, 0x02):
            return _sw(emv.SW_WRONG_P1P2)
        self.processing = False
        if p2 == 0x02:  # next occurrence: this card has one application only
            return _sw(emv.SW_FILE_NOT_FOUND)
        if name == emv.PPSE and self.card.has_ppse:
            self.selected = emv.PPSE
            return self.card.ppse_fci() + b"\x90\x00"
        if name and self.card.aid.startswith(name):  # Book 1 §11.3.5: partial name selection
            self.selected = self.card.aid
            return self.card.application_fci() + b"\x90\x00"
        self.selected = None
        return _sw(emv.SW_FILE_NOT_FOUND)

    def _gpo(self, p1: int, p2: int, data: bytes) -> bytes:
        if self.selected != self.card.aid:
            return _sw(emv.SW_CONDITIONS_NOT_SATISFIED)
        if p1 or p2:
            return _sw(emv.SW_WRONG_P1P2)
        try:
            objects = tlv.parse(data)
        except tlv.TlvError:
            return _sw(emv.SW_WRONG_DATA)
        if len(objects) != 1 or objects[0].tag != emv.TAG_COMMAND_TEMPLATE:
            return _sw(emv.SW_WRONG_DATA)
        expected = sum(length for _, length in tlv.parse_dol(self.card.pdol))
        if len(objects[0].value) != expected:
            return _sw(emv.SW_WRONG_LENGTH)
        self.processing = True
        aip = bytes.fromhex("2000")  # AIP: offline static data authentication (SDA) supported
        return tlv.encode(emv.TAG_RESPONSE_FORMAT_2, tlv.encode(emv.TAG_AIP, aip),
                          tlv.encode(emv.TAG_AFL, self.card.afl())) + b"\x90\x00"

    def _read_record(self, record: int, p2: int) -> bytes:
        if p2 & 0x07 != 0x04:
            return _sw(emv.SW_WRONG_P1P2)
        if self.selected != self.card.aid:
            return _sw(emv.SW_CONDITIONS_NOT_SATISFIED)
        sfi, records = p2 >> 3, self.card.records()
        if not any(key[0] == sfi for key in records):
            return _sw(emv.SW_FILE_NOT_FOUND)
        body = records.get((sfi, record))
        return body + b"\x90\x00" if body is not None else _sw(emv.SW_RECORD_NOT_FOUND)


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


def _parse_apdu(apdu: bytes) -> tuple[int, int, int, int, bytes] | None:
    """Short APDU cases 1-4 (ISO/IEC 7816-4 §5.1): header and command data, or None if malformed."""
    if len(apdu) < 4:
        return None
    head, body = apdu[:4], apdu[4:]
    if len(body) <= 1:  # case 1 or 2 (Le only)
        return (*head, b"")  # type: ignore[return-value]
    lc = body[0]
    if lc == 0 or len(body) not in (1 + lc, 2 + lc):  # case 3 or 4
        return None
    return (*head, bytes(body[1:1 + lc]))  # type: ignore[return-value]


Card = Badge | EmvCard


class CardSession:
    """A card powered by the field: its ISO/IEC 14443-3 state and, after RATS, its ISO-DEP link."""

    def __init__(self, card: Card) -> None:
        self.card = card
        self.state = CardState.IDLE
        self.isodep: IsoDepTarget | None = None

    def answer_request(self, *, wake_up: bool = False) -> bool:
        """REQA (or WUPA): does the card answer with its ATQA?"""
        if self.state is CardState.HALT:
            if not wake_up:
                return False
        elif self.state is not CardState.IDLE:
            # §6.2: a selected card that gets an unexpected frame falls back to IDLE, silent
            self.state = CardState.IDLE
            self.isodep = None
            return False
        self.state = CardState.IDLE
        return True

    def select(self) -> None:
        """Anticollision and SELECT completed: the card is ACTIVE."""
        self.state = CardState.ACTIVE

    def rats(self, param: int) -> bytes | None:
        """RATS (E0 param): the ATS, and the card enters ISO-DEP; ``None`` if it has no ISO-DEP."""
        if self.state is not CardState.ACTIVE or not self.card.iso_dep:
            return None
        fsd = FSD_TABLE[min(param >> 4, len(FSD_TABLE) - 1)]
        app = EmvApplication(self.card) if isinstance(self.card, EmvCard) else None
        self.isodep = IsoDepTarget(app.handle if app else self.card.apdu, fsd=fsd)
        self.state = CardState.PROTOCOL
        return self.card.ats

    def halt(self) -> None:
        self.state = CardState.HALT
        self.isodep = None

    def receive(self, frame: bytes) -> bytes | None:
        """A raw frame (CRC already checked and removed); the card's answer or ``None``."""
        if self.state is CardState.ACTIVE:
            if frame == HLTA:
                self.halt()
                return None
            if frame[:1] == bytes([RATS]) and len(frame) == 2:
                return self.rats(frame[1])
            if frame[:1] == bytes([MIFARE_READ]) and len(frame) == 2:
                return self.card.read(frame[1])
            self.state = CardState.IDLE
            return None
        if self.state is CardState.PROTOCOL and self.isodep is not None:
            answer = self.isodep.receive(frame)
            if self.isodep.deselected:
                self.halt()
            return answer
        return None
