"""The PN532 register space seen through ReadRegister / WriteRegister (UM0701 §7.2.4-5, §8).

The Contactless Interface Unit (CIU, a PN512 core) is mapped at 0x6301-0x633F: PN512 page 0
registers 0x01-0x0F at 0x6331-0x633F, page 1 at 0x6301-0x630F, page 2 at 0x6311-0x631F and page 3
at 0x6321-0x632F. Reset values and read-only bits follow the PN512 data sheet (§9 register
overview). Other addresses (SFRs 0xFFxx, XRAM) read back what was written, 0x00 before that.
"""
from __future__ import annotations

CIU_MODE = 0x6301
CIU_TX_MODE = 0x6302
CIU_RX_MODE = 0x6303
CIU_TX_CONTROL = 0x6304
CIU_TX_AUTO = 0x6305
CIU_COMMAND = 0x6331
CIU_COMM_IRQ = 0x6334
CIU_STATUS1 = 0x6337
CIU_STATUS2 = 0x6338
CIU_FIFO_DATA = 0x6339
CIU_FIFO_LEVEL = 0x633A
CIU_VERSION = 0x6327

CRC_ENABLE = 0x80  # CIU_TxMode / CIU_RxMode bit 7: TxCRCEn / RxCRCEn
TX_RF_ENABLE = 0x03  # CIU_TxControl bits 1-0: Tx2RFEn, Tx1RFEn (the field is on)
FIFO_FLUSH = 0x80  # CIU_FIFOLevel bit 7 FlushBuffer (write only)
FIFO_SIZE = 64  # PN512 §8.3: 64-byte FIFO
REQA = 0x26  # ISO/IEC 14443-3 §6.4.1: the short frame the firmware leaves in the FIFO when polling

#: address → (reset value, writable bit mask); PN512 data sheet §9.2
CIU_REGISTERS: dict[int, tuple[int, int]] = {
    # page 0: command and status
    0x6331: (0x20, 0x3F),  # Command (RcvOff, PowerDown, command bits)
    0x6332: (0x80, 0xFF),  # CommIEn
    0x6333: (0x00, 0x9F),  # DivIEn
    0x6334: (0x14, 0x7F),  # CommIRq (bit 7 Set1 is write-only)
    0x6335: (0x00, 0x1F),  # DivIRq
    0x6336: (0x00, 0x00),  # Error: read only
    0x6337: (0x21, 0x00),  # Status1: read only
    0x6338: (0x00, 0x4C),  # Status2 (TempSensOff, I2CForceHS, MFCrypto1On)
    0x633A: (0x00, 0x00),  # FIFOLevel: level read only, FlushBuffer handled apart
    0x633B: (0x08, 0x3F),  # WaterLevel
    0x633C: (0x10, 0x40),  # Control (TStopNow/TStartNow are write-strobes; Initiator bit)
    0x633D: (0x00, 0x77),  # BitFraming (StartSend is a strobe)
    0x633E: (0xA0, 0x80),  # Coll (ValuesAfterColl writable, collision info read only)
    # page 1: communication
    0x6301: (0x3B, 0xFF),  # Mode
    0x6302: (0x00, 0xFF),  # TxMode
    0x6303: (0x00, 0xFF),  # RxMode
    0x6304: (0x80, 0xFF),  # TxControl
    0x6305: (0x00, 0xFF),  # TxAuto
    0x6306: (0x10, 0xFF),  # TxSel
    0x6307: (0x84, 0xFF),  # RxSel
    0x6308: (0x84, 0xFF),  # RxThreshold
    0x6309: (0x4D, 0xFF),  # Demod
    0x630A: (0x00, 0xFF),  # FelNFC1
    0x630B: (0x00, 0xFF),  # FelNFC2
    0x630C: (0x62, 0xFF),  # MifNFC
    0x630D: (0x00, 0xFF),  # ManualRCV
    0x630E: (0x00, 0xFF),  # TypeB
    0x630F: (0xEB, 0xFF),  # SerialSpeed
    # page 2: configuration
    0x6311: (0xFF, 0x00),  # CRCResult MSB: read only
    0x6312: (0xFF, 0x00),  # CRCResult LSB: read only
    0x6313: (0x88, 0xFF),  # GsNOff
    0x6314: (0x26, 0xFF),  # ModWidth
    0x6315: (0x87, 0xFF),  # TxBitPhase
    0x6316: (0x48, 0x7F),  # RFCfg
    0x6317: (0x88, 0xFF),  # GsNOn
    0x6318: (0x20, 0x3F),  # CWGsP
    0x6319: (0x20, 0x3F),  # ModGsP
    0x631A: (0x00, 0xFF),  # TMode
    0x631B: (0x00, 0xFF),  # TPrescaler
    0x631C: (0x00, 0xFF),  # TReloadHi
    0x631D: (0x00, 0xFF),  # TReloadLo
    0x631E: (0x00, 0x00),  # TCounterValHi: read only
    0x631F: (0x00, 0x00),  # TCounterValLo: read only
    # page 3: test
    0x6321: (0x00, 0xFF),  # TestSel1
    0x6322: (0x00, 0xFF),  # TestSel2
    0x6323: (0x80, 0xFF),  # TestPinEn
    0x6324: (0x00, 0xFF),  # TestPinValue
    0x6325: (0x00, 0x00),  # TestBus: read only
    0x6326: (0x40, 0xFF),  # AutoTest
    0x6327: (0x80, 0x00),  # Version: read only
    0x6328: (0x00, 0xFF),  # AnalogTest
    0x6329: (0x00, 0xFF),  # TestDAC1
    0x632A: (0x00, 0xFF),  # TestDAC2
    0x632B: (0x00, 0x00),  # TestADC: read only
}

#: RFConfiguration item 0x0A (§7.3.1) writes these CIU registers, in this order
ANALOG_106A_REGISTERS = (0x6316, 0x6317, 0x6318, 0x6319, 0x6309, 0x6308, 0x6309, 0x6313, 0x6314, 0x630C, 0x6315)


class RegisterFile:
    """Register values with PN512 reset values, read-only bits, and the 64-byte CIU FIFO."""

    def __init__(self) -> None:
        self._values = {addr: reset for addr, (reset, _) in CIU_REGISTERS.items()}
        self._memory: dict[int, int] = {}
        self.fifo: list[int] = []
        self.fifo_last = 0x00  # what FIFOData reads when empty: the FIFO RAM's stale byte

    def read(self, addr: int) -> int:
        if addr == CIU_FIFO_DATA:
            if self.fifo:
                return self.fifo.pop(0)
            return self.fifo_last
        if addr == CIU_FIFO_LEVEL:
            return len(self.fifo)
        if addr in self._values:
            return self._values[addr]
        return self._memory.get(addr, 0x00)

    def write(self, addr: int, value: int) -> None:
        value &= 0xFF
        if addr == CIU_FIFO_DATA:
            if len(self.fifo) < FIFO_SIZE:
                self.fifo.append(value)
            self.fifo_last = value
            return
        if addr == CIU_FIFO_LEVEL:
            if value & FIFO_FLUSH:
                self.fifo.clear()
            return
        if addr in CIU_REGISTERS:
            mask = CIU_REGISTERS[addr][1]
            self._values[addr] = (self._values[addr] & ~mask) | (value & mask)
            return
        self._memory[addr] = value

    def set(self, addr: int, value: int) -> None:
        """Firmware-side write: ignores the host's read-only masks."""
        self._values[addr] = value & 0xFF

    def left_in_fifo(self, data: bytes) -> None:
        """What the firmware last pushed through the FIFO (the FIFO ends up empty)."""
        self.fifo.clear()
        if data:
            self.fifo_last = data[-1]
