"""An RS485 line between two pseudo-terminals, with baud checks, pacing and faults.

A single pty has one named end only, but both the simulated meter (pymodbus,
through pyserial) and the firmware (``machine.UART`` shim, through pyserial)
want a device path. ``PtyLink`` makes two ptys and copies bytes between their
master sides, so ``slave_port`` (for the simulator) and ``device_port`` (for
the firmware) behave like the two ends of one cable.

What a real line does and a bare pty would not:

- *Baud rate*: each side's termios speed is checked on every transfer; when
  they differ the bytes arrive garbled, as a UART at the wrong speed sees
  them. So a master at 9600 cannot talk to an SDM120 left at 2400.
- *Pacing* (``pace=True``): bytes are released at the line's character rate,
  so timeouts and the 3.5-character silence meet realistic transfer times.
- *Addressing*: requests for a unit not in ``link.units`` (when set) are not
  delivered, so an absent slave is silent as on a real bus (pymodbus would
  answer it with an exception).
- *Faults*, slave to device direction: ``link.drop`` (silent meter),
  ``link.corrupt_frames = n`` (flip a bit in the next n answers: CRC errors),
  ``link.noise = b"..."`` (bytes injected before the next answer).
"""

from __future__ import annotations

import logging
import os
import select
import termios
import threading
import time
import tty

log = logging.getLogger(__name__)


def _open_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)           # no echo, no line discipline before pyserial opens it
    return master, slave, os.ttyname(slave)


def _speed(fd: int) -> int:
    try:
        return termios.tcgetattr(fd)[5]
    except termios.error:
        return -1


class PtyLink:
    def __init__(self, *, pace: bool = True) -> None:
        self._m_dev, self._s_dev, self.device_port = _open_pty()
        self._m_sl, self._s_sl, self.slave_port = _open_pty()
        self.pace = pace
        self.drop = False
        self.corrupt_frames = 0
        self.noise = b""
        self.units: set[int] | None = None
        self.bytes = {"to_slave": 0, "to_device": 0, "garbled": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pty-link", daemon=True)
        self._thread.start()

    def _char_s(self) -> float:
        speeds = {termios.B2400: 2400, termios.B4800: 4800, termios.B9600: 9600,
                  termios.B19200: 19200, termios.B38400: 38400, termios.B115200: 115200}
        baud = speeds.get(_speed(self._s_sl), 9600)
        return 10.0 / baud

    def _transfer(self, data: bytes, out_fd: int, to_device: bool) -> None:
        if _speed(self._s_dev) != _speed(self._s_sl):
            self.bytes["garbled"] += len(data)
            data = bytes(((b * 37) ^ 0xA5) & 0xFF for b in data)
        if to_device:
            if self.drop:
                return
            if self.noise:
                data, self.noise = self.noise + data, b""
            if self.corrupt_frames > 0:
                self.corrupt_frames -= 1
                data = data[:-1] + bytes((data[-1] ^ 0x01,))
        self.bytes["to_device" if to_device else "to_slave"] += len(data)
        if not self.pace:
            os.write(out_fd, data)
            return
        ch = self._char_s()
        for i in range(len(data)):
            os.write(out_fd, data[i:i + 1])
            time.sleep(ch)

    def _run(self) -> None:
        fds = [self._m_dev, self._m_sl]
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(fds, [], [], 0.05)
            except (OSError, ValueError):
                return
            for fd in ready:
                try:
                    data = os.read(fd, 1024)
                except OSError:
                    continue
                if not data:
                    continue
                if fd == self._m_dev:
                    if self.units is not None and data[0] not in self.units:
                        continue
                    self._transfer(data, self._m_sl, to_device=False)
                else:
                    # Let the rest of the answer arrive, so faults hit whole frames.
                    time.sleep(0.002)
                    try:
                        while select.select([fd], [], [], 0.002)[0]:
                            data += os.read(fd, 1024)
                    except OSError:
                        pass
                    self._transfer(data, self._m_dev, to_device=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for fd in (self._m_dev, self._s_dev, self._m_sl, self._s_sl):
            try:
                os.close(fd)
            except OSError:
                pass
