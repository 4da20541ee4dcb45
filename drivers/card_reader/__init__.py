"""NXP PN532 card reader over HSU (UART): frames, commands, EMV contactless read, emulator.

Public API: :class:`CardReader` (trio driver), the reads it yields (:class:`BadgeRead`,
:class:`PaymentCardRead` with a :class:`CardToken`), and for tests and the virtual gate
:class:`CardReaderEmulator` with the cards :class:`Badge` and :class:`EmvCard`.
"""
from drivers.card_reader.cardtoken import CardToken, InvalidCardNumber, luhn_ok
from drivers.card_reader.cards import Badge, EmvCard
from drivers.card_reader.driver import CardReader, CardReaderStats
from drivers.card_reader.emulator import CardReaderEmulator
from drivers.card_reader.emv import MASTERCARD_AID, VISA_AID, EmvError, Terminal
from drivers.card_reader.reads import BadgeRead, CardNotRead, CardRead, PaymentCardRead
from drivers.card_reader.tlv import TlvError

__all__ = [
    "Badge", "BadgeRead", "CardRead", "CardReader", "CardReaderEmulator", "CardReaderStats", "CardToken",
    "EmvCard", "EmvError", "InvalidCardNumber", "MASTERCARD_AID", "PaymentCardRead", "Terminal", "TlvError",
    "VISA_AID", "luhn_ok",
]
