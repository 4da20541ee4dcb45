"""ISO/IEC 14443 pieces the emulator needs on both sides of the air: CRC_A and ISO-DEP blocks.

:class:`IsoDepTarget` is the card's half-duplex block protocol (ISO/IEC 14443-4 §7): it unwraps
I-blocks for the application, answers R- and S-blocks, chains long answers, and toggles its
block number by the PICC rules (§7.5.4.3). :class:`IsoDepInitiator` is the PN532 firmware's
half, used when the chip handles ISO-DEP itself (InDataExchange after an automatic RATS).
"""
from __future__ import annotations

from collections.abc import Callable

# ISO/IEC 14443-4 §7.1.1.1 PCB coding
PCB_I = 0x02  # I-block: b8-b7 = 00, b2 = 1
PCB_R = 0xA2  # R-block: b8-b6 = 101, b2 = 1
PCB_CHAINING = 0x10  # I-block b5
PCB_CID = 0x08  # b4: CID follows
PCB_NAD = 0x04  # b3 (I-blocks): NAD follows
PCB_NAK = 0x10  # R-block b5: 1 = NAK
PCB_BLOCK_NUMBER = 0x01
S_DESELECT = 0xC2  # §7.1.1.1: S(DESELECT), b6-b5 = 00
S_WTX = 0xF2  # S(WTX), b6-b5 = 11
RATS = 0xE0  # §5.1: RATS start byte; the parameter byte carries FSDI (b8-b5) and CID (b4-b1)
FSD_TABLE = (16, 24, 32, 40, 48, 64, 96, 128, 256)  # §5.1 table 1 (FSDI → FSD), also FSCI → FSC


def crc_a(data: bytes) -> bytes:
    """ISO/IEC 14443-3 Annex B CRC_A (initial 0x6363), least significant byte first."""
    crc = 0x6363
    for byte in data:
        byte ^= crc & 0xFF
        byte = (byte ^ (byte << 4)) & 0xFF
        crc = (crc >> 8) ^ (byte << 8) ^ (byte << 3) ^ (byte >> 4)
    return bytes([crc & 0xFF, crc >> 8])


def is_i_block(pcb: int) -> bool:
    return pcb & 0xE2 == PCB_I


def is_r_block(pcb: int) -> bool:
    return pcb & 0xE6 == PCB_R


class IsoDepTarget:
    """The card side of ISO-DEP. ``app`` maps a command APDU to a response APDU."""

    def __init__(self, app: Callable[[bytes], bytes], *, fsd: int = 256) -> None:
        self.app = app
        self.fsd = fsd
        self.block_number = 1  # Rule C: the PICC block number starts at 1
        self.deselected = False
        self._rx_chain = bytearray()
        self._tx_pending = b""
        self._last: bytes | None = None

    def receive(self, frame: bytes) -> bytes | None:
        """One block from the reader (no CRC); the block to answer, or ``None`` for silence."""
        if not frame:
            return None
        pcb, pos = frame[0], 1
        cid = b""
        if pcb & PCB_CID:
            if len(frame) < 2:
                return None
            cid, pos = frame[1:2], 2
        if is_i_block(pcb):
            if pcb & PCB_NAD:
                pos += 1
            self.block_number ^= 1  # Rule D
            self._rx_chain += frame[pos:]
            if pcb & PCB_CHAINING:
                return self._send(PCB_R | self.block_number, cid, b"")
            command, self._rx_chain = bytes(self._rx_chain), bytearray()
            self._tx_pending = self.app(command)
            return self._next_chunk(cid)
        if is_r_block(pcb):
            if pcb & PCB_BLOCK_NUMBER == self.block_number:
                return self._last  # Rule 11 / 12: retransmit the last block
            if pcb & PCB_NAK:
                return self._send(PCB_R | self.block_number, cid, b"")  # Rule 12: answer R(ACK)
            self.block_number ^= 1  # Rule E: R(ACK) with the other number continues a chain
            return self._next_chunk(cid) if self._tx_pending else self._last
        if pcb & 0xF7 == S_DESELECT:
            self.deselected = True
            return self._send(S_DESELECT, cid, b"")
        return None

    def _next_chunk(self, cid: bytes) -> bytes:
        room = self.fsd - 3 - len(cid)  # PCB + CRC_A (+ CID)
        chunk, self._tx_pending = self._tx_pending[:room], self._tx_pending[room:]
        pcb = PCB_I | self.block_number | (PCB_CHAINING if self._tx_pending else 0)
        return self._send(pcb, cid, chunk)

    def _send(self, pcb: int, cid: bytes, inf: bytes) -> bytes:
        block = bytes([pcb | (PCB_CID if cid else 0)]) + cid + inf
        self._last = block
        return block


class IsoDepInitiator:
    """The PN532 firmware's side of ISO-DEP, over a ``transceive(block) -> block | None`` link."""

    def __init__(self, transceive: Callable[[bytes], bytes | None], *, fsc: int = 256) -> None:
        self.transceive = transceive
        self.fsc = fsc
        self.block_number = 0  # Rule A: the PCD block number starts at 0

    def exchange(self, apdu: bytes) -> bytes | None:
        """Send ``apdu`` (chained if longer than FSC) and collect the answer; ``None`` if silent."""
        room = self.fsc - 3
        chunks = [apdu[i:i + room] for i in range(0, len(apdu), room)] or [b""]
        answer = None
        for i, chunk in enumerate(chunks):
            more = i < len(chunks) - 1
            answer = self.transceive(bytes([PCB_I | self.block_number | (PCB_CHAINING if more else 0)]) + chunk)
            if answer is None:
                return None
            if answer[0] & PCB_BLOCK_NUMBER == self.block_number:
                self.block_number ^= 1  # Rule B
        response = bytearray()
        while answer is not None and is_i_block(answer[0]):
            response += answer[1:]
            if not answer[0] & PCB_CHAINING:
                return bytes(response)
            answer = self.transceive(bytes([PCB_R | self.block_number]))
            if answer is not None and answer[0] & PCB_BLOCK_NUMBER == self.block_number:
                self.block_number ^= 1
        return None

    def deselect(self) -> bool:
        answer = self.transceive(bytes([S_DESELECT]))
        return answer is not None and answer[0] & 0xF7 == S_DESELECT
