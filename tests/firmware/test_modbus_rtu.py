"""ModbusRTU master against the RTU slave fake (CPython; the MicroPython run is in
test_modbus_rtu_micropython.py): CRC vectors, framing, every error path and its
counter, bounded retries, DE pin handling, hostile bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from hil.modbus_slave_uart import SlavePin, SlaveUART, crc16_bitwise
from meter_driver.errors import (ModbusCRCError, ModbusError, ModbusExceptionResponse,
                                 ModbusFrameError, ModbusTimeout)
from meter_driver.modbus_rtu import ModbusRTU, build_request, char_time_us, crc16, silence_us


def make(retries=2, timeout_ms=30, **kw):
    pin = SlavePin()
    slave = SlaveUART(unit=1, de_pin=pin, **kw)
    for a in range(0, 20):
        slave.input[a] = 0x1000 + a
        slave.holding[a] = 0x2000 + a
    return slave, ModbusRTU(slave, pin, baudrate=19200, timeout_ms=timeout_ms, retries=retries, gap_ms=5)


# Vectors: the serial-line guide's appendix B example (02 07 -> CRC 0x1241, sent 41 12)
# and well-known frames from the application protocol examples.
@pytest.mark.parametrize("frame,crc", [
    ("0207", 0x1241),
    ("010300000001", 0x0A84),
    ("01030000000A", 0xCDC5),
    ("110300 6B0003".replace(" ", ""), 0x8776),
])
def test_crc16_matches_published_vectors(frame, crc):
    data = bytes.fromhex(frame)
    assert crc16(data) == crc
    assert crc16_bitwise(data) == crc


def test_crc_over_frame_including_its_crc_is_zero():
    buf = build_request(bytearray(8), 0x11, 3, 0x006B, 3)
    assert bytes(buf).hex() == "1103006b00037687"
    assert crc16(buf) == 0


def test_silence_is_three_and_a_half_chars_with_floor_above_19200():
    assert char_time_us(9600) == 1042             # 10 bits at 9600 baud
    assert silence_us(9600) == 3647
    assert silence_us(2400) == 14585
    assert silence_us(2400, parity=0) == 16044    # 11 bits with parity
    assert silence_us(19200) == 1824
    assert silence_us(38400) == 1750 and silence_us(115200) == 1750


def test_reads_holding_and_input_registers():
    slave, m = make()
    assert m.read_input(1, 2, 3) == [0x1002, 0x1003, 0x1004]
    assert m.read_holding(1, 0, 2) == [0x2000, 0x2001]
    assert slave.requests == [(4, 2, 3), (3, 0, 2)]
    assert m.stats["requests"] == 2 and m.stats["ok"] == 2 and m.stats["retries"] == 0


def test_de_pin_high_while_sending_and_low_after_drain():
    slave, m = make()
    m.read_input(1, 0, 1)
    assert slave.de_at_write == [1]
    assert slave.de.log[-2:] == [1, 0] and slave.de.level == 0
    assert slave.flushed == 1


@pytest.mark.parametrize("fault,exc,counter", [
    ("silence", ModbusTimeout, "timeouts"),
    ("crc", ModbusCRCError, "crc_errors"),
    ("truncate", ModbusFrameError, "frame_errors"),
    ("wrong_unit", ModbusFrameError, "frame_errors"),
    ("noise", ModbusCRCError, "crc_errors"),
])
def test_each_fault_recovers_on_retry_and_is_counted(fault, exc, counter):
    slave, m = make(retries=2)
    slave.faults.append(fault)
    assert m.read_input(1, 0, 2) == [0x1000, 0x1001]
    assert m.stats[counter] == 1 and m.stats["retries"] == 1 and m.stats["ok"] == 1


@pytest.mark.parametrize("fault,exc,counter", [
    ("silence", ModbusTimeout, "timeouts"),
    ("crc", ModbusCRCError, "crc_errors"),
    ("truncate", ModbusFrameError, "frame_errors"),
    ("wrong_unit", ModbusFrameError, "frame_errors"),
])
def test_persistent_fault_raises_after_bounded_retries(fault, exc, counter):
    slave, m = make(retries=2)
    slave.faults.extend([fault] * 10)
    with pytest.raises(exc):
        m.read_input(1, 0, 2)
    assert len(slave.requests) == 3                   # 1 + 2 retries, never more
    assert m.stats[counter] == 3 and m.stats["retries"] == 2 and m.stats["ok"] == 0


def test_silent_meter_times_out_in_bounded_time():
    import time
    slave, m = make(retries=1, timeout_ms=40)
    slave.unit = 9                                    # nobody answers unit 1
    t0 = time.monotonic()
    with pytest.raises(ModbusTimeout):
        m.read_input(1, 0, 1)
    assert time.monotonic() - t0 < 0.5
    assert m.stats["timeouts"] == 2


@pytest.mark.parametrize("code,name", [(1, "ILLEGAL FUNCTION"), (2, "ILLEGAL DATA ADDRESS"),
                                       (3, "ILLEGAL DATA VALUE"), (4, "SERVER DEVICE FAILURE"),
                                       (6, "SERVER DEVICE BUSY"),
                                       (0x0B, "GATEWAY TARGET DEVICE FAILED TO RESPOND")])
def test_exception_response_is_specific_and_not_retried(code, name):
    slave, m = make(retries=3)
    slave.faults.append(code)
    with pytest.raises(ModbusExceptionResponse) as e:
        m.read_input(1, 0, 1)
    assert e.value.code == code and e.value.name == name and e.value.function == 4
    assert len(slave.requests) == 1 and m.stats["exceptions"] == 1 and m.stats["retries"] == 0


def test_unmapped_address_gives_illegal_data_address():
    slave, m = make()
    with pytest.raises(ModbusExceptionResponse) as e:
        m.read_input(1, 100, 2)
    assert e.value.code == 2


def test_slave_limit_gives_illegal_data_value():
    slave, m = make(max_regs=4)
    with pytest.raises(ModbusExceptionResponse) as e:
        m.read_input(1, 0, 5)
    assert e.value.code == 3


@pytest.mark.parametrize("args", [(0, 4, 0, 1), (248, 4, 0, 1), (1, 6, 0, 1), (1, 4, 0, 0),
                                  (1, 4, 0, 126), (1, 4, 65535, 2)])
def test_arguments_outside_the_spec_are_refused_before_the_bus(args):
    slave, m = make()
    with pytest.raises(ValueError):
        m.read_raw(*args)
    assert slave.requests == [] and m.stats["requests"] == 0


def test_stale_bytes_from_a_previous_answer_are_discarded():
    slave, m = make()
    slave._out.extend(b"\x01\x04\x02\xde\xad\x00\x00")   # a late answer on the line
    assert m.read_input(1, 0, 1) == [0x1000]


class HostileUART(SlaveUART):
    """Answers every request with the given bytes."""

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self.payload = payload

    def _answer(self, req):
        self._out.extend(self.payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_random_bytes_from_the_slave_never_crash_the_master(payload):
    m = ModbusRTU(HostileUART(payload), None, baudrate=115200, timeout_ms=5, retries=1, gap_ms=1)
    try:
        values = m.read_input(1, 0, 2)
    except ModbusError:
        total = sum(m.stats[k] for k in ("timeouts", "crc_errors", "frame_errors", "exceptions"))
        assert total >= 1
    else:
        # Only a frame with a valid CRC, our unit, our function and byte count passes.
        assert payload[:3] == b"\x01\x04\x04" and crc16(payload[:9]) == 0
        assert values == list(struct.unpack(">HH", payload[3:7]))


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=250))
def test_valid_crc_with_wrong_content_is_a_frame_error_not_data(body):
    c = crc16_bitwise(body)
    frame = body + bytes((c & 0xFF, c >> 8))
    m = ModbusRTU(HostileUART(frame), None, baudrate=115200, timeout_ms=5, retries=0, gap_ms=1)
    try:
        m.read_input(1, 0, 2)
    except ModbusError:
        pass
    else:
        assert body[:3] == b"\x01\x04\x04" and len(body) == 7
