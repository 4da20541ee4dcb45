"""The host side of a serial port for trio: pyserial opens and configures it, trio waits on its fd.

A vanished port (USB unplug, EIO, a pty whose device side went away: "readiness to read but
returned no data") raises :class:`DeviceLost`, so a supervisor can reopen it.
"""
from __future__ import annotations

import errno
import os

import serial
import trio

from drivers.errors import DeviceLost, PortUnavailable
from drivers.traffic import TrafficLog

_LOST_ERRNOS = {errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF, errno.EPIPE}


class SerialPort:
    """One open serial port. Use :meth:`open`; close with :meth:`aclose`."""

    def __init__(self, ser: serial.Serial, *, traffic: TrafficLog | None = None,
                 read_interval_s: float = 0.0) -> None:
        self._ser = ser
        self.read_interval_s = read_interval_s
        self._next_read = 0.0
        self._fd = ser.fileno()
        self.path = ser.port
        self.traffic = traffic if traffic is not None else TrafficLog()
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_rx: float | None = None
        self._closed = False

    @classmethod
    def open(cls, path: str, baudrate: int, *, traffic: TrafficLog | None = None,
             read_interval_s: float = 0.0) -> "SerialPort":
        """Open ``path`` exclusively in raw 8N1 mode, non-blocking.

        ``read_interval_s`` > 0 reads at most that often, letting bytes gather in the kernel in
        between — what a USB-serial adapter's latency timer does (FTDI: 16 ms) — so a device
        streaming 100 small frames a second costs a fraction of the wakeups, at that much latency.
        """
        try:
            ser = serial.Serial(path, baudrate=baudrate, timeout=0, write_timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortUnavailable(f"cannot open serial port {path}: {_reason(exc)}") from None
        os.set_blocking(ser.fileno(), False)
        return cls(ser, traffic=traffic, read_interval_s=read_interval_s)

    @property
    def baudrate(self) -> int:
        return self._ser.baudrate

    def set_baudrate(self, baudrate: int) -> None:
        self._ser.baudrate = baudrate

    def reset_input_buffer(self) -> None:
        try:
            self._ser.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            raise DeviceLost(f"{self.path}: {_reason(exc)}") from None

    async def receive_some(self, max_bytes: int = 4096) -> bytes:
        """Wait for and return at least one byte."""
        if self.read_interval_s:
            await trio.sleep_until(self._next_read)
            # after the pause bytes are usually waiting: read without the readiness round trip
            # (an empty read here means "nothing yet", not "hung up": the port reads 0 bytes
            # when idle, so only an empty read after readiness is a vanished port)
            data = self._read_nowait(max_bytes)
            if data:
                return self._received(data)
        while True:
            if self._closed:
                raise trio.ClosedResourceError(f"{self.path} is closed")
            await trio.lowlevel.wait_readable(self._fd)
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise self._lost(exc) from None
            if not data:
                raise self._lost(None)
            return self._received(data)

    def _read_nowait(self, max_bytes: int) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError(f"{self.path} is closed")
        try:
            return os.read(self._fd, max_bytes)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise self._lost(exc) from None

    def _received(self, data: bytes) -> bytes:
        self.bytes_in += len(data)
        self.last_rx = trio.current_time()
        self._next_read = self.last_rx + self.read_interval_s
        self.traffic.record("rx", data)
        return data

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        self.traffic.record("tx", data)
        while view:
            if self._closed:
                raise trio.ClosedResourceError(f"{self.path} is closed")
            await trio.lowlevel.wait_writable(self._fd)
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise self._lost(exc) from None
            self.bytes_out += n
            view = view[n:]
        await trio.lowlevel.checkpoint()

    def _lost(self, exc: OSError | None) -> DeviceLost:
        if exc is not None and exc.errno not in _LOST_ERRNOS:
            return DeviceLost(f"{self.path}: {_reason(exc)}")
        return DeviceLost(f"{self.path}: port vanished (unplugged or hung up)")

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            try:
                self._ser.close()
            except (serial.SerialException, OSError):
                pass
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> "SerialPort":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:  # pyserial's SerialException(errno, long text) too
        return os.strerror(exc.errno).lower()
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
