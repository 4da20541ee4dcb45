"""The debug capture folder: raw lit frames written to disk, only when an operator turns it on.

Off by default (``[debug] capture_dir = ""``): then no palm image ever reaches the disk. When an
operator sets a folder, every lit frame the capturer takes (NIR and surface, as the camera gave
them) is written there as a lossless PNG named ``<UTC time>-<seq>-<channel>.png`` — the time is
the frame's capture time on the node's clock, so the log's decisions can be matched to it. The
folder is made 0700 (and tightened to it if it exists), each file 0600, whatever the umask. At most ``max_files`` are
kept: the oldest go first. Frames are written by one background thread from a small queue; a
frame that finds the queue full is dropped and counted, so the gate never waits for the disk.

These frames are not linked to anyone: deleting a person cannot find them. The folder is a
debugging aid for an operator on site, bounded, and announced with a warning at start.
"""
from __future__ import annotations

import datetime
import logging
import os
import queue
import threading
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("palmnode.gate")

#: frames waiting for the writer thread; more are dropped (the gate does not wait for the disk)
QUEUE = 8


class DebugCaptures:
    """``offer(channel, image, at)`` from the event loop (never blocks); ``close()`` drains and
    stops the writer. ``written`` / ``dropped`` count frames."""

    def __init__(self, folder: str | Path, max_files: int, *, clock_offset: float = 0.0) -> None:
        if max_files < 1:
            raise ValueError(f"max_files must be at least 1, got {max_files}")
        self.folder = Path(folder)
        self.max_files = max_files
        self.clock_offset = clock_offset  # added to a frame's trio time to get the wall clock
        self.written = 0
        self.dropped = 0
        self._seq = 0
        self._queue: queue.Queue[tuple[str, np.ndarray, float] | None] = queue.Queue(QUEUE)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix == ".png")
        self._thread = threading.Thread(target=self._write_all, name="debug-captures", daemon=True)
        self._thread.start()
        log.warning("debug capture folder ON: raw palm images are written to %s (at most %d files); "
                    "turn it off with [debug] capture_dir = \"\"", self.folder, max_files)

    def offer(self, channel: str, image: np.ndarray, at: float) -> None:
        try:
            self._queue.put_nowait((channel, image, at))
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not None:
            channel, image, at = item
            try:
                self._write(channel, image, at)
            except (OSError, cv2.error) as exc:
                self.dropped += 1
                log.warning("debug capture not written: %s", exc)

    def _write(self, channel: str, image: np.ndarray, at: float) -> None:
        self._seq += 1
        stamp = datetime.datetime.fromtimestamp(at + self.clock_offset, datetime.timezone.utc)
        path = self.folder / f"{stamp:%Y%m%dT%H%M%S.%f}-{self._seq:06d}-{channel}.png"
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise OSError(f"could not encode the {channel} frame as PNG")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)   # exactly: a umask may take from the 0600 above
            f.write(png.tobytes())
        self.written += 1
        self._files.append(path)
        while len(self._files) > self.max_files:
            self._files.pop(0).unlink(missing_ok=True)
