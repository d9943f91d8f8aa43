"""Modbus RTU master on a UART with an RS485 direction (DE/RE) pin.

Follows "MODBUS over Serial Line, Specification and Implementation Guide
V1.02" (section numbers below): function codes 0x03 (read holding registers)
and 0x04 (read input registers), CRC-16 with the reflected polynomial 0xA001
(6.2.2), the 3.5-character silent interval before each request (2.5.1.1; fixed
at 1750 us above 19200 baud), a response timeout, and a bounded number of
retries.

``ModbusRTU(uart, de_pin=None, baudrate=9600, bits=8, parity=None, stop=1,
timeout_ms=500, retries=2, gap_ms=None)``: ``uart`` is a ``machine.UART``
already configured for the bus (or any object with ``write``, ``readinto``,
``any`` and optionally ``flush``/``txdone``); the settings passed here only
size the timings. ``de_pin`` is driven high while the request is sent and low
once the UART has drained, so the transceiver is listening when the slave
answers.

``read_holding(unit, address, count)`` / ``read_input(unit, address, count)``
return a list of register values. ``read_raw(unit, function, address, count)``
returns a memoryview of the big-endian register bytes inside the receive
buffer (valid until the next call): the readers decode from it with
``struct.unpack_from`` and allocate nothing else.

Raises (after ``retries`` extra attempts for the first three): ``ModbusTimeout``
(nothing came back), ``ModbusCRCError``, ``ModbusFrameError`` (short frame,
wrong unit, function or byte count), ``ModbusExceptionResponse`` (never
retried: the slave's answer is deliberate). ``ValueError`` for arguments
outside the spec. Every outcome is counted in ``stats``.
"""

import struct
import time

from micropython import const

from meter_driver.pdu import FC_READ_HOLDING, FC_READ_INPUT, MAX_READ_REGS, check_read, registers
from meter_driver.errors import (
    ModbusCRCError,
    ModbusExceptionResponse,
    ModbusFrameError,
    ModbusTimeout,
    new_stats,
)

_RX_SIZE = const(260)           # address + fc + byte count (<=255) + data + CRC
_FAST_BAUD = const(19200)       # above it t3.5 = 1750 us and t1.5 = 750 us (2.5.1.1)


def _make_crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        t.append(c)
    return tuple(t)


_CRC_TABLE = _make_crc_table()


def crc16(data, n=-1):
    """CRC-16/MODBUS of the first ``n`` bytes (all if -1), init 0xFFFF, poly 0xA001.

    Sent low byte first. Over a whole frame including its CRC the result is 0.
    """
    crc = 0xFFFF
    t = _CRC_TABLE
    if n < 0:
        n = len(data)
    for i in range(n):
        crc = (crc >> 8) ^ t[(crc ^ data[i]) & 0xFF]
    return crc


def char_time_us(baudrate, bits=8, parity=None, stop=1):
    """Microseconds per character: start bit + data + parity + stop bits."""
    nbits = 1 + bits + (0 if parity is None else 1) + stop
    return (nbits * 1000000 + baudrate - 1) // baudrate


def silence_us(baudrate, bits=8, parity=None, stop=1):
    """The 3.5-character inter-frame silence (2.5.1.1: 1750 us above 19200 baud)."""
    if baudrate > _FAST_BAUD:
        return 1750
    return (char_time_us(baudrate, bits, parity, stop) * 7 + 1) // 2


def build_request(buf, unit, function, address, count):
    """Write an 8-byte read request ADU into ``buf``: unit, fc, address, count, CRC."""
    struct.pack_into(">BBHH", buf, 0, unit, function, address, count)
    c = crc16(buf, 6)
    buf[6] = c & 0xFF
    buf[7] = c >> 8
    return buf


class ModbusRTU:
    def __init__(self, uart, de_pin=None, baudrate=9600, bits=8, parity=None, stop=1,
                 timeout_ms=500, retries=2, gap_ms=None):
        self.uart = uart
        self.de = de_pin
        self.baudrate = baudrate
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.char_us = char_time_us(baudrate, bits, parity, stop)
        self.silence_us = silence_us(baudrate, bits, parity, stop)
        # A frame is over when the line stays quiet this long after a byte. The
        # spec's t1.5 is too tight for USB adapters and OS schedulers, so the
        # default is generous; a truncated frame still ends well inside the timeout.
        if gap_ms is None:
            gap_ms = max(20, (self.char_us * 8) // 1000)
        self.gap_us = gap_ms * 1000
        self.stats = new_stats()
        self._tx = bytearray(8)
        self._rx = bytearray(_RX_SIZE)
        self._rxv = memoryview(self._rx)
        self._idle_at = time.ticks_us()
        if de_pin is not None:
            de_pin.value(0)

    def read_holding(self, unit, address, count):
        """Function 0x03: a list of ``count`` register values."""
        return registers(self.read_raw(unit, FC_READ_HOLDING, address, count), count)

    def read_input(self, unit, address, count):
        """Function 0x04: a list of ``count`` register values."""
        return registers(self.read_raw(unit, FC_READ_INPUT, address, count), count)

    def read_raw(self, unit, function, address, count):
        """One read transaction with retries; a memoryview of the 2*count data bytes."""
        check_read(function, address, count)
        if not 1 <= unit <= 247:
            raise ValueError("unit")
        build_request(self._tx, unit, function, address, count)
        st = self.stats
        st["requests"] += 1
        attempt = 0
        while True:
            try:
                self._exchange(unit, function, count)
                st["ok"] += 1
                return self._rxv[3:3 + 2 * count]
            except ModbusExceptionResponse:
                st["exceptions"] += 1
                raise
            except ModbusTimeout:
                st["timeouts"] += 1
                if attempt >= self.retries:
                    raise
            except ModbusCRCError:
                st["crc_errors"] += 1
                if attempt >= self.retries:
                    raise
            except ModbusFrameError:
                st["frame_errors"] += 1
                if attempt >= self.retries:
                    raise
            attempt += 1
            st["retries"] += 1

    def _drain(self):
        # Late answers and noise from before this request are not ours.
        uart = self.uart
        rx = self._rx
        while uart.any():
            if not uart.readinto(rx):
                break
            self._idle_at = time.ticks_us()

    def _send(self):
        wait = self.silence_us - time.ticks_diff(time.ticks_us(), self._idle_at)
        if wait > 0:
            time.sleep_us(wait)
        uart = self.uart
        de = self.de
        if de is not None:
            de.value(1)
        uart.write(self._tx)
        # Release the line only after the last stop bit has left the shifter.
        if hasattr(uart, "flush"):
            uart.flush()
        if hasattr(uart, "txdone"):
            t0 = time.ticks_ms()
            while not uart.txdone() and time.ticks_diff(time.ticks_ms(), t0) < 100:
                time.sleep_us(self.char_us)
        if de is not None:
            de.value(0)
        self._idle_at = time.ticks_us()

    def _exchange(self, unit, function, count):
        self._drain()
        self._send()
        uart = self.uart
        rx = self._rx
        rxv = self._rxv
        n = 0
        want = 5                # exception frame size until the header says more
        t0 = time.ticks_ms()
        last = time.ticks_us()  # time of the last byte; read only once one arrived
        poll = self.char_us if self.char_us < 1000 else 1000
        while n < want:
            k = uart.any()
            if k:
                if k > want - n:
                    k = want - n
                got = uart.readinto(rxv[n:n + k], k)
                if got:
                    n += got
                    last = time.ticks_us()
                    if n >= 3 and want == 5 and rx[1] == function:
                        want = 5 + rx[2]
                    continue
            if n == 0:
                if time.ticks_diff(time.ticks_ms(), t0) >= self.timeout_ms:
                    self._idle_at = time.ticks_us()
                    raise ModbusTimeout("unit %d: no response in %d ms" % (unit, self.timeout_ms))
            elif time.ticks_diff(time.ticks_us(), last) >= self.gap_us:
                self._idle_at = time.ticks_us()
                raise ModbusFrameError("unit %d: short frame, %d of %d bytes" % (unit, n, want))
            time.sleep_us(poll)
        self._idle_at = time.ticks_us()
        if crc16(rx, n) != 0:
            raise ModbusCRCError("unit %d: CRC mismatch" % unit)
        if rx[0] != unit:
            raise ModbusFrameError("answer from unit %d, expected %d" % (rx[0], unit))
        if rx[1] == function | 0x80:
            raise ModbusExceptionResponse(rx[2], function)
        if rx[1] != function:
            raise ModbusFrameError("function 0x%02x, expected 0x%02x" % (rx[1], function))
        if rx[2] != 2 * count:
            raise ModbusFrameError("byte count %d, expected %d" % (rx[2], 2 * count))
