"""PN532 frame codec: byte-for-byte vectors from NXP UM0701-02 and the decoders' recovery rules."""
import pytest

from drivers.card_reader import codec
from drivers.card_reader import commands as c
from drivers.card_reader.codec import (
    Ack, ChipFrameDecoder, Command, ErrorFrame, HostFrameDecoder, Malformed, Nack, Response)

H = bytes.fromhex


def events(decoder, data, *, bytewise=False):
    out = []
    for chunk in ([data[i:i + 1] for i in range(len(data))] if bytewise else [data]):
        decoder.receive_data(chunk)
        while (event := decoder.next_event()) is not None:
            out.append(event)
    return out


# ---- vectors ---------------------------------------------------------------------------------
def test_get_firmware_version_command_and_answer_um0701_7_2_2():
    assert codec.encode_command(c.get_firmware_version()) == H("0000FF02FED4022A00")
    answer = H("0000FF06FAD50332010607E800")
    assert codec.encode_response(0x02, H("32010607")) == answer
    [event] = events(ChipFrameDecoder(), answer)
    assert event == Response(0x02, H("32010607")) and event.code == 0x03
    assert c.FirmwareVersion.decode(event.data) == c.FirmwareVersion(0x32, 1, 6, 7)


def test_ack_nack_and_error_frames_um0701_6_2_1():
    assert codec.ACK_FRAME == H("0000FF00FF00")  # §6.2.1.3
    assert codec.NACK_FRAME == H("0000FFFF0000")  # §6.2.1.4
    assert codec.ERROR_FRAME == H("0000FF01FF7F8100")  # §6.2.1.5
    got = events(ChipFrameDecoder(), codec.ACK_FRAME + codec.NACK_FRAME + codec.ERROR_FRAME)
    assert got == [Ack(), Nack(), ErrorFrame()]
    assert events(HostFrameDecoder(), codec.ACK_FRAME + codec.NACK_FRAME) == [Ack(), Nack()]


def test_sam_configuration_and_in_list_passive_target_frames():
    # the SAMConfiguration exchange nfcpy hard-codes, and InListPassiveTarget 1 target 106 kbps type A
    assert codec.encode_command(c.sam_configuration()) == H("0000FF05FBD4140100001700")
    assert codec.encode_response(0x14, b"") == H("0000FF02FED5151600")
    assert codec.encode_command(c.in_list_passive_target()) == H("0000FF04FCD44A0100E100")
    answer = H("0000FF0CF4D54B010100040804DEADBEEF") + bytes([(-sum(H("D54B010100040804DEADBEEF"))) & 0xFF, 0])
    [event] = events(ChipFrameDecoder(), answer)
    assert c.decode_passive_targets(event.data) == [c.TargetA(1, 0x0004, 0x08, H("DEADBEEF"))]


def test_extended_frame_um0701_6_2_1_2():
    # nfcpy's Diagnose line test: 263 bytes of parameters need the extended frame
    data = b"\x00" + bytes(range(256)) + bytes(6)
    frame = codec.encode_command(Command(0x00, data))
    assert frame[:8] == H("0000FFFFFF0109F6")  # LEN = 0x0109 (TFI + code + 263), LCS = -(01 + 09)
    assert (sum(frame[8:-2]) + frame[-2]) & 0xFF == 0 and frame[-1] == 0
    assert events(HostFrameDecoder(), frame) == [Command(0x00, data)]
    with pytest.raises(ValueError, match="at most 265"):
        codec.encode_frame(0xD4, bytes(265))


def test_preamble_is_optional_and_frames_split_anywhere():
    frame = codec.encode_response(0x4A, b"\x00")
    bare = codec.encode_response(0x4A, b"\x00", preamble=False)
    assert bare == frame[1:-1]
    stream = bare + bare + bytes(9) + frame + codec.ACK_FRAME[1:]
    expected = [Response(0x4A, b"\x00")] * 3 + [Ack()]
    assert events(ChipFrameDecoder(), stream) == expected
    assert events(ChipFrameDecoder(), stream, bytewise=True) == expected


def test_bad_checksums_are_reported_and_the_next_frame_decodes():
    good = codec.encode_response(0x02, H("32010607"))
    bad_dcs = good[:-2] + bytes([good[-2] ^ 1]) + good[-1:]
    bad_lcs = good[:4] + bytes([good[4] ^ 1]) + good[5:]
    got = events(ChipFrameDecoder(), bad_dcs + bad_lcs + good)
    reasons = [e.reason for e in got if isinstance(e, Malformed)]
    assert "data checksum error" in reasons and "length checksum error" in reasons
    assert got[-1] == Response(0x02, H("32010607"))


def test_garbage_is_counted_and_skipped():
    decoder = ChipFrameDecoder()
    got = events(decoder, b"\x55\x55\x13\x37" + codec.ACK_FRAME)
    assert got[0] == Malformed("garbage before start code", 4) and got[-1] == Ack()
    assert decoder.dropped_bytes >= 4


def test_wrong_direction_is_malformed():
    to_chip = codec.encode_command(c.get_firmware_version())
    [event] = events(ChipFrameDecoder(), to_chip)
    assert isinstance(event, Malformed) and "not PN532-to-host" in event.reason
    [event] = events(HostFrameDecoder(), codec.encode_response(0x02, b""))
    assert isinstance(event, Malformed) and "not host-to-PN532" in event.reason
    [event] = events(ChipFrameDecoder(), codec.encode_frame(0xD5, b"\x02"))
    assert event == Malformed("response code is even")


def test_oversize_length_and_buffer_bound():
    decoder = ChipFrameDecoder()
    got = events(decoder, H("0000FFFFFF0200FE") + codec.ACK_FRAME)  # LEN 512 > PN532 buffer
    assert got[0] == Malformed("frame longer than the PN532 buffer", 2) and got[-1] == Ack()
    decoder.receive_data(H("0000FFFFFF0109F6") + bytes(codec.MAX_BUFFER * 3))  # never completes
    assert decoder.buffered <= codec.MAX_BUFFER
    while decoder.next_event() is not None:
        pass
    assert decoder.buffered <= codec.MAX_BUFFER


def test_response_parsers():
    ats_target = H("01 01 0004 20 04 08112233 05 78807002".replace(" ", ""))
    [target] = c.decode_passive_targets(ats_target)
    assert target.iso_dep and target.ats == H("0578807002") and target.nfcid1 == H("08112233")
    assert c.encode_passive_targets([target]) == ats_target
    assert c.decode_passive_targets(b"\x00") == []
    for bad in (b"", H("0101"), H("01010004080308"), H("0101000408040102030499")):
        with pytest.raises(c.CommandFormatError):
            c.decode_passive_targets(bad)
    with pytest.raises(c.CommandFormatError, match=r"NFCID1 is truncated \(2 of 7 bytes\)"):
        c.decode_passive_targets(H("01010044000704A1"))   # a valid length, the UID cut short
    result = c.ExchangeResult.decode(H("41" "9000"))
    assert result.error == 0x01 and result.more and result.data == H("9000")
    status = c.GeneralStatus(0, True, ((1, 0, 0, 0),), 0)
    assert c.GeneralStatus.decode(status.encode()) == status
    assert c.Status.describe(0x27) == "wrong context"
    with pytest.raises(c.CommandFormatError):
        c.set_serial_baudrate(12345)
    with pytest.raises(c.CommandFormatError):
        c.rf_configuration(c.RfItem.MAX_RETRIES, b"\x01")


def test_a_frame_cut_short_is_given_up_and_what_came_after_it_decodes():
    # a header whose body never comes (the chip reset mid-answer, or noise shaped like a header)
    # holds the frames after it as its body; the caller's deadline gives it up
    decoder = ChipFrameDecoder()
    assert events(decoder, H("0000FF8080D5") + codec.ACK_FRAME) == []
    assert decoder.give_up() == Malformed("truncated frame", 2)
    assert events(decoder, b"") == [Malformed("garbage before start code", 3), Ack()]
    assert decoder.give_up() is None  # nothing in progress: nothing to give up
    decoder.receive_data(b"\x00\x00")  # preamble zeros are not a frame either
    assert decoder.give_up() is None
