"""The device side of a serial port: a pseudo-terminal at a stable path, with faults on command.

Every serial emulator (``drivers/<device>/emulator.py``) subclasses :class:`SerialEmulator`:
it implements :meth:`SerialEmulator.on_receive` with its codec and answers with :meth:`send`;
a device that speaks first (a boot banner, a sensor that streams) does so from
:meth:`SerialEmulator.on_host_attached` or a task that waits with ``wait_host_attached`` and
writes with ``emit``. The base class owns the pty, notices hosts opening, closing and reopening
the port before they write anything (a pty master reports HUP and reads EIO while no host has
the slave open), and injects the faults real hardware shows: unplug/replug at the same path,
garbage on the line, stalls, corrupt checksums and a slow first answer after each open.
"""
from __future__ import annotations

import abc
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import random
import select
import termios
import tty
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)

#: how long a master with no host attached waits for an open before it looks again (HUP cannot
#: be waited away): an inotify watch on the slave wakes it at once; without inotify, a poll
IDLE_POLL_S = 0.02

_IN_OPEN = 0x20


def _inotify() -> Any:
    """libc's inotify functions, or None (not Linux): hosts opening the port are then polled for."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc if hasattr(libc, "inotify_init1") else None
    except OSError:
        return None


_LIBC = _inotify()


class PtyEndpoint:
    """A pty pair whose host end is reachable at ``link`` (a symlink that survives replugs)."""

    def __init__(self, link: Path) -> None:
        self.link = Path(link)
        self.master: int | None = None
        self.tty_name: str | None = None
        self._opens: int | None = None  # an inotify fd watching the slave for opens

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
        self._watch_opens()  # before the link exists: no host can open the port unseen
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.unlink(missing_ok=True)
        os.symlink(self.tty_name, tmp)
        os.replace(tmp, self.link)

    def unplug(self) -> None:
        self.link.unlink(missing_ok=True)
        for fd in (self.master, self._opens):
            if fd is not None:
                trio.lowlevel.notify_closing(fd)
                os.close(fd)
        self.master = self._opens = None

    def _watch_opens(self) -> None:
        if _LIBC is None:
            return
        fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return
        if _LIBC.inotify_add_watch(fd, os.fsencode(self.tty_name), _IN_OPEN) < 0:
            os.close(fd)
            return
        self._opens = fd

    async def wait_open(self) -> None:
        """Return when a host may have opened the port since the last call: at its open (inotify),
        else after :data:`IDLE_POLL_S`, or once unplugged."""
        fd = self._opens
        if fd is None:
            await trio.sleep(IDLE_POLL_S)
            return
        with trio.move_on_after(IDLE_POLL_S * 25):   # a look now and then, whatever inotify says
            try:
                await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:
                return
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(fd, 4096):
                pass

    def host_baudrate(self) -> int | None:
        """The baud rate the host configured on its end (ptys ignore it, but it tells intent)."""
        if self.master is None:
            return None
        speed = termios.tcgetattr(self.master)[5]
        return _SPEEDS.get(speed)


_SPEEDS = {getattr(termios, f"B{b}"): b for b in (
    9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1000000, 1500000, 2000000, 3000000)
    if hasattr(termios, f"B{b}")}


class SerialEmulator(abc.ABC):
    """Base class of the pty device emulators. Run with ``nursery.start(emulator.run)``.

    Two tasks run the port: a watcher that notices a host opening it (a pty master reports HUP
    while no host has the slave open, and HUP cannot be waited away, so while nobody is attached
    an inotify watch on the slave wakes it at the open: a host that writes a command the moment
    it opens the port is answered within a millisecond, as by a UART that always listens) and a
    reader that feeds :meth:`on_receive` and notices the host leaving (its wait wakes on HUP, so
    an attached host costs no polling).
    """

    #: name used in logs and by the virtual gate
    device = "serial"

    def __init__(self, link: Path, *, seed: int | None = None) -> None:
        self.endpoint = PtyEndpoint(link)
        self.rng = random.Random(seed)
        #: a host has the port open (set before :meth:`on_host_attached` runs)
        self.host_attached = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._replugged = trio.Event()
        self._host_changed = trio.Event()
        self._in_session = False  # on_host_attached ran and on_host_detached has not yet
        self._stall_until = 0.0
        self._corrupt_next = 0
        self._slow_first_s = 0.0
        self._first_answer_pending = False

    @property
    def link(self) -> Path:
        return self.endpoint.link

    # ---- to implement -------------------------------------------------------------------
    @abc.abstractmethod
    async def on_receive(self, data: bytes) -> None:
        """Bytes from the host (never called while stalled)."""

    async def on_host_attached(self) -> None:
        """The host opened the port (after start, replug or a close/reopen), before it wrote
        anything. A device that speaks first (boot banner, streaming) starts here or waits with
        :meth:`wait_host_attached`. Runs beside the reader: host bytes may arrive meanwhile."""

    async def on_host_detached(self) -> None:
        """The host closed the port, or the cable was pulled; once per :meth:`on_host_attached`."""

    def corrupt(self, frame: bytes) -> bytes:
        """``frame`` with a broken checksum; by default the last byte is flipped."""
        return frame[:-1] + bytes([frame[-1] ^ 0xFF]) if frame else frame

    # ---- talking to the host --------------------------------------------------------------
    async def send(self, data: bytes, *, corruptible: bool = True) -> None:
        """Answer the host as the device would: the first answer after an open waits out
        :meth:`slow_first_answer`; then as :meth:`emit`."""
        if self._first_answer_pending and self._listening(data):
            self._first_answer_pending = False
            await trio.sleep(self._slow_first_s)
        self.emit(data, corruptible=corruptible)
        await trio.lowlevel.checkpoint()

    def emit(self, data: bytes, *, corruptible: bool = True) -> bool:
        """Put device-initiated ``data`` (a streamed frame, a report) on the line now, without
        waiting. Dropped when nobody listens, unplugged or stalled; :meth:`corrupt_next` applies.
        Returns whether it went out (a host that does not read overruns, as a UART does)."""
        if not self._listening(data):
            return False
        if corruptible and self._corrupt_next > 0:
            self._corrupt_next -= 1
            data = self.corrupt(data)
        self._write(data)
        return True

    async def wait_host_attached(self) -> None:
        """Return once a host has the port open (at once if one has)."""
        while not self.host_attached:
            await self._host_changed.wait()

    def _listening(self, data: bytes) -> bool:
        return bool(data) and self.endpoint.plugged and self.host_attached and not self.stalled

    # ---- running ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.endpoint.plug()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_host)
                nursery.start_soon(self._read_host)
                task_status.started()
        finally:
            self.endpoint.unplug()

    async def _watch_host(self) -> None:
        """Notice a host opening the port: the master's HUP clears when the slave is opened."""
        while True:
            if not self.endpoint.plugged:
                await self.replugged()
            elif self.host_attached:
                await self._host_changed.wait()
            elif self._in_session:
                await self._host_left()  # a write saw the host gone before the reader did
            elif self._host_present():
                self.host_attached = True
                self._in_session = True
                self._first_answer_pending = self._slow_first_s > 0
                self._notify_host_changed()
                await self.on_host_attached()
            else:
                await self.endpoint.wait_open()

    def _host_present(self) -> bool:
        poller = select.poll()
        poller.register(self.endpoint.master, select.POLLIN | select.POLLOUT)
        try:
            events = poller.poll(0)
        except (OSError, ValueError):
            return False
        return not any(flags & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, flags in events)

    async def _read_host(self) -> None:
        """Feed the host's bytes to :meth:`on_receive` while it is attached; notice it leaving."""
        while True:
            if not self.host_attached:
                await self._host_left()
                await self.wait_host_attached()
                continue
            data = await self._read()
            if data is None:
                await self._host_left()
            elif data and not self.stalled:
                self.bytes_in += len(data)
                await self.on_receive(data)

    async def _read(self) -> bytes | None:
        """Some bytes from the host, ``b""`` for nothing yet, ``None`` once the host is gone."""
        master = self.endpoint.master
        if master is None:
            return None
        try:
            await trio.lowlevel.wait_readable(master)
            return os.read(master, 4096)
        except BlockingIOError:
            return b""
        except trio.ClosedResourceError:
            return None  # unplugged while waiting
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EBADF):
                raise
            return None  # the host closed its end (the master reads EIO)

    async def _host_left(self) -> None:
        """The host is gone: end its session once, whoever noticed first."""
        if self.host_attached:
            self.host_attached = False
            self._notify_host_changed()
        if self._in_session:
            self._in_session = False
            await self.on_host_detached()

    def _notify_host_changed(self) -> None:
        self._host_changed.set()
        self._host_changed = trio.Event()

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
            if self.host_attached:  # the reader ends the session (on_host_detached) next
                self.host_attached = False
                self._notify_host_changed()

    # ---- faults -------------------------------------------------------------------------
    @property
    def stalled(self) -> bool:
        return trio.current_time() < self._stall_until

    async def unplug(self, seconds: float) -> None:
        """The cable is pulled: the path disappears, and comes back after ``seconds``."""
        log.info("%s unplugged for %.1fs", self.device, seconds)
        self.endpoint.unplug()
        self._replugged = trio.Event()
        await self._host_left()
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
        """From now on, the first answer (:meth:`send`) after each host open is late by
        ``seconds``; :meth:`emit` (streamed data) is not delayed."""
        self._slow_first_s = seconds
