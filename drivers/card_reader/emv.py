"""The reader side of an EMV contactless card read, sans-IO: APDUs to send and how to read answers.

Flow (EMV Book B §3.3, Book 3 §10): SELECT the PPSE, pick the highest-priority application,
SELECT it, fill its PDOL, GET PROCESSING OPTIONS, READ RECORD per AFL entry until the card
number (tag 5A, or the track-2 equivalent 57) and expiry (5F24, or from 57) are found.
Errors are :class:`EmvError` and never carry card data.
"""
from __future__ import annotations

import datetime

import attrs

from drivers.card_reader import tlv

PPSE = b"2PAY.SYS.DDF01"  # Book B §3.3.2: Proximity Payment System Environment name
SW_OK = 0x9000  # ISO/IEC 7816-4 §5.1.3 normal processing

# ISO/IEC 7816-4 §5.1.3 / EMV Book 3 Annex: status words the emulated card uses
SW_WRONG_LENGTH = 0x6700
SW_CONDITIONS_NOT_SATISFIED = 0x6985
SW_WRONG_DATA = 0x6A80
SW_FILE_NOT_FOUND = 0x6A82
SW_RECORD_NOT_FOUND = 0x6A83
SW_WRONG_P1P2 = 0x6A86
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00

# application identifiers: RID (5 bytes, ISO/IEC 7816-5) + PIX
VISA_AID = bytes.fromhex("A0000000031010")  # Visa credit/debit
MASTERCARD_AID = bytes.fromhex("A0000000041010")  # Mastercard credit/debit
MAESTRO_AID = bytes.fromhex("A0000000043060")
AMEX_AID = bytes.fromhex("A00000002501")
SCHEMES = {  # RID → scheme name
    bytes.fromhex("A000000003"): "visa",
    bytes.fromhex("A000000004"): "mastercard",
    bytes.fromhex("A000000025"): "amex",
    bytes.fromhex("A000000065"): "jcb",
    bytes.fromhex("A000000152"): "discover",
    bytes.fromhex("A000000333"): "unionpay",
    bytes.fromhex("A000000277"): "interac",
}

# EMV tags (Book 3 Annex A; Book B for BF0C contents; Book C-3 Annex A for 9F66)
TAG_FCI = 0x6F
TAG_DF_NAME = 0x84
TAG_FCI_PROPRIETARY = 0xA5
TAG_FCI_ISSUER_DISCRETIONARY = 0xBF0C
TAG_DIRECTORY_ENTRY = 0x61
TAG_AID = 0x4F
TAG_LABEL = 0x50
TAG_PRIORITY = 0x87
TAG_PDOL = 0x9F38
TAG_COMMAND_TEMPLATE = 0x83
TAG_RESPONSE_FORMAT_1 = 0x80
TAG_RESPONSE_FORMAT_2 = 0x77
TAG_AIP = 0x82
TAG_AFL = 0x94
TAG_RECORD = 0x70
TAG_TRACK2 = 0x57
TAG_PAN = 0x5A
TAG_EXPIRY = 0x5F24
TAG_NAME = 0x5F20
TAG_TTQ = 0x9F66
TAG_AMOUNT = 0x9F02
TAG_AMOUNT_OTHER = 0x9F03
TAG_COUNTRY = 0x9F1A
TAG_TVR = 0x95
TAG_CURRENCY = 0x5F2A
TAG_DATE = 0x9A
TAG_TYPE = 0x9C
TAG_UNPREDICTABLE = 0x9F37
TAG_TERMINAL_TYPE = 0x9F35
TRACK2_SEPARATOR = 0xD  # Book 3 Annex A tag 57: field separator nibble 'D'


class EmvError(Exception):
    """The card did not complete the read; says which step and why, never any card data."""

    def __init__(self, step: str, reason: str, sw: int | None = None) -> None:
        text = f"EMV {step}: {reason}" + (f" (SW {sw:04X})" if sw is not None else "")
        super().__init__(text)
        self.step, self.reason, self.sw = step, reason, sw


# ---- APDUs ---------------------------------------------------------------------------------
@attrs.frozen
class Apdu:
    """A short command APDU (ISO/IEC 7816-4 §5.1): header, optional data, optional Le."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None

    def encode(self) -> bytes:
        out = bytes([self.cla, self.ins, self.p1, self.p2])
        if self.data:
            out += bytes([len(self.data)]) + self.data
        if self.le is not None:
            out += bytes([self.le & 0xFF])
        return out


def select(name: bytes) -> Apdu:
    """SELECT by DF name, first or only occurrence (Book 1 §11.3.2: P1=04 P2=00)."""
    return Apdu(0x00, 0xA4, 0x04, 0x00, name, 0x00)


def get_processing_options(pdol_data: bytes) -> Apdu:
    """GET PROCESSING OPTIONS with the PDOL data in tag 83 (Book 3 §6.5.8.3)."""
    return Apdu(0x80, 0xA8, 0x00, 0x00, tlv.encode(TAG_COMMAND_TEMPLATE, pdol_data), 0x00)


def read_record(sfi: int, record: int) -> Apdu:
    """READ RECORD ``record`` of short file ``sfi`` (Book 3 §6.5.11.2: P2 = SFI << 3 | 4)."""
    return Apdu(0x00, 0xB2, record, (sfi << 3) | 0x04, b"", 0x00)


@attrs.frozen
class ResponseApdu:
    """A response APDU: data and status word (ISO/IEC 7816-4 §5.1.3). Its repr hides the data."""

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    sw: int

    @classmethod
    def decode(cls, raw: bytes) -> "ResponseApdu":
        if len(raw) < 2:
            raise EmvError("response", "answer shorter than a status word")
        return cls(bytes(raw[:-2]), (raw[-2] << 8) | raw[-1])

    def encode(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    @property
    def ok(self) -> bool:
        return self.sw == SW_OK


# ---- terminal data for the PDOL ------------------------------------------------------------
@attrs.frozen
class Terminal:
    """What this reader tells the card in the PDOL (Book 3 §5.4; Book C-3 Annex A for the TTQ)."""

    # 36 00 40 00: qVSDC + EMV contact chip + online PIN + signature; consumer device CVM supported
    ttq: bytes = bytes.fromhex("36004000")
    country_code: bytes = bytes.fromhex("0840")  # ISO 3166-1 numeric, BCD (9F1A)
    currency_code: bytes = bytes.fromhex("0840")  # ISO 4217 numeric, BCD (5F2A)
    terminal_type: bytes = bytes.fromhex("22")  # 9F35: attended, merchant, offline with online capability

    def values(self, date: datetime.date, unpredictable: bytes) -> dict[int, bytes]:
        return {
            TAG_TTQ: self.ttq,
            TAG_AMOUNT: bytes(6),  # n12 amount: zero, this is a card identification, not a payment
            TAG_AMOUNT_OTHER: bytes(6),
            TAG_COUNTRY: self.country_code,
            TAG_CURRENCY: self.currency_code,
            TAG_TVR: bytes(5),  # Terminal Verification Results: nothing has failed yet
            TAG_DATE: _bcd(date.strftime("%y%m%d")),
            TAG_TYPE: b"\x00",  # ISO 8583 processing code 00: goods and services
            TAG_UNPREDICTABLE: unpredictable,
            TAG_TERMINAL_TYPE: self.terminal_type,
        }


def fill_dol(dol: bytes, values: dict[int, bytes]) -> bytes:
    """Concatenate the values a DOL asks for (Book 3 §5.4: numeric values are right-justified,
    others truncated or padded right with zeros; unknown tags are all zeros)."""
    try:
        entries = tlv.parse_dol(dol)
    except tlv.TlvError as exc:
        raise EmvError("PDOL", f"malformed data object list ({exc.reason})") from None
    out = b""
    for tag, length in entries:
        value = values.get(tag, b"")
        if tag in (TAG_AMOUNT, TAG_AMOUNT_OTHER) and len(value) < length:
            value = bytes(length - len(value)) + value  # format n: pad on the left
        out += value[:length].ljust(length, b"\x00")
    return out


def _bcd(digits: str) -> bytes:
    return bytes.fromhex(digits)


# ---- reading answers -----------------------------------------------------------------------
def _parse(step: str, data: bytes) -> tuple[tlv.Tlv, ...]:
    try:
        return tlv.parse(data)
    except tlv.TlvError as exc:
        raise EmvError(step, f"malformed answer ({exc.reason} at byte {exc.offset})") from None


def check(step: str, response: ResponseApdu) -> tuple[tlv.Tlv, ...]:
    """The answer's data objects, or :class:`EmvError` naming ``step`` if the SW is not 9000."""
    if not response.ok:
        raise EmvError(step, "card refused", response.sw)
    return _parse(step, response.data)


def ppse_applications(objects: tuple[tlv.Tlv, ...]) -> list[bytes]:
    """AIDs from the PPSE FCI directory entries (Book B §3.3.2), highest priority first."""
    fci = tlv.find(objects, TAG_FCI)
    directory = fci.find(TAG_FCI_ISSUER_DISCRETIONARY) if fci else None
    if directory is None:
        raise EmvError("SELECT PPSE", "FCI has no directory (BF0C)")
    apps = []
    for entry in directory.walk(TAG_DIRECTORY_ENTRY):
        aid = entry.find(TAG_AID)
        if aid is None or not 5 <= len(aid.value) <= 16:
            continue
        prio = entry.find(TAG_PRIORITY)
        # Book 1 §12.2.3: priority 1 is highest; lower nibble, 0 = no priority
        rank = (prio.value[0] & 0x0F) if prio and prio.value else 0
        apps.append((rank or 16, len(apps), aid.value))
    if not apps:
        raise EmvError("SELECT PPSE", "no payment application on the card")
    return [aid for _, _, aid in sorted(apps)]


def application_pdol(objects: tuple[tlv.Tlv, ...]) -> bytes:
    """The PDOL from an application's FCI, or empty when the card asks for none."""
    fci = tlv.find(objects, TAG_FCI)
    if fci is None:
        raise EmvError("SELECT AID", "answer is not an FCI template (6F)")
    pdol = fci.find(TAG_PDOL)
    return pdol.value if pdol else b""


@attrs.frozen
class ProcessingOptions:
    aip: bytes
    afl: bytes
    objects: tuple[tlv.Tlv, ...] = attrs.field(repr=False)  # format 2 may carry 57/5A directly


def processing_options(objects: tuple[tlv.Tlv, ...]) -> ProcessingOptions:
    """AIP and AFL from a GPO answer, format 1 (80) or format 2 (77), Book 3 §6.5.8.4."""
    if objects and objects[0].tag == TAG_RESPONSE_FORMAT_1:
        value = objects[0].value
        if len(value) < 2 or (len(value) - 2) % 4:
            raise EmvError("GET PROCESSING OPTIONS", "format 1 answer has a bad length")
        return ProcessingOptions(value[:2], value[2:], ())
    template = tlv.find(objects, TAG_RESPONSE_FORMAT_2)
    if template is None:
        raise EmvError("GET PROCESSING OPTIONS", "answer is neither format 1 (80) nor format 2 (77)")
    aip, afl = template.find(TAG_AIP), template.find(TAG_AFL)
    if aip is None:
        raise EmvError("GET PROCESSING OPTIONS", "answer has no AIP (82)")
    return ProcessingOptions(aip.value, afl.value if afl else b"", template.children)


def afl_records(afl: bytes) -> list[tuple[int, int]]:
    """(SFI, record) pairs to read, in order (Book 3 §10.2: 4-byte entries)."""
    if len(afl) % 4:
        raise EmvError("AFL", "length is not a multiple of 4")
    out = []
    for i in range(0, len(afl), 4):
        sfi, first, last = afl[i] >> 3, afl[i + 1], afl[i + 2]
        if not 1 <= sfi <= 30 or first == 0 or last < first:
            raise EmvError("AFL", "entry names an impossible file or record range")
        out.extend((sfi, rec) for rec in range(first, last + 1))
    return out


def scheme_for(aid: bytes) -> str:
    return SCHEMES.get(aid[:5], "unknown")


def _digits(bcd: bytes) -> str:
    return bcd.hex().upper()


def pan_from_5a(value: bytes) -> str:
    """Tag 5A is compressed numeric: digits, padded with 'F' (Book 3 Annex A)."""
    digits = _digits(value).rstrip("F")
    if not digits.isdigit():
        raise EmvError("READ RECORD", "tag 5A is not a card number")
    return digits


def track2_pan_expiry(value: bytes) -> tuple[str, str]:
    """(PAN, YYMM) from the track-2 equivalent data: PAN 'D' YYMM service-code ... (tag 57)."""
    nibbles = _digits(value)
    sep = nibbles.find("D")
    if sep < 0 or len(nibbles) < sep + 5:
        raise EmvError("READ RECORD", "tag 57 has no separator or no expiry")
    pan, expiry = nibbles[:sep], nibbles[sep + 1:sep + 5]
    if not pan.isdigit() or not expiry.isdigit():
        raise EmvError("READ RECORD", "tag 57 is not track-2 equivalent data")
    return pan, expiry


def expiry_from_5f24(value: bytes) -> str:
    """YYMM from Application Expiration Date YYMMDD (tag 5F24, format n6)."""
    digits = _digits(value)
    if len(digits) != 6 or not digits.isdigit():
        raise EmvError("READ RECORD", "tag 5F24 is not a date")
    return digits[:4]


@attrs.define
class CardDataCollector:
    """Gathers the card number and expiry from GPO and record data: 5A and 5F24 when the card has
    them, else the track-2 equivalent 57. ``take()`` hands them over exactly once."""

    _found: dict[int, str] = attrs.Factory(dict)  # 5A, 5F24, and 57 as "pan|yymm"

    def add(self, objects: tuple[tlv.Tlv, ...]) -> None:
        for obj in objects:
            for node in obj.walk():
                if node.tag in self._found:
                    continue
                if node.tag == TAG_PAN:
                    self._found[TAG_PAN] = pan_from_5a(node.value)
                elif node.tag == TAG_EXPIRY:
                    self._found[TAG_EXPIRY] = expiry_from_5f24(node.value)
                elif node.tag == TAG_TRACK2:
                    self._found[TAG_TRACK2] = "|".join(track2_pan_expiry(node.value))

    def take(self) -> tuple[str, str]:
        found, self._found = self._found, {}
        track2 = found.pop(TAG_TRACK2, "|").split("|")
        pan, expiry = found.get(TAG_PAN) or track2[0], found.get(TAG_EXPIRY) or track2[1]
        if track2[0] and pan != track2[0]:
            raise EmvError("READ RECORD", "card numbers in 5A and 57 differ")
        if not pan:
            raise EmvError("READ RECORD", "no card number (5A or 57) in any record")
        if not expiry:
            raise EmvError("READ RECORD", "no expiry date (5F24 or 57) in any record")
        return pan, expiry

    def __repr__(self) -> str:
        return f"CardDataCollector(found={sorted(hex(t) for t in self._found)})"
