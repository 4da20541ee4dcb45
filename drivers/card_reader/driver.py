"""The PN532 card reader for trio: wake it, configure it, wait for cards, read payment cards.

:meth:`CardReader.cards` lets the chip do the waiting: InListPassiveTarget with unbounded retries
(RFConfiguration MxRtyPassiveActivation = 0xFF) answers only when a card enters the field. Every
liveness period the host aborts it with an ACK and issues it again, so a dead chip is still
noticed (its ACK to the new command is the sign of life).

A payment card's number is turned into a :class:`CardToken` the moment it is read; the driver
keeps no copy, logs none (the traffic ring redacts what the card says from the start of its read
until it is released) and its exceptions never carry card data.
"""
from __future__ import annotations

import collections
import datetime
import logging
import secrets
from collections.abc import AsyncIterator

import attrs
import trio

from drivers.card_reader import codec, emv
from drivers.card_reader import commands as c
from drivers.card_reader.cardtoken import MIN_KEY_BYTES, CardToken, InvalidCardNumber
from drivers.card_reader.codec import Ack, ErrorFrame, Malformed, Nack, Response
from drivers.card_reader.hsu import WAKE_UP_PREAMBLE
from drivers.card_reader.reads import BadgeRead, CardNotRead, CardRead, PaymentCardRead
from drivers.errors import DeviceTimeout, ProtocolError
from drivers.serialport import SerialPort
from drivers.traffic import TrafficLog

log = logging.getLogger(__name__)

DEFAULT_BAUDRATE = 115200  # UM0701 §6.2.2 / §7.2.8: HSU speed after power-on
ACK_TIMEOUT_S = 0.1  # UM0701 §6.2.2: the PN532 ACKs within ~15 ms; nfcpy waits 100 ms too
RESPONSE_TIMEOUT_S = 0.5
POLL_TIMEOUT_S = 1.0  # InListPassiveTarget, bounded by POLL_RETRIES
LIVENESS_S = 1.0  # cards(): the chip waits this long for a card before the host aborts and asks again
ABORT_SETTLE_S = 0.05  # after an abort ACK: a response that crossed it arrives within this (UART + USB latency)
STAYED_S = 0.15  # the same UID answering a new search this fast never left the field (nobody re-taps that fast)
EXCHANGE_TIMEOUT_S = 1.5  # InDataExchange: the card's frame waiting time plus chip retries
POLL_RETRIES = 0x01  # §7.3.1 item 5 MxRtyPassiveActivation: two attempts, so a poll ends quickly
WAIT_RETRIES = c.RETRY_FOREVER  # §7.3.1 item 5: 0xFF, the chip retries until a card answers
MAX_NACKS = 3  # §6.2.1.4: ask this many times for a response with a bad checksum
_CHECKSUM_REASONS = ("length checksum error", "extended length checksum error", "data checksum error")
_CARD_GONE = {c.Status.TIMEOUT, c.Status.CARD_DISAPPEARED, c.Status.RF_PROTOCOL, c.Status.CRC_ERROR,
              c.Status.PARITY_ERROR, c.Status.FRAMING}


@attrs.define
class CardReaderStats:
    """Health counters for the diagnostics registry."""

    frames_ok: int = 0  # ACKs and responses with good checksums
    drops: collections.Counter[str] = attrs.Factory(collections.Counter)  # malformed input by reason
    nacks_sent: int = 0
    resends: int = 0  # commands sent again after a missing ACK
    reconfigured: int = 0  # setups sent again after a resend (the chip may have reset)
    timeouts: int = 0
    error_frames: int = 0
    polls: int = 0  # InListPassiveTarget sent (bounded polls and chip-side waits)
    aborts: int = 0  # chip-side waits aborted by the host (liveness period over, or cancelled)
    crossed_responses: int = 0  # a response that crossed the host's abort ACK (used, not lost)
    badges: int = 0
    payment_cards: int = 0
    failed_reads: collections.Counter[str] = attrs.Factory(collections.Counter)  # by reason
    last_frame_at: float | None = None


class _RedactingTrafficLog(TrafficLog):
    """The port's traffic ring, with what the card says blanked out while a card is being read."""

    sensitive = False

    def record(self, direction: str, data: bytes) -> None:
        if self.sensitive and direction == "rx":
            direction, data = "rx(redacted)", bytes(len(data))
        super().record(direction, data)


class _CardLeft(Exception):
    """The card stopped answering during the read (taken away)."""


class CardReader:
    """An open PN532 over HSU. Use :meth:`open`; close with :meth:`aclose` (or ``async with``)."""

    device = "card reader (PN532)"

    def __init__(self, port: SerialPort, *, token_key: bytes, terminal: emv.Terminal,
                 traffic: _RedactingTrafficLog) -> None:
        self._port = port
        self.path = port.path
        self._token_key = bytes(token_key)
        self.terminal = terminal
        self._traffic = traffic
        self._decoder = codec.ChipFrameDecoder()
        self._lock = trio.Lock()
        self.stats = CardReaderStats()
        self.firmware: c.FirmwareVersion | None = None
        self._passive_retries: int | None = None  # MxRtyPassiveActivation as last configured
        self._setup_lost = False  # a command was ACKed only when sent again: the chip may have reset

    # ---- lifecycle -----------------------------------------------------------------------
    @classmethod
    async def open(cls, path: str, *, token_key: bytes, timeout: float = 2.0,
                   terminal: emv.Terminal | None = None) -> "CardReader":
        """Open the PN532 at ``path``: wake it, SAMConfiguration normal mode, check the firmware,
        and bound passive polling. Raises PortUnavailable, DeviceTimeout or ProtocolError."""
        if len(token_key) < MIN_KEY_BYTES:
            raise ValueError(f"token_key must be at least {MIN_KEY_BYTES} bytes; generate one with os.urandom(32)")
        traffic = _RedactingTrafficLog()
        port = SerialPort.open(path, DEFAULT_BAUDRATE, traffic=traffic)
        reader = cls(port, token_key=token_key, terminal=terminal or emv.Terminal(), traffic=traffic)
        try:
            await reader._handshake(timeout)
        except BaseException:
            await port.aclose()
            raise
        return reader

    async def _handshake(self, timeout: float) -> None:
        try:
            # §6.2.2: 0x55 + zeros wake the HSU; §7.2.10: SAMConfiguration first leaves LowVbat
            await self.call(c.sam_configuration(c.SamMode.NORMAL), wake=True, ack_timeout=timeout)
        except DeviceTimeout:
            raise DeviceTimeout(
                f"no PN532 answered on {self.path} within {timeout:g}s: check its power, that its "
                "interface switches select HSU (UART), and that TX/RX are crossed") from None
        self.firmware = c.FirmwareVersion.decode(await self.call(c.get_firmware_version()))
        if self.firmware.ic != 0x32:
            raise ProtocolError(f"the reader on {self.path} is a PN5{self.firmware.ic:02x}, not a PN532")
        await self.call(c.set_parameters(c.PARAM_AUTOMATIC_RATS))  # §7.2.9: chip activates ISO-DEP
        await self._set_passive_retries(POLL_RETRIES)
        self._setup_lost = False

    async def _restore_setup(self) -> None:
        """A command went unacknowledged until sent again: the chip may have reset behind a port
        that stayed (brown-out), back in LowVbat (asleep after every command, §7.2.10) with its
        reset parameters and MxRtyPassiveActivation 0xFF. Configure it again (harmless if the
        ACK was merely lost)."""
        if not self._setup_lost:
            return
        self._setup_lost = False
        self.stats.reconfigured += 1
        log.warning("%s: the PN532 acknowledged a command only when sent again (a reset?); "
                    "configuring it again", self.path)
        self._passive_retries = None
        await self.call(c.sam_configuration(c.SamMode.NORMAL), wake=True)
        await self.call(c.set_parameters(c.PARAM_AUTOMATIC_RATS))

    async def _set_passive_retries(self, retries: int) -> None:
        if self._passive_retries != retries:
            await self.call(c.rf_max_retries(atr=0xFF, psl=0x01, passive_activation=retries))
            self._passive_retries = retries

    async def aclose(self) -> None:
        """Switch the field off and close the port (best effort: the device may be gone)."""
        with trio.move_on_after(0.5):
            try:
                if self._port.baudrate != DEFAULT_BAUDRATE:
                    await self.set_baudrate(DEFAULT_BAUDRATE)  # the next open starts at 115200
                await self.call(c.rf_field(False))
            except (OSError, trio.ClosedResourceError, DeviceTimeout, ProtocolError, c.CommandFormatError):
                pass
            except Exception as exc:  # DeviceLost and friends: nothing left to switch off
                log.debug("%s: close: %s", self.path, exc)
        await self._port.aclose()

    async def __aenter__(self) -> "CardReader":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- frames --------------------------------------------------------------------------
    async def call(self, command: codec.Command, *, timeout: float = RESPONSE_TIMEOUT_S,
                   ack_timeout: float = ACK_TIMEOUT_S, wake: bool = False) -> bytes:
        """Send ``command``, wait for its ACK (sending once more if none comes) and return the
        response data. Raises DeviceTimeout, ProtocolError (error frame) or DeviceLost."""
        data = await self._exchange(command, timeout=timeout, ack_timeout=ack_timeout, wake=wake)
        if data is None:
            self._timed_out(f"{self.device} on {self.path} did not answer {_name(command.code)} within {timeout:g}s")
        return data

    async def _exchange(self, command: codec.Command, *, timeout: float, ack_timeout: float = ACK_TIMEOUT_S,
                        wake: bool = False, waiting: bool = False) -> bytes | None:
        """One command: its response data, or ``None`` if none came within ``timeout`` (the
        command is then aborted with an ACK). ``waiting``: the chip may legitimately take longer
        (a chip-side wait); after the abort, listen :data:`ABORT_SETTLE_S` for a response that
        crossed it, and return that. A missing ACK is DeviceTimeout either way."""
        name = _name(command.code)
        frame = codec.encode_command(command)
        if wake:
            frame = WAKE_UP_PREAMBLE + frame
        async with self._lock:
            self._drain_stale()
            try:
                for attempt in range(2):
                    if attempt:
                        self.stats.resends += 1
                        log.debug("%s: no ACK for %s, sending it again", self.path, name)
                    await self._port.send_all(frame)
                    if await self._wait_ack(ack_timeout):
                        self._setup_lost = self._setup_lost or attempt > 0
                        break
                else:
                    self._timed_out(f"{self.device} on {self.path} did not acknowledge {name}")
                data = await self._wait_response(command.code, name, timeout)
            except trio.Cancelled:
                await self._abort_shielded(name)  # the chip may be working on it: free it
                raise
            if data is not None:
                return data
            await self._port.send_all(codec.ACK_FRAME)  # §6.2.2 d): abort the command
            if not waiting:
                return None
            self.stats.aborts += 1
            # the chip may have answered just before our ACK reached it (it then ignores the ACK):
            # that answer is real (a card was activated), so wait for it briefly and use it
            data = await self._wait_response(command.code, name, ABORT_SETTLE_S)
            if data is not None:
                self.stats.crossed_responses += 1
                log.debug("%s: %s answered as it was aborted; answer used", self.path, name)
            return data

    async def _abort_shielded(self, name: str) -> None:
        """Cancelled while the chip works on a command: abort it so the chip is free (best effort)."""
        with trio.CancelScope(shield=True), trio.move_on_after(ACK_TIMEOUT_S):
            try:
                await self._port.send_all(codec.ACK_FRAME)  # §6.2.2 d)
                self.stats.aborts += 1
            except Exception as exc:  # the port is gone: nothing to abort
                log.debug("%s: could not abort %s: %s", self.path, name, exc)

    def _drain_stale(self) -> None:
        # half duplex: whatever is buffered before a command, a frame cut short too, is stale
        while (event := self._decoder.next_event() or self._decoder.give_up()) is not None:
            self._count(event, stale=True)

    def _count(self, event: codec.Event, *, stale: bool = False) -> None:
        if isinstance(event, Malformed):
            self.stats.drops[event.reason] += 1
        elif stale:
            self.stats.drops["stale frame"] += 1
        else:
            self.stats.frames_ok += 1
            self.stats.last_frame_at = trio.current_time()

    async def _next_event(self, deadline: float, *, give_up: bool = False) -> codec.Event | None:
        """The next event before ``deadline``, else ``None``. ``give_up``: a frame still
        incomplete at the deadline is cut short, and the frames it held as its body (which
        arrived in time) are decoded before ``None``. Not while a response may be on its way:
        one that crosses an abort is completed after it."""
        while (event := self._decoder.next_event()) is None:
            with trio.move_on_at(deadline):
                self._decoder.receive_data(await self._port.receive_some())
                continue
            return self._decoder.give_up() if give_up else None
        return event

    async def _wait_ack(self, timeout: float) -> bool:
        # an ACK is 6 bytes and comes within ~15 ms: a longer frame still open at the deadline
        # has swallowed it (a header whose body never came)
        deadline = trio.current_time() + timeout
        while (event := await self._next_event(deadline, give_up=True)) is not None:
            if isinstance(event, Ack):
                self._count(event)
                return True
            self._count(event, stale=not isinstance(event, Malformed))
        return False

    async def _wait_response(self, code: int, name: str, timeout: float) -> bytes | None:
        deadline = trio.current_time() + timeout
        nacks = 0
        while (event := await self._next_event(deadline)) is not None:
            if isinstance(event, Response) and event.command == code:
                self._count(event)
                return event.data
            if isinstance(event, ErrorFrame):
                self.stats.error_frames += 1
                raise ProtocolError(f"the PN532 on {self.path} rejected {name} as a syntax error (UM0701 §6.2.1.5)")
            self._count(event, stale=isinstance(event, (Response, Nack)))
            if isinstance(event, Malformed) and event.reason in _CHECKSUM_REASONS and nacks < MAX_NACKS:
                nacks += 1
                self.stats.nacks_sent += 1
                await self._port.send_all(codec.NACK_FRAME)  # §6.2.1.4: send that response again
        return None

    def _timed_out(self, message: str) -> None:
        self.stats.timeouts += 1
        log.warning("%s; recent traffic:\n  %s", message, "\n  ".join(self._traffic.dump()))
        raise DeviceTimeout(message)

    # ---- chip commands -------------------------------------------------------------------
    async def set_baudrate(self, baudrate: int) -> None:
        """SetSerialBaudRate (§7.2.8): answer at the old rate, our ACK, then both switch."""
        await self.call(c.set_serial_baudrate(baudrate))
        await self._port.send_all(codec.ACK_FRAME)
        self._port.set_baudrate(baudrate)

    async def general_status(self) -> c.GeneralStatus:
        return c.GeneralStatus.decode(await self.call(c.get_general_status()))

    # ---- cards ---------------------------------------------------------------------------
    async def poll(self) -> CardRead | None:
        """Look for one card (a bounded InListPassiveTarget) and read it; ``None`` if no card
        was there or it could not be read (``stats.failed_reads`` says why)."""
        await self._restore_setup()
        await self._set_passive_retries(POLL_RETRIES)
        self.stats.polls += 1
        data = await self.call(c.in_list_passive_target(1, c.BrTy.TYPE_A_106), timeout=POLL_TIMEOUT_S)
        target = self._first_target(data)
        if target is None:
            return None
        _, read = await self._take(target, skip=False)
        return None if isinstance(read, CardNotRead) else read

    async def cards(self, interval: float = 0.1, *,
                    liveness: float = LIVENESS_S) -> AsyncIterator[CardRead | CardNotRead]:
        """Each card presented, once per presentation (not again while it stays on the reader);
        a :class:`CardNotRead` for one presented but not read (``stats.failed_reads`` counts why).

        The chip waits for the card (InListPassiveTarget, MxRtyPassiveActivation = 0xFF) and
        answers as soon as one enters the field. After ``liveness`` seconds without a card the
        host aborts the wait and starts another, so a dead chip raises DeviceTimeout (no ACK) at
        most about ``liveness`` + 0.25 s after its last sign of life; an unplug raises DeviceLost
        at once. After each card, ``interval`` seconds pass before the next wait: a card that
        ignores HLTA/DESELECT and stays in the field is thus asked for at most once per interval.
        """
        last_uid: bytes | None = None
        while True:
            await self._restore_setup()
            await self._set_passive_retries(WAIT_RETRIES)
            self.stats.polls += 1
            started = trio.current_time()
            data = await self._exchange(c.in_list_passive_target(1, c.BrTy.TYPE_A_106),
                                        timeout=liveness, waiting=True)
            target = self._first_target(data) if data is not None else None
            if target is None:
                last_uid = None  # nothing answered for a whole period: whatever was there left
                continue
            # a card that did not go quiet after InRelease answers again at once; one lifted
            # and presented again cannot be back this fast
            stayed = target.nfcid1 == last_uid and trio.current_time() - started < STAYED_S
            gone, read = await self._take(target, skip=stayed)
            last_uid = None if gone else target.nfcid1
            if read is not None:
                yield read
            del read  # the card read (a person's card token) is not kept while the reader waits for the next
            await trio.sleep(interval)

    def _first_target(self, data: bytes) -> c.TargetA | None:
        try:
            targets = c.decode_passive_targets(data)
        except c.CommandFormatError as exc:
            raise ProtocolError(f"{self.device} on {self.path}: {exc}") from None
        return targets[0] if targets else None

    async def _take(self, target: c.TargetA, *, skip: bool) -> tuple[bool, CardRead | CardNotRead | None]:
        """Read ``target`` (unless ``skip``: None) and release it: (card taken away during the read, read)."""
        if skip:
            await self._release(target.tg)
            return False, None
        try:
            read = await self._read(target)
        except _CardLeft:
            return True, self._not_read("card taken away during the read")  # not "seen": read again when back
        finally:
            try:
                await self._release(target.tg)
            finally:
                # redacted until the card is released: an answer that crossed the host's abort of a
                # read that timed out arrives before the release's, and is the card's data as well
                self._traffic.sensitive = False
        if isinstance(read, BadgeRead):
            self.stats.badges += 1
        elif isinstance(read, PaymentCardRead):
            self.stats.payment_cards += 1
        return False, read

    async def _release(self, tg: int) -> None:
        # InRelease (§7.3.11): DESELECT / HLTA, so the card stays quiet until it is presented again
        await self.call(c.in_release(tg))

    async def _read(self, target: c.TargetA) -> CardRead | CardNotRead:
        badge = BadgeRead(target.nfcid1.hex().upper())
        if not (target.iso_dep and target.ats):
            return badge
        try:
            return await self._read_payment_card(target.tg)
        except emv.EmvError as exc:
            if exc.step == "SELECT PPSE":
                return badge  # ISO-DEP but no payment application (e.g. a DESFire access badge)
            log.warning("%s: payment card not read: %s", self.path, exc)
            return self._not_read(exc.step)
        except InvalidCardNumber as exc:
            log.warning("%s: payment card not read: %s", self.path, exc)
            return self._not_read("invalid card number")

    def _not_read(self, reason: str) -> CardNotRead:
        self.stats.failed_reads[reason] += 1
        return CardNotRead(reason)

    async def _read_payment_card(self, tg: int) -> PaymentCardRead:
        self._traffic.sensitive = True  # until _take has released the card
        ppse = emv.check("SELECT PPSE", await self._apdu(tg, emv.select(emv.PPSE)))
        aid = emv.ppse_applications(ppse)[0]
        fci = emv.check("SELECT AID", await self._apdu(tg, emv.select(aid)))
        values = self.terminal.values(datetime.date.today(), secrets.token_bytes(4))
        pdol_data = emv.fill_dol(emv.application_pdol(fci), values)
        answer = await self._apdu(tg, emv.get_processing_options(pdol_data))
        options = emv.processing_options(emv.check("GET PROCESSING OPTIONS", answer))
        collector = emv.CardDataCollector()
        collector.add(options.objects)
        for sfi, record in emv.afl_records(options.afl):  # Book 3 §10.2: every record the AFL lists
            answer = await self._apdu(tg, emv.read_record(sfi, record))
            collector.add(emv.check("READ RECORD", answer))
        del answer, options
        pan, expiry = collector.take()
        try:
            token = CardToken.from_pan(pan, self._token_key)
        finally:
            del pan  # the clear number goes no further than this line
        return PaymentCardRead(token, token.last4, expiry, emv.scheme_for(aid))

    async def _apdu(self, tg: int, apdu: emv.Apdu) -> emv.ResponseApdu:
        data = await self.call(c.in_data_exchange(tg, apdu.encode()), timeout=EXCHANGE_TIMEOUT_S)
        try:
            result = c.ExchangeResult.decode(data)
        except c.CommandFormatError as exc:
            raise ProtocolError(f"{self.device} on {self.path}: {exc}") from None
        if result.error in _CARD_GONE:
            raise _CardLeft()
        if result.error:
            raise emv.EmvError("exchange", f"PN532 status 0x{result.error:02X} ({c.Status.describe(result.error)})")
        if result.more:
            raise emv.EmvError("exchange", "answer longer than the PN532 buffer")
        return emv.ResponseApdu.decode(result.data)


def _name(code: int) -> str:
    try:
        return "".join(part.capitalize() for part in c.Code(code).name.split("_"))
    except ValueError:
        return f"command 0x{code:02X}"
