"""An ESP32 as mpremote sees it, on a pseudo-terminal: MicroPython's REPL and raw
REPL (Ctrl-A, code, Ctrl-D -> "OK", output, 0x04, traceback, 0x04, ">"; Ctrl-D
alone soft-reboots; Ctrl-B back to the friendly REPL) answered by MicroPython
under Node (``hil.mp_session``), with an ATECC608 emulator on I2C 0.

The real mpremote, and so ``metanoia device flash|provision|configure``, run
against ``board.port`` exactly as against a USB serial port. What differs from a
real board: ``machine.reset()`` reboots Python (modules and globals go, the file
system and the chip stay) but never runs ``main.py`` (the device loop needs a
network this board does not have). Raw-paste mode (Ctrl-E "A" Ctrl-A) is
answered as MicroPython 1.14+ answers it: "R\x01", the window size, a Ctrl-A
for each window of code consumed, Ctrl-D to acknowledge the end; mpremote then
writes code without the plain raw REPL's 10 ms pause per 256 bytes.
"""

from __future__ import annotations

import os
import re
import select
import struct
import threading
import tty
from pathlib import Path

from hil.micropython_node import HIL
from hil.mp_session import NodeSession

BOARD_LIB = HIL / "emulated_board"
BANNER = b"MicroPython v1.27.0 on emulated board; ESP32 module with ESP32\r\nType \"help()\" for more information.\r\n>>> "
RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
PASTE_WINDOW = 256     # bytes of code the host may send before it waits for a Ctrl-A (MicroPython's stdin buffer)
# A soft reboot forgets Python state; the hardware (machine, esp32 and the models
# behind them: chip, meter, flash) stays.
REBOOT = """import sys
for _m in list(sys.modules):
    if _m not in ("machine", "esp32", "atecc608_emulator", "modbus_slave_uart", "nor_flash", "micropython"):
        del sys.modules[_m]
for _k in [k for k in globals() if k[:2] != "__"]:
    del globals()[_k]
"""


# MicroPython under Node raises Emscripten's errno numbers; an ESP32 raises newlib's and
# prints their names. Error text is translated so mpremote reads it as from a board.
ESP32_ERRNO = {44: (2, "ENOENT"), 20: (17, "EEXIST"), 54: (20, "ENOTDIR"), 31: (21, "EISDIR"),
               28: (22, "EINVAL"), 55: (39, "ENOTEMPTY"), 51: (28, "ENOSPC")}


def esp32_errors(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        n, name = ESP32_ERRNO.get(int(m.group(1)), (int(m.group(1)), ""))
        return f"OSError: [Errno {n}] {name}" if name else m.group(0)

    return re.sub(r"OSError: (\d+)$", sub, text, flags=re.M)


class RawReplBoard:
    """``RawReplBoard(fs=None, seed=b"...")``: a board on ``.port``; ``.session`` peeks inside."""

    def __init__(self, fs: Path | None = None, *, seed: bytes = b"emulated-board") -> None:
        self.session = NodeSession(fs, lib=BOARD_LIB)
        self.session.exec(f"import machine\nmachine.SEED = {seed!r}\n")
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.execs = 0
        self.resets = 0
        self._raw = False
        self._paste: int | None = None     # raw-paste mode: bytes of code received so far
        self._buf = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="raw-repl-board", daemon=True)
        self._thread.start()

    def _out(self, data: bytes) -> None:
        os.write(self._master, data)

    def _reboot(self, hard: bool) -> None:
        _out, err = self.session.exec_raw(REBOOT)
        if err:
            raise RuntimeError(f"the emulated board could not reboot: {err}")
        self.resets += hard

    def _run(self, code: str) -> None:
        self.execs += 1
        out, err = self.session.exec_raw(code)
        err = esp32_errors(err)
        if "ResetRequested" in err:  # machine.reset(): the port drops, the board boots to its REPL
            self._reboot(hard=True)
            self._raw = False
            self._out(b"\x04\x04>" + b"\r\n" + BANNER)
            return
        crlf = out.replace("\n", "\r\n") + ("\r\n" if out else "")
        self._out(crlf.encode() + b"\x04" + err.strip().replace("\n", "\r\n").encode()
                  + (b"\r\n" if err.strip() else b"") + b"\x04>")

    def _byte(self, b: int) -> None:
        if not self._raw:
            if b == 0x01:                       # Ctrl-A: raw REPL
                self._raw = True
                self._buf.clear()
                self._out(b"\r\n" + RAW_PROMPT)
            elif b == 0x03:                     # Ctrl-C: interrupt, prompt again
                self._out(b"\r\n>>> ")
            elif b == 0x04:                     # Ctrl-D: soft reboot
                self._reboot(hard=False)
                self._out(b"MPY: soft reboot\r\n" + BANNER)
            return
        if self._paste is not None:             # raw-paste mode: code until Ctrl-D, a Ctrl-A per window
            if b == 0x04:
                self._paste = None
                code = self._buf.decode("utf-8", "replace")
                self._buf.clear()
                self._out(b"\x04")
                self._run(code)
                return
            self._buf.append(b)
            self._paste += 1
            if self._paste % PASTE_WINDOW == 0:
                self._out(b"\x01")
            return
        if b == 0x02:                           # Ctrl-B: friendly REPL
            self._raw = False
            self._out(b"\r\n" + BANNER)
        elif b == 0x03:
            self._buf.clear()
        elif b == 0x05 and not self._buf:       # raw-paste request: "A", Ctrl-A follow
            self._pending_paste = True
        elif b == 0x04:
            self._pending_paste = False
            if not self._buf:                   # Ctrl-D on an empty line: soft reboot
                self._reboot(hard=False)
                self._out(b"OK\r\nMPY: soft reboot\r\n" + RAW_PROMPT)
                return
            code = self._buf.decode("utf-8", "replace")
            self._buf.clear()
            self._out(b"OK")
            self._run(code)
        else:
            self._buf.append(b)
            if getattr(self, "_pending_paste", False) and self._buf == b"A\x01":
                self._buf.clear()
                self._pending_paste = False
                self._paste = 0
                self._out(b"R\x01" + struct.pack("<H", PASTE_WINDOW))

    def _serve(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self._master], [], [], 0.1)
            if not r:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            for b in data:
                self._byte(b)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        os.close(self._master)
        os.close(self._slave)
        self.session.close()

    def __enter__(self) -> RawReplBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
