"""Independent PN532 host libraries, unchanged, against the card reader emulator.

nfcpy (``tty:<name>:pn532``) and Adafruit CircuitPython PN532 (``PN532_UART``) run in a worker
thread over the emulator's pty while the emulator runs in trio.
"""
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import serial
import trio

from drivers.card_reader import Badge, CardReaderEmulator, EmvCard
from drivers.card_reader.emv import PPSE, VISA_AID

nfc = pytest.importorskip("nfc")
import nfc.clf  # noqa: E402,F811
import nfc.tag  # noqa: E402
import nfc.tag.tt4  # noqa: E402
from adafruit_pn532.uart import PN532_UART  # noqa: E402

BADGE = Badge(bytes.fromhex("04A1B2C3D4E5F6"), sak=0x00)
VISA = EmvCard("4111111111111111", "2812", uid=bytes.fromhex("08112233"))


def _dev_symlink(target: str) -> Path:
    """nfcpy's TTY transport only looks for names directly in /dev; give the pty one there."""
    link = Path("/dev") / f"palmnode-pn532-{uuid.uuid4().hex[:8]}"
    try:
        os.symlink(target, link)
    except OSError as exc:
        pytest.skip(f"cannot create {link} for nfcpy ({exc.strerror})")
    return link


async def test_nfcpy_senses_badge_and_exchanges_with_emv_card(nursery, tmp_path):
    emu = CardReaderEmulator(tmp_path / "pn532", seed=3)
    await nursery.start(emu.run)
    dev = _dev_symlink(emu.endpoint.tty_name)
    emu.place(BADGE)

    def host_side():
        clf = nfc.ContactlessFrontend(f"tty:{dev.name}:pn532")
        try:
            badge = clf.sense(nfc.clf.RemoteTarget("106A"))
            trio.from_thread.run_sync(emu.place, VISA)
            target = clf.sense(nfc.clf.RemoteTarget("106A"))
            tag = nfc.tag.activate(clf, target)
            fci = tag.transceive(b"\x00\xA4\x04\x00" + bytes([len(PPSE)]) + PPSE + b"\x00")
            trio.from_thread.run_sync(emu.remove)
            nothing = clf.sense(nfc.clf.RemoteTarget("106A"))
            return clf.device.chipset_name, badge, target, tag, fci, nothing
        finally:
            clf.close()

    try:
        name, badge, target, tag, fci, nothing = await trio.to_thread.run_sync(host_side)
    finally:
        dev.unlink()
    assert name == "PN532v1.6"
    assert bytes(badge.sdd_res) == BADGE.uid and bytes(badge.sel_res) == b"\x00"
    assert bytes(target.sdd_res) == VISA.uid and target.sel_res[0] & 0x20
    assert isinstance(tag, nfc.tag.tt4.Type4ATag)
    assert fci[-2:] == b"\x90\x00" and PPSE in fci and VISA_AID in fci
    assert nothing is None
    # nfcpy went to 921600 baud after the handshake and back to 115200 before PowerDown
    assert emu.stats.commands["SET_SERIAL_BAUDRATE"] == 2 and emu.baudrate == 115200
    assert emu.stats.commands["DIAGNOSE"] == 1 and emu.stats.commands["IN_COMMUNICATE_THRU"] >= 2
    assert emu.stats.commands["POWER_DOWN"] == 1 and emu.asleep


async def test_adafruit_pn532_uart_reads_firmware_and_uid(nursery, tmp_path):
    emu = CardReaderEmulator(tmp_path / "pn532", seed=4)
    await nursery.start(emu.run)
    emu.place(BADGE)

    def host_side():
        with serial.Serial(str(emu.link), 115200, timeout=0.1) as uart:
            pn532 = PN532_UART(uart)
            version = pn532.firmware_version
            pn532.SAM_configuration()
            uid = pn532.read_passive_target(timeout=0.5)
            again = pn532.read_passive_target(timeout=0.5)
            trio.from_thread.run_sync(emu.place, VISA)
            visa_uid = pn532.read_passive_target(timeout=0.5)
            return version, uid, again, visa_uid

    version, uid, again, visa_uid = await trio.to_thread.run_sync(host_side)
    assert version == (0x32, 1, 6, 7)
    assert bytes(uid) == BADGE.uid and bytes(again) == BADGE.uid
    assert bytes(visa_uid) == VISA.uid


#: pn532pi as a host program uses it, in a process of its own (as a host is never in the device's):
#: three rounds of open, firmware, SAM, UID, close on the port given; one JSON line of what it read
PN532PI_HOST = """
import json, sys
import serial
from pn532pi import Pn532, Pn532Hsu
from pn532pi.nfc.pn532 import PN532_MIFARE_ISO14443A_106KBPS

class Hsu(Pn532Hsu):   # the library opens /dev/serial0 or 1 only: the same class on our port
    def __init__(self, path):
        self._serial = serial.Serial(path, baudrate=115200, timeout=100)
        self._serial.close()
        self.command = 0

rounds = []
for _ in range(3):
    hsu = Hsu(sys.argv[1])
    nfc = Pn532(hsu)
    nfc.begin()
    try:
        version, sam = nfc.getFirmwareVersion(), nfc.SAMConfig()
        found, uid = nfc.readPassiveTargetID(PN532_MIFARE_ISO14443A_106KBPS)
        rounds.append([version, sam, found, bytes(uid).hex()])
    finally:
        hsu._serial.close()
print(json.dumps(rounds))
"""


async def test_pn532pi_hsu_reads_firmware_sam_and_uid_right_after_opening(nursery, tmp_path):
    """pn532pi (a port of Seeed's Arduino PN532 library) waits only 10 ms for the ACK of a command
    it writes the moment it opens the port; a real PN532 on a UART hears bytes at all times. The
    emulator notices the open through inotify (it polled every 20 ms, and this failed 10 times
    in 10); the ACK comes in ~0.6 ms. Each round is a fresh open: its first command is at stake.
    The library runs in a process of its own: in a thread of this one it shared the emulator's
    GIL, and on a busy machine an ACK came after its 10 ms (1 run in ~200, 1 in 5 with both
    cores loaded), which no device and host on two sides of a UART would see."""
    pytest.importorskip("pn532pi")
    emu = CardReaderEmulator(tmp_path / "pn532", seed=5)
    await nursery.start(emu.run)
    emu.place(BADGE)
    done = await trio.run_process([sys.executable, "-c", PN532PI_HOST, str(emu.link)], capture_stdout=True,
                                  stdin=subprocess.DEVNULL)
    rounds = json.loads(done.stdout)
    assert len(rounds) == 3, rounds
    for version, sam, found, uid in rounds:
        assert (version, sam, found, bytes.fromhex(uid)) == (0x32010607, True, True, BADGE.uid)
