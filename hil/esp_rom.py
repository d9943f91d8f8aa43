"""The first steps of an Espressif ROM bootloader in download mode, on a pty.

Just enough of the serial protocol (esptool's docs, "Serial Protocol") for
esptool to connect and identify the chip: SLIP frames, SYNC (answered eight
times, as the ROM does), GET_SECURITY_INFO (chips from the ESP32-S3 on report
their chip id there; the ESP32's ROM does not know the command) and READ_REG
of the chip-detect magic register. Every other command fails with status 1 /
0x05 (invalid message). The real esptool, run against ``port``, then tells a
wrong ``--chip`` from a right one; flashing itself is not emulated.
"""

from __future__ import annotations

import os
import select
import struct
import threading
import tty

SYNC = 0x08
READ_REG = 0x0A
GET_SECURITY_INFO = 0x14
CHIP_DETECT_MAGIC_REG = 0x40001000
ESP32_MAGIC = 0x00F01D83
ESP32S3_CHIP_ID = 9


class EspRom:
    """``EspRom(chip_id=9)`` answers as an ESP32-S3; ``chip_id=None`` as an ESP32."""

    def __init__(self, chip_id: int | None = ESP32S3_CHIP_ID, magic: int = ESP32_MAGIC) -> None:
        self.chip_id = chip_id
        self.magic = magic
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.commands: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="esp-rom", daemon=True)
        self._thread.start()

    def _send(self, op: int, val: int, data: bytes) -> None:
        pkt = struct.pack("<BBHI", 1, op, len(data), val) + data
        os.write(self._master, b"\xc0" + pkt.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0")

    def _handle(self, frame: bytes) -> None:
        if len(frame) < 8 or frame[0] != 0:
            return
        op = frame[1]
        self.commands.append(op)
        ok, fail = b"\x00\x00\x00\x00", b"\x01\x05\x00\x00"
        if op == SYNC:
            for _ in range(8):
                self._send(op, 0x20120707, ok)
        elif op == GET_SECURITY_INFO and self.chip_id is not None:
            self._send(op, 0, struct.pack("<IBBBBBBBBII", 0, 0, 0, 0, 0, 0, 0, 0, 0, self.chip_id, 0) + ok)
        elif op == READ_REG and struct.unpack("<I", frame[8:12])[0] == CHIP_DETECT_MAGIC_REG:
            self._send(op, self.magic, ok)
        else:
            self._send(op, 0, fail)

    def _serve(self) -> None:
        buf = bytearray()
        frame: bytearray | None = None
        while not self._stop.is_set():
            r, _, _ = select.select([self._master], [], [], 0.1)
            if not r:
                continue
            try:
                buf += os.read(self._master, 4096)
            except OSError:
                return
            i = 0
            while i < len(buf):
                b = buf[i]
                i += 1
                if b == 0xC0:
                    if frame:
                        self._handle(bytes(frame).replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))
                    frame = bytearray()
                elif frame is not None:
                    frame.append(b)
            del buf[:i]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self._master)
        os.close(self._slave)

    def __enter__(self) -> EspRom:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
