"""Modbus TCP client (MODBUS Messaging on TCP/IP Implementation Guide V1.0b).

``ModbusTCP(host, port=502, timeout_ms=1000, retries=1)`` keeps one
connection open and reopens it after any failure, because a stream that
timed out mid-frame cannot be trusted again. Each request carries a fresh
transaction id in the MBAP header (transaction id, protocol id 0, length,
unit id); the answer must echo the id, protocol and unit or it is rejected.

Same read API and errors as ``ModbusRTU``: ``read_holding``, ``read_input``,
``read_raw(unit, function, address, count)`` (memoryview of the register
bytes, valid until the next call), raising ``ModbusTimeout``,
``ModbusFrameError``, ``ModbusConnectionError`` (retried up to ``retries``
times) or ``ModbusExceptionResponse`` (not retried). Counters in ``stats``.
"""

import socket
import struct

from micropython import const

from meter_driver.pdu import FC_READ_HOLDING, FC_READ_INPUT, MAX_READ_REGS, check_read, registers
from meter_driver.errors import (
    ModbusConnectionError,
    ModbusExceptionResponse,
    ModbusFrameError,
    ModbusTimeout,
    new_stats,
)

_MBAP_LEN = const(7)
_ETIMEDOUT = const(110)


def _is_timeout(e):
    # CPython raises socket.timeout (TimeoutError); MicroPython OSError(ETIMEDOUT).
    return isinstance(e, getattr(socket, "timeout", ())) or (e.args and e.args[0] in (_ETIMEDOUT, "timed out"))


class ModbusTCP:
    def __init__(self, host, port=502, timeout_ms=1000, retries=1):
        self.host = host
        self.port = port
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.stats = new_stats()
        self.stats["reconnects"] = 0
        self._sock = None
        self._tid = 0
        self._tx = bytearray(12)
        self._rx = bytearray(_MBAP_LEN + 2 + 2 * MAX_READ_REGS)
        self._rxv = memoryview(self._rx)

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def _connect(self):
        addr = socket.getaddrinfo(self.host, self.port)[0][-1]
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(self.timeout_ms / 1000)
        try:
            s.connect(addr)
        except OSError as e:
            s.close()
            if _is_timeout(e):
                raise ModbusTimeout("connect %s:%d timed out" % (self.host, self.port))
            raise ModbusConnectionError("connect %s:%d: %s" % (self.host, self.port, e))
        self._sock = s
        self.stats["reconnects"] += 1
        return s

    def read_holding(self, unit, address, count):
        return registers(self.read_raw(unit, FC_READ_HOLDING, address, count), count)

    def read_input(self, unit, address, count):
        return registers(self.read_raw(unit, FC_READ_INPUT, address, count), count)

    def read_raw(self, unit, function, address, count):
        check_read(function, address, count)
        if not 0 <= unit <= 255:
            raise ValueError("unit")
        st = self.stats
        st["requests"] += 1
        attempt = 0
        while True:
            try:
                data = self._exchange(unit, function, address, count)
                st["ok"] += 1
                return data
            except ModbusExceptionResponse:
                st["exceptions"] += 1
                raise
            except ModbusTimeout:
                st["timeouts"] += 1
                self.close()
                if attempt >= self.retries:
                    raise
            except ModbusFrameError:
                st["frame_errors"] += 1
                self.close()
                if attempt >= self.retries:
                    raise
            except ModbusConnectionError:
                st["connect_errors"] += 1
                self.close()
                if attempt >= self.retries:
                    raise
            attempt += 1
            st["retries"] += 1

    def _recv_into(self, s, start, n):
        rx = self._rx
        got = 0
        while got < n:
            try:
                chunk = s.recv(n - got)
            except OSError as e:
                if _is_timeout(e):
                    raise ModbusTimeout("%s:%d: no response in %d ms" % (self.host, self.port, self.timeout_ms))
                raise ModbusConnectionError("recv: %s" % e)
            if not chunk:
                raise ModbusConnectionError("connection closed by %s:%d" % (self.host, self.port))
            rx[start + got:start + got + len(chunk)] = chunk
            got += len(chunk)

    def _exchange(self, unit, function, address, count):
        s = self._sock
        if s is None:
            s = self._connect()
        self._tid = (self._tid + 1) & 0xFFFF
        tid = self._tid
        struct.pack_into(">HHHBBHH", self._tx, 0, tid, 0, 6, unit, function, address, count)
        try:
            s.sendall(self._tx)
        except OSError as e:
            if _is_timeout(e):
                raise ModbusTimeout("send timed out")
            raise ModbusConnectionError("send: %s" % e)
        self._recv_into(s, 0, _MBAP_LEN)
        r_tid, r_pid, length, r_unit = struct.unpack_from(">HHHB", self._rx, 0)
        if r_tid != tid or r_pid != 0:
            raise ModbusFrameError("MBAP transaction %d/protocol %d, expected %d/0" % (r_tid, r_pid, tid))
        if not 3 <= length <= 2 + 2 * MAX_READ_REGS + 1:
            raise ModbusFrameError("MBAP length %d" % length)
        if r_unit != unit:
            raise ModbusFrameError("answer from unit %d, expected %d" % (r_unit, unit))
        self._recv_into(s, _MBAP_LEN, length - 1)
        rx = self._rx
        fc = rx[_MBAP_LEN]
        if fc == function | 0x80:
            raise ModbusExceptionResponse(rx[_MBAP_LEN + 1], function)
        if fc != function:
            raise ModbusFrameError("function 0x%02x, expected 0x%02x" % (fc, function))
        if rx[_MBAP_LEN + 1] != 2 * count or length != 3 + 2 * count:
            raise ModbusFrameError("byte count %d, expected %d" % (rx[_MBAP_LEN + 1], 2 * count))
        return self._rxv[_MBAP_LEN + 2:_MBAP_LEN + 2 + 2 * count]
