"""CardReader (trio driver) against CardReaderEmulator over real ptys, including every fault."""
import pytest
import trio
import trio.testing

from drivers.card_reader import (
    Badge, BadgeRead, CardReader, CardReaderEmulator, CardToken, EmvCard, MASTERCARD_AID, PaymentCardRead)
from drivers.card_reader import codec
from drivers.card_reader import commands as c
from drivers.card_reader.cards import CardSession
from drivers.card_reader.driver import EXCHANGE_TIMEOUT_S
from drivers.errors import DeviceLost, DeviceTimeout, PortUnavailable, ProtocolError
from drivers.serialport import SerialPort
from tests.conftest import wait_for

KEY = b"\x01" * 32
PAN = "4111111111111111"
BADGE = Badge(bytes.fromhex("DEADBEEF"))
VISA = EmvCard(PAN, "2812")
MC_TRACK2 = EmvCard("5555555555554444", "2702", aid=MASTERCARD_AID, pan_in_track2_only=True)


@pytest.fixture
async def emu(nursery, tmp_path):
    emulator = CardReaderEmulator(tmp_path / "pn532", seed=7)
    await nursery.start(emulator.run)
    return emulator


@pytest.fixture
async def reader(emu):
    with trio.fail_after(5):
        r = await CardReader.open(str(emu.link), token_key=KEY)
    yield r
    await r.aclose()


async def test_open_handshake_and_empty_poll(emu, reader):
    assert str(reader.firmware) == "PN532 v1.6"
    assert not emu.low_vbat and emu.sam_mode is c.SamMode.NORMAL
    assert emu.max_retries[2] == 0x01 and emu.parameters & c.PARAM_AUTOMATIC_RATS
    assert await reader.poll() is None
    status = await reader.general_status()
    assert status.field and status.targets == ()


async def test_badge(emu, reader):
    emu.place(BADGE)
    assert await reader.poll() == BadgeRead("DEADBEEF")
    assert reader.stats.badges == 1


async def test_payment_card_with_5a(emu, reader):
    emu.place(VISA)
    read = await reader.poll()
    assert read == PaymentCardRead(CardToken.from_pan(PAN, KEY), "1111", "2812", "visa")
    assert emu.stats.commands["IN_DATA_EXCHANGE"] == 6  # PPSE, AID, GPO, the AFL's 3 records
    dump = "\n".join(reader._port.traffic.dump(limit=1000))
    assert "41 11 11 11" not in dump and "rx(redacted)" in dump
    assert PAN not in repr(read)


async def test_payment_card_with_only_track2(emu, reader):
    emu.place(MC_TRACK2)
    read = await reader.poll()
    assert read == PaymentCardRead(CardToken.from_pan("5555555555554444", KEY), "4444", "2702", "mastercard")


async def test_iso_dep_card_without_payment_app_reads_as_badge(emu, reader):
    emu.place(EmvCard(PAN, "2812", uid=bytes.fromhex("08A0B0C0"), has_ppse=False))  # e.g. a DESFire badge
    assert await reader.poll() == BadgeRead("08A0B0C0")


def collect_cards(reader, nursery, **kwargs):
    """Run ``reader.cards(**kwargs)`` in the nursery; the reads arrive on the returned channel."""
    send, receive = trio.open_memory_channel(10)

    async def collect():
        async for card in reader.cards(**kwargs):
            await send.send(card)

    nursery.start_soon(collect)
    return receive


async def chip_is_waiting(emu, count=1):
    """Until the chip has received its ``count``-th InListPassiveTarget and everyone is idle."""
    await emu.wait_for_command(c.Code.IN_LIST_PASSIVE_TARGET, count)
    await trio.testing.wait_all_tasks_blocked()


async def test_cards_yields_once_per_presentation(emu, reader, nursery):
    receive = collect_cards(reader, nursery, interval=0.005, liveness=0.05)
    with trio.fail_after(5):
        emu.place(BADGE)
        assert await receive.receive() == BadgeRead("DEADBEEF")
        polls = emu.stats.commands["IN_LIST_PASSIVE_TARGET"]
        await emu.wait_for_command(c.Code.IN_LIST_PASSIVE_TARGET, polls + 5)
        with pytest.raises(trio.WouldBlock):
            receive.receive_nowait()  # it stayed on the reader: not read again
        emu.remove()
        emu.place(VISA)
        assert isinstance(await receive.receive(), PaymentCardRead)
        emu.place(BADGE)  # presented again: read again
        assert await receive.receive() == BadgeRead("DEADBEEF")
    nursery.cancel_scope.cancel()


async def test_cards_waits_on_the_chip_and_a_card_is_read_at_once(emu, reader, nursery):
    receive = collect_cards(reader, nursery, liveness=10)
    with trio.fail_after(5):
        await chip_is_waiting(emu)
        assert emu.max_retries[2] == c.RETRY_FOREVER  # MxRtyPassiveActivation 0xFF: the chip waits
        # its ACK read (it may still be in the pty when every task is blocked): an ACK and an answer
        # per command so far, the waiting one's answer still to come
        await wait_for(lambda: reader.stats.frames_ok == 2 * sum(emu.stats.commands.values()) - 1)
        frames = reader.stats.frames_ok
        await trio.sleep(0.2)
        assert reader.stats.frames_ok == frames  # nothing on the line while no card is there
        started = trio.current_time()
        emu.place(BADGE)
        assert await receive.receive() == BadgeRead("DEADBEEF")
        assert trio.current_time() - started < 2.0  # the pending command answered, not a new one at the 10 s liveness round
    assert emu.stats.commands["IN_LIST_PASSIVE_TARGET"] == 1 and emu.stats.aborts == 0
    nursery.cancel_scope.cancel()


async def test_liveness_period_aborts_and_issues_again(emu, reader, nursery):
    receive = collect_cards(reader, nursery, liveness=0.05)
    with trio.fail_after(5):
        await chip_is_waiting(emu, 4)  # the ACKs came before it on the line
        assert emu.stats.aborts >= 3 and reader.stats.aborts >= 3  # one ACK abort per period
        assert reader.stats.timeouts == 0 and reader.stats.drops["stale frame"] == 0
        emu.place(VISA)
        assert isinstance(await receive.receive(), PaymentCardRead)
    nursery.cancel_scope.cancel()


async def test_cancelled_wait_is_aborted_and_poll_is_bounded_again(emu, reader):
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            collect_cards(reader, nursery, liveness=10)
            await chip_is_waiting(emu)
            nursery.cancel_scope.cancel()
        assert await reader.poll() is None  # bounded retries again: an empty poll ends
        assert emu.stats.aborts == 1  # the chip was not left waiting for a card
        assert emu.max_retries[2] == 0x01
        emu.place(BADGE)
        assert await reader.poll() == BadgeRead("DEADBEEF")


async def first_card(reader, **kwargs):
    async for card in reader.cards(**kwargs):
        return card


async def test_unplug_while_the_chip_waits_is_device_lost(emu, reader, nursery):
    async def unplug_while_waiting():
        await chip_is_waiting(emu)
        await emu.unplug(0.2)

    nursery.start_soon(unplug_while_waiting)
    with pytest.raises(DeviceLost):
        with trio.fail_after(1):  # well before the 10 s liveness period
            await first_card(reader, liveness=10)


async def test_stall_while_the_chip_waits_is_device_timeout_within_the_period(emu, reader, nursery):
    liveness, stalled_at = 0.2, []

    async def stall_while_waiting():
        await chip_is_waiting(emu)
        emu.stall(5)
        stalled_at.append(trio.current_time())

    nursery.start_soon(stall_while_waiting)
    with pytest.raises(DeviceTimeout, match="did not acknowledge InListPassiveTarget"):
        # the period, the abort's settle time, then two ACK waits for the re-issued command
        with trio.fail_after(liveness + 0.05 + 2 * 0.1 + 0.25):
            await first_card(reader, liveness=liveness)
    assert trio.current_time() - stalled_at[0] >= liveness - 0.01
    assert reader.stats.resends == 1 and reader.stats.timeouts == 1


class _SendHook:
    """Runs ``before`` (or ``after``) the host's next ``frame`` (default: an abort ACK) is written."""

    def __init__(self, reader, *, frame=codec.ACK_FRAME, before=None, after=None):
        self.port, self.frame, self.before, self.after = reader._port, frame, before, after
        self.real_send, self.port.send_all = self.port.send_all, self.send_all

    async def send_all(self, data):
        if data != self.frame:
            return await self.real_send(data)
        self.port.send_all = self.real_send  # once
        if self.before:
            await self.before()
        await self.real_send(data)
        if self.after:
            await self.after()


async def test_response_crossing_the_abort_is_used(emu, reader, nursery):
    async def card_arrives_and_chip_answers():
        emu.place(BADGE)
        await trio.testing.wait_all_tasks_blocked()  # the chip has answered: the ACK finds it idle

    _SendHook(reader, before=card_arrives_and_chip_answers)
    receive = collect_cards(reader, nursery, liveness=0.1)
    with trio.fail_after(5):
        assert await receive.receive() == BadgeRead("DEADBEEF")
    assert reader.stats.crossed_responses == 1 and reader.stats.aborts == 1
    assert emu.stats.aborts == 0  # the ACK came after the answer: nothing to abort
    assert emu.stats.commands["IN_LIST_PASSIVE_TARGET"] == 1  # the answer was used, not re-asked
    assert reader.stats.drops["stale frame"] == 0
    nursery.cancel_scope.cancel()


async def test_card_arriving_while_aborting_is_read_by_the_next_wait(emu, reader, nursery):
    async def card_arrives_after_the_abort():
        while emu.stats.aborts < 1:  # the chip reads the ACK off the pty
            await trio.sleep(0.001)
        emu.place(BADGE)

    _SendHook(reader, after=card_arrives_after_the_abort)
    receive = collect_cards(reader, nursery, liveness=0.1)
    with trio.fail_after(5):
        assert await receive.receive() == BadgeRead("DEADBEEF")
    assert reader.stats.crossed_responses == 0
    assert emu.stats.commands["IN_LIST_PASSIVE_TARGET"] == 2  # found at once by the re-issued wait
    nursery.cancel_scope.cancel()


async def test_stale_answer_after_an_abort_is_drained_and_counted(emu, reader, nursery):
    wait_command = codec.encode_command(c.in_list_passive_target())
    late = codec.encode_response(c.Code.IN_LIST_PASSIVE_TARGET, c.encode_passive_targets(
        [c.TargetA(1, 0x0004, 0x08, bytes.fromhex("0BADCAFE"))]))

    async def late_answer_to_the_aborted_wait():
        assert reader.stats.aborts == 1  # re-issuing after the abort and the settle time...
        await emu.send(late)  # ...when an answer to the aborted command comes in after all
        await trio.testing.wait_all_tasks_blocked()

    receive = collect_cards(reader, nursery, liveness=0.1)
    with trio.fail_after(5):
        await chip_is_waiting(emu)
        _SendHook(reader, frame=wait_command, before=late_answer_to_the_aborted_wait)
        await chip_is_waiting(emu, 3)
        assert reader.stats.drops["stale frame"] == 1  # drained and counted, not taken as a card
        assert reader.stats.badges == 0 and reader.stats.timeouts == 0
        emu.place(BADGE)
        assert await receive.receive() == BadgeRead("DEADBEEF")
    nursery.cancel_scope.cancel()


class _StubbornSession(CardSession):
    def halt(self):
        """Ignores HLTA / DESELECT (some phones and cheap tags)."""


class StubbornBadge(Badge):
    def power_up(self):
        return _StubbornSession(self)


async def test_card_that_ignores_halt_is_not_read_again_while_it_stays(emu, reader, nursery):
    receive = collect_cards(reader, nursery, interval=0.02, liveness=0.5)
    with trio.fail_after(5):
        emu.place(StubbornBadge(BADGE.uid))
        assert await receive.receive() == BadgeRead("DEADBEEF")
        await chip_is_waiting(emu, 6)  # it answers every search...
        with pytest.raises(trio.WouldBlock):
            receive.receive_nowait()  # ...but it stayed: not read again
        emu.remove()
        await trio.sleep(0.2)  # lifted, then presented again
        emu.place(StubbornBadge(BADGE.uid))
        assert await receive.receive() == BadgeRead("DEADBEEF")
    nursery.cancel_scope.cancel()


async def test_card_removed_mid_read(emu, reader):
    emu.place(VISA)
    emu.remove_card_after(2)  # gone after PPSE and SELECT AID: GPO times out (status 0x01)
    assert await reader.poll() is None
    assert reader.stats.failed_reads["card taken away during the read"] == 1
    assert emu.last_error == c.Status.OK  # InRelease after the failure was accepted
    emu.place(VISA)
    assert isinstance(await reader.poll(), PaymentCardRead)


class _LateRecordChip(CardReaderEmulator):
    """A PN532 whose card answers the first READ RECORD (the track-2 data) only after the host's
    exchange timeout, like a real chip: the answer crosses the host's abort ACK (which it then
    ignores) and goes out before the chip takes the next command."""

    exchanges = 0

    async def _dispatch(self, command):
        if command.code == c.Code.IN_DATA_EXCHANGE:
            self.exchanges += 1
            if self.exchanges == 4:  # PPSE, AID, GPO, then the record holding 57
                with trio.CancelScope(shield=True):
                    await trio.sleep(EXCHANGE_TIMEOUT_S + 0.03)
        return await super()._dispatch(command)

    async def _on_event(self, event):
        while self._running is not None:  # one command at a time: the late answer first
            await trio.sleep(0.005)
        await super()._on_event(event)


async def test_a_card_answer_arriving_after_a_failed_read_is_redacted_in_the_traffic_ring(tmp_path):
    """The traffic ring is dumped in the log on the next timeout: an answer the card sends after
    the host gave up (the track-2 data: card number, expiry) must be as redacted as the others."""
    emu = _LateRecordChip(tmp_path / "pn532", seed=7)
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        async with await CardReader.open(str(emu.link), token_key=KEY) as reader:
            emu.place(VISA)
            with pytest.raises(DeviceTimeout):
                await reader.poll()
            await reader.general_status()  # whatever was still on the line has been read
            dump = "\n".join(reader._port.traffic.dump(limit=1000))
        nursery.cancel_scope.cancel()
    assert emu.stats.commands["IN_RELEASE"] == 1  # the late answer came before the release's
    assert "41 11 11 11" not in dump and "d2 81 2" not in dump, dump


async def test_unplug_is_device_lost_and_reopen_works(emu, reader, nursery):
    emu.place(BADGE)
    nursery.start_soon(emu.unplug, 0.2)
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(DeviceLost):
        with trio.fail_after(2):
            await reader.poll()
    await reader.aclose()
    with pytest.raises(PortUnavailable):
        await CardReader.open(str(emu.link), token_key=KEY)
    with trio.fail_after(2):
        await emu.replugged()
    assert emu.low_vbat and emu.asleep  # the reader was power-cycled
    async with await CardReader.open(str(emu.link), token_key=KEY) as again:
        assert await again.poll() == BadgeRead("DEADBEEF")


async def test_garbage_is_dropped_and_counted(emu, reader):
    emu.place(BADGE)
    emu.inject_garbage(b"\x13\x37\x00\xff\x05\x02\x42")  # includes a start code with a bad LCS
    assert await reader.poll() == BadgeRead("DEADBEEF")
    assert sum(reader.stats.drops.values()) >= 1


async def test_a_frame_cut_short_does_not_swallow_the_answers_after_it(emu, reader):
    # a header whose body never comes (the chip reset mid-answer, or noise shaped like one):
    # before, the ACK and answer of the next commands filled its 128-byte body, two polls
    # timed out and the node would have closed and reopened the reader
    emu.place(BADGE)
    emu.inject_garbage(bytes.fromhex("0000FF8080D5"))
    with trio.fail_after(2):
        assert await reader.poll() == BadgeRead("DEADBEEF")
    assert reader.stats.drops["truncated frame"] == 1
    assert reader.stats.resends == 0 and reader.stats.timeouts == 0


async def test_checksum_error_gets_a_nack_and_the_answer_again(emu, reader):
    emu.place(BADGE)
    emu.corrupt_next(1)
    assert await reader.poll() == BadgeRead("DEADBEEF")
    assert reader.stats.nacks_sent == 1 and emu.stats.nacks == 1
    assert reader.stats.drops["data checksum error"] >= 1


async def test_stall_is_device_timeout_then_recovery(emu, reader):
    emu.stall(0.4)
    with pytest.raises(DeviceTimeout, match="did not acknowledge InListPassiveTarget"):
        await reader.poll()
    assert reader.stats.resends == 1 and reader.stats.timeouts == 1
    emu.place(BADGE)
    with trio.fail_after(3):
        while True:  # the stream resumes once the device does
            try:
                assert await reader.poll() == BadgeRead("DEADBEEF")
                break
            except DeviceTimeout:
                continue


async def test_chip_reset_mid_session_is_configured_again(emu, reader):
    # a brown-out resets the chip but not the port: LowVbat (asleep after every command), no
    # automatic RATS... and MxRtyPassiveActivation back to 0xFF. Before, the driver never
    # configured it again: every command needed its resend, and an empty poll waited on the
    # chip until DeviceTimeout, again and again
    emu.reset()
    emu.place(BADGE)
    with trio.fail_after(3):
        # its frames woke the chip, but it slept again after each: InListPassiveTarget and
        # InRelease were ACKed only when sent again
        assert await reader.poll() == BadgeRead("DEADBEEF")
        assert reader.stats.resends == 2
        emu.remove()
        assert await reader.poll() is None  # configured again first, so bounded again
        assert not emu.low_vbat and emu.parameters & c.PARAM_AUTOMATIC_RATS
        assert emu.max_retries[2] == 0x01
        emu.place(VISA)
        assert isinstance(await reader.poll(), PaymentCardRead)
    assert reader.stats.resends == 2 and reader.stats.reconfigured == 1 and reader.stats.timeouts == 0


async def test_slow_first_answer(emu):
    emu.slow_first_answer(0.3)
    with pytest.raises(DeviceTimeout, match="no PN532 answered"):
        await CardReader.open(str(emu.link), token_key=KEY, timeout=0.1)
    async with await CardReader.open(str(emu.link), token_key=KEY, timeout=2.0) as r:
        assert r.firmware.ic == 0x32


async def test_set_serial_baudrate_and_mismatch(emu, reader):
    emu.place(BADGE)
    await reader.set_baudrate(460800)
    assert await reader.poll() == BadgeRead("DEADBEEF")
    assert emu.baudrate == 460800
    reader._port.set_baudrate(115200)  # the host changes speed without telling the chip
    with pytest.raises(DeviceTimeout):
        await reader.poll()
    reader._port.set_baudrate(460800)
    emu.place(BADGE)
    assert await reader.poll() == BadgeRead("DEADBEEF")
    await reader.aclose()
    assert emu.baudrate == 115200  # aclose put the chip back to its power-on speed


async def test_error_frame_and_status_bytes(emu, reader):
    with pytest.raises(ProtocolError, match="syntax error"):
        await reader.call(codec.Command(0x8C))  # TgInitAsTarget: not emulated
    with pytest.raises(ProtocolError, match="syntax error"):
        await reader.call(codec.Command(c.Code.RF_CONFIGURATION, b"\x05\x01"))
    answer = c.ExchangeResult.decode(await reader.call(c.in_data_exchange(1, b"\x00\xa4")))
    assert answer.error == c.Status.WRONG_CONTEXT  # no target listed
    assert (await reader.general_status()).last_error == c.Status.WRONG_CONTEXT


async def test_power_down_then_hsu_wake_on_the_next_command(emu, reader):
    assert c.decode_status(await reader.call(c.power_down(c.WAKE_HSU)), "PowerDown") == 0
    await trio.testing.wait_all_tasks_blocked()
    assert emu.asleep and not emu.field_on
    emu.place(BADGE)
    # the frame itself wakes the chip but is lost while its oscillator starts: one resend
    assert await reader.poll() == BadgeRead("DEADBEEF")
    assert reader.stats.resends == 1


async def test_retry_forever_waits_for_a_card_and_ack_aborts(emu, reader):
    await reader.call(c.rf_max_retries(passive_activation=c.RETRY_FOREVER))
    async with trio.open_nursery() as nursery:
        got = []

        async def wait():
            got.append(await reader.call(c.in_list_passive_target(), timeout=5))

        nursery.start_soon(wait)
        await emu.wait_for_command(c.Code.IN_LIST_PASSIVE_TARGET)
        await trio.testing.wait_all_tasks_blocked()
        assert not got  # still waiting, as the chip does
        emu.place(BADGE)
    assert c.decode_passive_targets(got[0])[0].nfcid1 == BADGE.uid
    await reader.call(c.in_release())
    emu.remove()
    with pytest.raises(DeviceTimeout, match="did not answer"):
        await reader.call(c.in_list_passive_target(), timeout=0.1)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # the emulator reads the ACK off the pty
    assert emu.stats.aborts == 1  # the driver's ACK cancelled the waiting command


async def test_low_vbat_until_sam_configuration(emu):
    async with SerialPort.open(str(emu.link), 115200) as port:
        decoder = codec.ChipFrameDecoder()

        async def ask(frame):
            await port.send_all(frame)
            got = []
            with trio.move_on_after(0.3):
                while len(got) < 2:
                    decoder.receive_data(await port.receive_some())
                    while (event := decoder.next_event()) is not None:
                        got.append(event)
            return got

        getfw = codec.encode_command(c.get_firmware_version())
        assert await ask(getfw) == []  # asleep after power-on: the frame only wakes it
        assert not emu.asleep and emu.hsu.bytes_lost > 0
        got = await ask(b"\x55" + bytes(8) + getfw)
        assert got == [codec.Ack(), codec.Response(0x02, bytes.fromhex("32010607"))]
        await trio.testing.wait_all_tasks_blocked()
        assert emu.asleep  # LowVbat: back to sleep until SAMConfiguration
        got = await ask(b"\x55" + bytes(8) + codec.encode_command(c.sam_configuration()))
        assert got[-1] == codec.Response(0x14, b"") and not emu.asleep
        assert (await ask(getfw))[-1] == codec.Response(0x02, bytes.fromhex("32010607"))


async def test_token_key_is_required():
    with pytest.raises(ValueError, match="token_key"):
        await CardReader.open("/nonexistent", token_key=b"short")
