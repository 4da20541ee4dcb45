"""BER-TLV (EMV Book 3 Annex B) on real EMV answers, and everything it must refuse."""
import pytest

from drivers.card_reader import tlv
from drivers.card_reader.tlv import Tlv, TlvError

H = bytes.fromhex

# SELECT 2PAY.SYS.DDF01 answer of a Visa card (Book B §3.3: 6F > 84, A5 > BF0C > 61 > 4F, 87)
PPSE_FCI = H("6F23840E325041592E5359532E4444463031A511BF0C0E610C4F07A0000000031010870101")
GPO_FORMAT_1 = H("800E5C00080101001001040018010201")  # AIP 5C00 + three AFL entries
GPO_FORMAT_2 = H("771282021980940C080101001001010118010200")


def test_ppse_fci_structure():
    [fci] = tlv.parse(PPSE_FCI)
    assert fci.tag == 0x6F and fci.constructed
    assert fci.find(0x84).value == b"2PAY.SYS.DDF01"
    entry = fci.find(0xBF0C).find(0x61)
    assert entry.find(0x4F).value == H("A0000000031010") and entry.find(0x87).value == b"\x01"
    assert [t.tag for t in fci.walk()] == [0x6F, 0x84, 0xA5, 0xBF0C, 0x61, 0x4F, 0x87]
    assert not fci.find(0x84).constructed


def test_gpo_answers_both_formats():
    [f1] = tlv.parse(GPO_FORMAT_1)
    assert f1.tag == 0x80 and not f1.constructed and len(f1.value) == 14
    [f2] = tlv.parse(GPO_FORMAT_2)
    assert f2.find(0x82).value == H("1980") and f2.find(0x94).value == H("080101001001010118010200")


def test_multibyte_tags_long_lengths_and_padding():
    long_value = bytes(200)
    data = tlv.encode(0x9F38, H("9F6604")) + b"\x00\x00" + tlv.encode(0x5F24, H("281231")) + tlv.encode(0x70, long_value)
    assert tlv.encode(0x70, long_value)[:3] == H("7081C8")
    assert tlv.encode(0x70, bytes(300))[:4] == H("70820 12C".replace(" ", ""))
    objects = tlv.parse(data + b"\x00")
    assert [o.tag for o in objects] == [0x9F38, 0x5F24, 0x70]
    assert objects[2].value == long_value
    assert tlv.find(objects, 0x5F24).value == H("281231")
    assert tlv.parse(H("9F810201AA"))[0].tag == 0x9F8102  # three-byte tag


def test_repr_hides_values():
    [obj] = tlv.parse(H("5A084111111111111111"))
    assert "4111" not in repr(obj) and "8 bytes" in repr(obj)


@pytest.mark.parametrize("data, reason", [
    (H("5A08411111"), "value runs past the end of its container"),  # truncated value
    (H("9F"), "tag truncated"),
    (H("9F66"), "length missing"),
    (H("5A8401000000"), "length field too long"),
    (H("5A80"), "indefinite length is not allowed in EMV"),
    (H("5A82"), "length field truncated"),
    (H("9F818181"), "tag too long"),
    (H("700482021980FF"), "tag truncated"),  # trailing garbage after the template
    (H("7003820219"), "value runs past the end of its container"),  # child overruns its parent
])
def test_malformed_input_is_a_typed_error(data, reason):
    with pytest.raises(TlvError) as info:
        tlv.parse(data)
    assert info.value.reason == reason
    assert data.hex() not in str(info.value).lower()


def test_nesting_is_bounded():
    data = b"\x01"
    for _ in range(tlv.MAX_DEPTH + 2):
        data = tlv.encode(0x70, data)
    with pytest.raises(TlvError, match="nested too deep"):
        tlv.parse(data)
    shallow = tlv.encode(0x70, tlv.encode(0x71, tlv.encode(0x5A, b"\x12")))
    assert tlv.parse(shallow)[0].find(0x5A).value == b"\x12"


def test_data_object_list():
    pdol = H("9F66049F02069F37045F2A029A039C0195059F1A02")
    assert tlv.parse_dol(pdol) == ((0x9F66, 4), (0x9F02, 6), (0x9F37, 4), (0x5F2A, 2), (0x9A, 3),
                                   (0x9C, 1), (0x95, 5), (0x9F1A, 2))
    with pytest.raises(TlvError):
        tlv.parse_dol(H("9F66"))
    assert Tlv(0x5A, b"").constructed is False
