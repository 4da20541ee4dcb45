"""The device side of a serial port: a pseudo-terminal at a stable path, with faults on command.

Every serial emulator (``drivers/<device>/emulator.py``) subclasses :class:`SerialEmulator`:
it implements :meth:`SerialEmulator.on_receive` with its codec and answers with :meth:`send`.
The base class owns the pty, survives hosts that open, close and reopen the port (a pty master
reads EIO while no host has the slave open), and injects the faults real hardware shows:
unplug/replug at the same path, garbage on the line, stalls, corrupt checksums and a slow
first answer after each open.
"""
from __future__ import annotations

import errno
import logging
import os
import random
import termios
import tty
from pathlib import Path

import trio

log = logging.getLogger(__name__)

#: how often a master with no host attached is polled (it reports HUP, so it cannot be waited on)
IDLE_POLL_S = 0.02


class PtyEndpoint:
    """A pty pair whose host end is reachable at ``link`` (a symlink that survives replugs)."""

    def __init__(self, link: Path) -> None:
        self.link = Path(link)
        self.master: int | None = None
        self.tty_name: str | None = None

    @property
    def plugged(self) -> bool:
        return self.master is not None

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # the host may read before configuring the port: no echo, no line discipline
        self.tty_name = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.unlink(missing_ok=True)
        os.symlink(self.tty_name, tmp)
        os.replace(tmp, self.link)

    def unplug(self) -> None:
        self.link.unlink(missing_ok=True)
        if self.master is not None:
            trio.lowlevel.notify_closing(self.master)
            os.close(self.master)
            self.master = None

    def host_baudrate(self) -> int | None:
        """The baud rate the host configured on its end (ptys ignore it, but it tells intent)."""
        if self.master is None:
            return None
        speed = termios.tcgetattr(self.master)[5]
        return _SPEEDS.get(speed)


_SPEEDS = {getattr(termios, f"B{b}"): b for b in (
    9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1000000, 1500000, 2000000, 3000000)
    if hasattr(termios, f"B{b}")}


class SerialEmulator:
    """Base class of the pty device emulators. Run with ``nursery.start(emulator.run)``."""

    #: name used in logs and by the virtual gate
    device = "serial"

    def __init__(self, link: Path, *, seed: int | None = None) -> None:
        self.endpoint = PtyEndpoint(link)
        self.rng = random.Random(seed)
        self.host_attached = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._replugged = trio.Event()
        self._stall_until = 0.0
        self._corrupt_next = 0
        self._slow_first_s = 0.0
        self._first_answer_pending = False

    @property
    def link(self) -> Path:
        return self.endpoint.link

    # ---- to implement -------------------------------------------------------------------
    async def on_receive(self, data: bytes) -> None:
        """Bytes from the host (never called while stalled)."""
        raise NotImplementedError

    async def on_host_attached(self) -> None:
        """The host opened the port (after start, replug or a close/reopen)."""

    def corrupt(self, frame: bytes) -> bytes:
        """``frame`` with a broken checksum; by default the last byte is flipped."""
        return frame[:-1] + bytes([frame[-1] ^ 0xFF]) if frame else frame

    # ---- running ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.endpoint.plug()
        task_status.started()
        try:
            while True:
                if not self.endpoint.plugged:
                    await self._replugged.wait()
                    continue
                data = await self._read()
                if data and not self.stalled:
                    self.bytes_in += len(data)
                    await self.on_receive(data)
        finally:
            self.endpoint.unplug()

    async def _read(self) -> bytes:
        master = self.endpoint.master
        try:
            await trio.lowlevel.wait_readable(master)
            data = os.read(master, 4096)
        except (trio.ClosedResourceError, BlockingIOError):
            return b""
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EBADF):
                raise
            self.host_attached = False  # no host has the port open
            await trio.sleep(IDLE_POLL_S)
            return b""
        if not self.host_attached:
            self.host_attached = True
            self._first_answer_pending = self._slow_first_s > 0
            await self.on_host_attached()
        return data

    async def send(self, data: bytes, *, corruptible: bool = True) -> None:
        """Put ``data`` on the line as the device would: dropped when nobody listens or stalled."""
        if not data or not self.endpoint.plugged or not self.host_attached or self.stalled:
            await trio.lowlevel.checkpoint()
            return
        if self._first_answer_pending:
            self._first_answer_pending = False
            await trio.sleep(self._slow_first_s)
        if corruptible and self._corrupt_next > 0:
            self._corrupt_next -= 1
            data = self.corrupt(data)
        self._write(data)
        await trio.lowlevel.checkpoint()

    def _write(self, data: bytes) -> None:
        master = self.endpoint.master
        if master is None:
            return
        try:
            self.bytes_out += os.write(master, data)
        except BlockingIOError:
            pass  # the host is not reading: a UART overruns, it never blocks the device
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EBADF):
                raise
            self.host_attached = False

    # ---- faults -------------------------------------------------------------------------
    @property
    def stalled(self) -> bool:
        return trio.current_time() < self._stall_until

    async def unplug(self, seconds: float) -> None:
        """The cable is pulled: the path disappears, and comes back after ``seconds``."""
        log.info("%s unplugged for %.1fs", self.device, seconds)
        self.endpoint.unplug()
        self.host_attached = False
        self._replugged = trio.Event()
        await trio.sleep(seconds)
        self.endpoint.plug()
        self._replugged.set()
        log.info("%s plugged back at %s", self.device, self.link)

    async def replugged(self) -> None:
        """Wait until the port is plugged in."""
        while not self.endpoint.plugged:
            await self._replugged.wait()

    def inject_garbage(self, data: bytes | int = 32) -> None:
        """Random (or the given) bytes on the line, right now."""
        if isinstance(data, int):
            data = bytes(self.rng.getrandbits(8) for _ in range(data))
        if self.endpoint.plugged and self.host_attached:
            self._write(data)

    def stall(self, seconds: float) -> None:
        """The device hangs: it ignores input and sends nothing for ``seconds``."""
        self._stall_until = trio.current_time() + seconds

    def corrupt_next(self, frames: int = 1) -> None:
        """The next ``frames`` frames the device sends carry a wrong checksum."""
        self._corrupt_next += frames

    def slow_first_answer(self, seconds: float) -> None:
        """From now on, the first answer after each host open is late by ``seconds``."""
        self._slow_first_s = seconds
