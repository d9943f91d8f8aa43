"""A Modbus RTU slave behind a UART-like object, with injectable line faults.

MicroPython-clean (it runs beside the firmware on MicroPython under Node,
where there is no serial port): ``SlaveUART`` is handed to ``ModbusRTU`` in
place of ``machine.UART``. Each ``write()`` is parsed as a real RTU request
frame (its CRC checked with an independent bitwise CRC-16, unit id honoured,
functions 0x03/0x04 only, the meter's per-request register limit enforced),
and the answer is queued for ``any()``/``readinto()``.

Faults for the next answers: ``slave.faults.append(kind)`` with kind one of
``"noise"`` (junk bytes before the frame), ``"crc"`` (corrupted CRC),
``"truncate"`` (frame cut short), ``"silence"`` (no answer), ``"wrong_unit"``,
``"garbage"`` (random bytes instead of a frame), or an int (answer with that
exception code). ``SlavePin`` records the DE pin level at each transmission.
"""

import struct

_MAX_REGS = 125


def crc16_bitwise(data):
    """CRC-16/MODBUS computed bit by bit (independent of the master's table)."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def _with_crc(body):
    c = crc16_bitwise(body)
    return bytes(body) + bytes((c & 0xFF, c >> 8))


class SlavePin:
    """A DE/RE pin that logs its levels."""

    def __init__(self):
        self.level = 0
        self.log = []

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = 1 if v else 0
        self.log.append(self.level)


class SlaveUART:
    def __init__(self, unit=1, max_regs=_MAX_REGS, de_pin=None, seed=1):
        self.unit = unit
        self.max_regs = max_regs
        self.de = de_pin
        self.input = {}         # register address -> 16-bit value (function 0x04)
        self.holding = {}       # function 0x03
        self.faults = []
        self.requests = []      # (function, address, count) of every valid request seen
        self.bad_requests = 0
        self.de_at_write = []   # DE level at each write (must be 1)
        self.flushed = 0
        self._out = bytearray()
        self._seed = seed

    # -- register map helpers ------------------------------------------------
    def set_float(self, table, addr, value):
        hi, lo = struct.unpack(">HH", struct.pack(">f", value))
        table[addr] = hi
        table[addr + 1] = lo

    def set_u32(self, table, addr, value):
        table[addr] = (value >> 16) & 0xFFFF
        table[addr + 1] = value & 0xFFFF

    def set_string(self, table, addr, text, regs):
        b = text.encode() + b"\x00" * (2 * regs)
        for i in range(regs):
            table[addr + i] = (b[2 * i] << 8) | b[2 * i + 1]

    def _rand(self):
        self._seed = (self._seed * 1103515245 + 12345) & 0x7FFFFFFF
        return self._seed >> 16

    # -- UART API ------------------------------------------------------------
    def write(self, buf):
        self.de_at_write.append(self.de.value() if self.de is not None else None)
        req = bytes(buf)
        self._answer(req)
        return len(req)

    def flush(self):
        self.flushed += 1

    def txdone(self):
        return True

    def any(self):
        return len(self._out)

    def read(self, n=None):
        if not self._out:
            return None
        n = len(self._out) if n is None else min(n, len(self._out))
        d = bytes(self._out[:n])
        self._out = self._out[n:]
        return d

    def readinto(self, buf, n=None):
        d = self.read(len(buf) if n is None else n)
        if not d:
            return None
        for i in range(len(d)):
            buf[i] = d[i]
        return len(d)

    # -- the slave -----------------------------------------------------------
    def _answer(self, req):
        if len(req) != 8 or crc16_bitwise(req) != 0:
            self.bad_requests += 1
            return              # a real slave stays silent on a broken request
        unit, fc, addr, count = struct.unpack(">BBHH", req[:6])
        if unit != self.unit:
            return
        self.requests.append((fc, addr, count))
        fault = self.faults.pop(0) if self.faults else None
        if fault == "silence":
            return
        if fault == "garbage":
            for _ in range(1 + self._rand() % 40):
                self._out.append(self._rand() & 0xFF)
            return
        table = self.input if fc == 4 else self.holding if fc == 3 else None
        if isinstance(fault, int):
            frame = _with_crc(bytes((unit, fc | 0x80, fault)))
        elif table is None:
            frame = _with_crc(bytes((unit, fc | 0x80, 1)))
        elif not 1 <= count <= min(self.max_regs, _MAX_REGS):
            frame = _with_crc(bytes((unit, fc | 0x80, 3)))
        else:
            body = bytearray((unit, fc, 2 * count))
            for a in range(addr, addr + count):
                if a not in table:
                    body = None
                    break
                body.append(table[a] >> 8)
                body.append(table[a] & 0xFF)
            frame = _with_crc(body if body is not None else bytes((unit, fc | 0x80, 2)))
        if fault == "crc":
            frame = frame[:-1] + bytes((frame[-1] ^ 0x5A,))
        elif fault == "truncate":
            frame = frame[:max(1, len(frame) // 2)]
        elif fault == "wrong_unit":
            frame = _with_crc(bytes((unit + 1,)) + frame[1:-2])
        elif fault == "noise":
            frame = bytes((0x00, 0xFF, 0x13)) + frame
        self._out.extend(frame)
