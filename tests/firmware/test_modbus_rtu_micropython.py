"""The RTU master and the Eastron reader on real MicroPython (WebAssembly under
Node), against the MicroPython-clean RTU slave in hil/modbus_slave_uart.py."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.micropython

SCENARIOS = r"""
import json, sys
from modbus_slave_uart import SlaveUART, SlavePin
from meter_driver.modbus_rtu import ModbusRTU, crc16, build_request
from meter_driver.errors import ModbusError, ModbusExceptionResponse

def make(retries=2, max_regs=125):
    pin = SlavePin()
    s = SlaveUART(unit=1, max_regs=max_regs, de_pin=pin)
    for a in range(20):
        s.input[a] = 0x1000 + a
    return s, ModbusRTU(s, pin, baudrate=19200, timeout_ms=30, retries=retries, gap_ms=5)

out = {"impl": sys.implementation.name}
out["crcvec"] = [crc16(b"\x02\x07"), crc16(bytes(build_request(bytearray(8), 0x11, 3, 0x6B, 3)))]
s, m = make()
out["values"] = m.read_input(1, 2, 3)
out["de"] = [s.de_at_write, s.de.level]
for fault in ("silence", "crc", "truncate", "wrong_unit", "noise", "garbage"):
    s, m = make(retries=2)
    s.faults.append(fault)
    v = m.read_input(1, 0, 2)
    s2, m2 = make(retries=2)
    s2.faults.extend([fault] * 5)
    try:
        m2.read_input(1, 0, 2)
        err = None
    except ModbusError as e:
        err = type(e).__name__
    out[fault] = [v, m.stats, err, m2.stats, len(s2.requests)]
s, m = make()
s.faults.append(6)
try:
    m.read_input(1, 0, 1)
except ModbusExceptionResponse as e:
    out["exception"] = [e.code, e.name, m.stats["exceptions"], len(s.requests)]
print(json.dumps(out))
"""

EASTRON = r"""
import json
from modbus_slave_uart import SlaveUART
from meter_driver.modbus_rtu import ModbusRTU
from meter_driver.meter import Meter

s = SlaveUART(unit=3, max_regs=60)
for a in range(0, 80):
    s.input[a] = 0
for a in range(342, 344):
    s.input[a] = 0
s.set_float(s.input, 0, 231.4)
s.set_float(s.input, 52, -1234.4)
s.set_float(s.input, 70, 50.02)
s.set_float(s.input, 72, 1234.567)
s.set_float(s.input, 74, 89.25)
s.set_float(s.input, 62, float("nan"))
meter = Meter(ModbusRTU(s, None, baudrate=9600, timeout_ms=50), "sdm630", unit=3)
r1 = meter.read()
s.set_float(s.input, 72, 1200.0)
r2 = meter.read()
print(json.dumps({"r1": r1, "r2": r2, "requests": s.requests, "counters": meter.counters()}))
"""


def test_rtu_master_error_paths_on_micropython(mp):
    out = mp(SCENARIOS).last_json()
    assert out["impl"] == "micropython"
    assert out["crcvec"] == [0x1241, 0]
    assert out["values"] == [0x1002, 0x1003, 0x1004]
    assert out["de"] == [[1], 0]
    counters = {"silence": ("timeouts", "ModbusTimeout"), "crc": ("crc_errors", "ModbusCRCError"),
                "truncate": ("frame_errors", "ModbusFrameError"),
                "wrong_unit": ("frame_errors", "ModbusFrameError"),
                "noise": ("crc_errors", "ModbusCRCError")}
    for fault, (counter, exc) in counters.items():
        v, stats, err, stats2, nreq = out[fault]
        assert v == [0x1000, 0x1001], fault
        assert stats[counter] == 1 and stats["retries"] == 1, (fault, stats)
        assert err == exc and stats2[counter] == 3 and nreq == 3, (fault, stats2)
    v, stats, err, stats2, nreq = out["garbage"]
    assert v == [0x1000, 0x1001] and stats["retries"] == 1 and nreq == 3 and err is not None
    assert out["exception"] == [6, "SERVER DEVICE BUSY", 1, 1]


def test_eastron_reader_splits_decodes_and_flags_backwards_on_micropython(mp):
    out = mp(EASTRON).last_json()
    r1, r2 = out["r1"], out["r2"]
    assert r1["voltage_l1_v"] == 231.4 and r1["frequency_hz"] == 50.02
    assert r1["power_w"] == -1234 and r1["import_wh"] == 1234567 and r1["export_wh"] == 89250
    assert r1["power_factor"] is None                 # NaN = not supported
    assert r1["backwards"] is False
    assert r2["import_wh"] == 1200000 and r2["backwards"] is True
    assert all(c <= 60 for _fc, _a, c in out["requests"])
    assert out["requests"][:3] == [[4, 0, 54], [4, 62, 14], [4, 342, 2]]
    assert out["counters"]["backwards"] == 1 and out["counters"]["reads"] == 2
