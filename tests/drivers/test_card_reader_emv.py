"""EMV read logic, the emulated cards' APDU answers, ISO-DEP blocks, and card tokens."""
import datetime

import attrs
import pytest

from drivers.card_reader import Badge, CardToken, EmvCard, InvalidCardNumber, luhn_ok
from drivers.card_reader import emv, tlv
from drivers.card_reader.cards import CardState
from drivers.card_reader.isodep import IsoDepInitiator, IsoDepTarget, crc_a
from drivers.card_reader.reads import PaymentCardRead

H = bytes.fromhex
KEY = b"deployment-key-0123456789abcdef!"
PAN = "4111111111111111"


# ---- tokens --------------------------------------------------------------------------------
def test_luhn():
    for good in ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"):
        assert luhn_ok(good)
    for bad in ("4111111111111112", "", "41111111111x1111"):
        assert not luhn_ok(bad)


def test_card_token_is_keyed_and_never_holds_or_shows_the_pan():
    token = CardToken.from_pan(PAN, KEY)
    assert token == CardToken.from_pan(PAN, KEY)
    assert token != CardToken.from_pan(PAN, KEY[::-1])
    assert token != CardToken.from_pan("5555555555554444", KEY)
    assert token.last4 == "1111" and len(token.hex) == 64
    fields = {f.name: getattr(token, f.name) for f in attrs.fields(CardToken)}
    assert set(fields) == {"digest", "last4"}
    for text in (repr(token), str(token), repr(PaymentCardRead(token, "1111", "2812", "visa"))):
        assert PAN not in text and PAN[:6] not in text and token.hex not in text
    assert token.hex[:8] in repr(token)


def test_card_token_rejects_bad_numbers_without_echoing_them():
    for bad in ("4111111111111112", "1234", "4111-1111-1111-1111"):
        with pytest.raises(InvalidCardNumber) as info:
            CardToken.from_pan(bad, KEY)
        assert bad not in str(info.value) and "4111" not in str(info.value)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        CardToken.from_pan(PAN, b"short")


# ---- reader-side EMV pieces ----------------------------------------------------------------
def test_apdus_book3():
    assert emv.select(emv.PPSE).encode() == H("00A404000E325041592E5359532E444446303100")
    assert emv.read_record(1, 1).encode() == H("00B2010C00")  # Book 3 §6.5.11: P2 = SFI<<3 | 4
    assert emv.read_record(2, 3).encode() == H("00B2031400")
    assert emv.get_processing_options(b"").encode() == H("80A80000028300" "00")


def test_pdol_filling_book3_5_4():
    values = emv.Terminal().values(datetime.date(2025, 3, 9), H("01020304"))
    pdol = H("9F66049F02069F37045F2A029A039C0195059F1A02")
    data = emv.fill_dol(pdol, values)
    assert data == H("36004000" "000000000000" "01020304" "0840" "250309" "00" "0000000000" "0840")
    # unknown tags are zeros; too-short values padded, too-long truncated; amounts right-justified
    assert emv.fill_dol(H("DF0103" "9F6602" "9F0208"), values) == H("000000" "3600" "0000000000000000")
    with pytest.raises(emv.EmvError, match="PDOL"):
        emv.fill_dol(H("9F"), values)


def test_track2_expiry_afl_and_scheme():
    assert emv.track2_pan_expiry(H("4111111111111111D28122010000000000")) == (PAN, "2812")
    assert emv.track2_pan_expiry(H("378282246310005D270120100000000F"))[0] == "378282246310005"
    with pytest.raises(emv.EmvError):
        emv.track2_pan_expiry(H("41111111111111112812"))
    assert emv.pan_from_5a(H("378282246310005F")) == "378282246310005"
    assert emv.expiry_from_5f24(H("281231")) == "2812"
    assert emv.afl_records(H("08010100" "10010201")) == [(1, 1), (2, 1), (2, 2)]
    for bad in (H("080101"), H("00010100"), H("08020100"), H("08000100")):
        with pytest.raises(emv.EmvError, match="AFL"):
            emv.afl_records(bad)
    assert emv.scheme_for(emv.VISA_AID) == "visa" and emv.scheme_for(emv.MASTERCARD_AID) == "mastercard"
    assert emv.scheme_for(H("A0000009999999")) == "unknown"


def test_ppse_priority_and_gpo_formats():
    entry = lambda aid, prio: tlv.encode(0x61, tlv.encode(0x4F, aid), tlv.encode(0x87, bytes([prio])))  # noqa: E731
    fci = tlv.encode(0x6F, tlv.encode(0x84, emv.PPSE), tlv.encode(0xA5, tlv.encode(
        0xBF0C, entry(emv.MAESTRO_AID, 2), entry(emv.MASTERCARD_AID, 1))))
    assert emv.ppse_applications(tlv.parse(fci)) == [emv.MASTERCARD_AID, emv.MAESTRO_AID]
    f1 = emv.processing_options(tlv.parse(H("800E5C00080101001001040018010201")))
    assert f1.aip == H("5C00") and emv.afl_records(f1.afl)[-1] == (3, 2)
    f2 = emv.processing_options(tlv.parse(H("771282021980940C080101001001010118010200")))
    assert f2.aip == H("1980") and len(emv.afl_records(f2.afl)) == 4
    with pytest.raises(emv.EmvError, match="SELECT PPSE"):
        emv.ppse_applications(tlv.parse(H("6F00")))


def test_collector_prefers_5a_and_falls_back_to_track2():
    collector = emv.CardDataCollector()
    collector.add(tlv.parse(tlv.encode(0x70, tlv.encode(0x57, H("5555555555554444D27012010000000000")))))
    assert collector.take() == ("5555555555554444", "2701")
    with pytest.raises(emv.EmvError, match="no card number"):
        collector.take()  # handed over once only
    assert "5555" not in repr(collector)
    collector.add(tlv.parse(tlv.encode(0x70, tlv.encode(0x57, H("5555555555554444D27012010000000000")),
                                       tlv.encode(0x5A, H("4111111111111111")))))
    with pytest.raises(emv.EmvError, match="differ"):
        collector.take()


# ---- emulated cards ------------------------------------------------------------------------
def run_card(card, *apdus):
    app = card.power_up()
    app.select()
    assert app.rats(0x80) == card.ats
    dep = IsoDepInitiator(app.receive, fsc=32)  # small frames: exercise chaining both ways
    return [emv.ResponseApdu.decode(dep.exchange(a.encode() if isinstance(a, emv.Apdu) else a)) for a in apdus]


def test_emv_card_full_read_with_5a():
    card = EmvCard(PAN, "2812")
    ppse, aid, gpo, rec1, rec2 = run_card(
        card, emv.select(emv.PPSE), emv.select(emv.VISA_AID),
        emv.get_processing_options(bytes(27)), emv.read_record(1, 1), emv.read_record(2, 1))
    assert emv.ppse_applications(emv.check("PPSE", ppse)) == [emv.VISA_AID]
    assert emv.application_pdol(emv.check("AID", aid)) == card.pdol
    options = emv.processing_options(emv.check("GPO", gpo))
    assert emv.afl_records(options.afl) == [(1, 1), (2, 1), (2, 2)]
    assert tlv.find(emv.check("READ", rec2), 0x5A).value == H(PAN)
    assert tlv.find(emv.check("READ", rec2), 0x5F24).value == H("281231")
    assert tlv.find(emv.check("READ", rec1), 0x57) is not None


def test_emv_card_with_pan_only_in_track2():
    card = EmvCard("5555555555554444", "2702", aid=emv.MASTERCARD_AID, pan_in_track2_only=True)
    _, _, gpo, rec = run_card(card, emv.select(emv.PPSE), emv.select(H("A000000004")),  # partial AID
                              emv.get_processing_options(bytes(27)), emv.read_record(1, 1))
    assert emv.afl_records(emv.processing_options(emv.check("GPO", gpo)).afl) == [(1, 1)]
    objects = emv.check("READ", rec)
    assert tlv.find(objects, 0x5A) is None and tlv.find(objects, 0x5F24) is None
    assert emv.track2_pan_expiry(tlv.find(objects, 0x57).value) == ("5555555555554444", "2702")


def test_emv_card_status_words_for_wrong_commands():
    card = EmvCard(PAN, "2812")
    answers = run_card(
        card,
        emv.get_processing_options(bytes(27)),  # before SELECT AID
        emv.select(H("A0000000999999")),  # unknown application
        emv.Apdu(0x00, 0xA4, 0x00, 0x00, emv.PPSE, 0),  # wrong P1
        emv.Apdu(0x00, 0xCA, 0x9F, 0x17, b"", 0),  # GET DATA: not supported
        emv.Apdu(0x90, 0xA4, 0x04, 0x00, emv.PPSE, 0),  # wrong class
        emv.select(emv.VISA_AID),
        emv.get_processing_options(bytes(3)),  # PDOL data of the wrong length
        emv.read_record(1, 9), emv.read_record(5, 1),
        H("00A404"),  # shorter than a header
    )
    assert [a.sw for a in answers] == [0x6985, 0x6A82, 0x6A86, 0x6D00, 0x6E00, 0x9000, 0x6700, 0x6A83, 0x6A82, 0x6700]


def test_card_states_iso14443_3():
    session = Badge(H("04A1B2C3D4E5F6"), sak=0x00).power_up()
    assert session.card.atqa == 0x0044 and session.answer_request()
    session.select()
    assert session.receive(H("3000"))[:7] == H("04A1B2C3D4E5F6")
    assert session.rats(0x80) is None  # no ISO-DEP on a badge
    assert session.receive(H("5000")) is None and session.state is CardState.HALT
    assert not session.answer_request() and session.answer_request(wake_up=True)
    with pytest.raises(ValueError):
        Badge(H("88010203"))
    with pytest.raises(ValueError):
        EmvCard(PAN, "2813")


def test_isodep_deselect_rnak_and_crc():
    card = EmvCard(PAN, "2812").power_up()
    card.select()
    card.rats(0x80)
    first = card.receive(H("02") + emv.select(emv.PPSE).encode())
    assert first[0] == 0x02 and first.endswith(b"\x90\x00")
    assert card.receive(H("B2")) == first  # R(NAK) with the card's number: send it again
    assert card.receive(H("B3")) == H("A2")  # R(NAK) with the other number: R(ACK)
    assert card.receive(H("C2")) == H("C2") and card.state is CardState.HALT
    assert crc_a(H("0000")) == H("A01E") and crc_a(H("1234")) == H("26CF")  # ISO/IEC 14443-3 Annex B
    target = IsoDepTarget(lambda apdu: apdu[::-1], fsd=16)
    dep = IsoDepInitiator(target.receive, fsc=16)
    assert dep.exchange(bytes(range(40))) == bytes(range(40))[::-1]
