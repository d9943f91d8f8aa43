"""ModbusTCP client: MBAP framing against pymodbus's TCP server, and every error
path against raw sockets that misbehave on purpose."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings, strategies as st

from hil.modbus_rig import start_sunspec_tcp
from hil.physics import Household, ManualClock
from meter_driver.errors import (ModbusConnectionError, ModbusError, ModbusExceptionResponse,
                                 ModbusFrameError, ModbusTimeout)
from meter_driver.modbus_tcp import ModbusTCP


@pytest.fixture(scope="module")
def sunspec_server() -> Iterator[tuple[str, int]]:
    addr, stop, _sim = start_sunspec_tcp(Household("h", seed=1), clock=ManualClock(1.75e9))
    yield addr
    stop()


def test_reads_holding_registers_with_fresh_transaction_ids(sunspec_server):
    host, port = sunspec_server
    c = ModbusTCP(host, port, timeout_ms=1000)
    assert c.read_holding(1, 40000, 2) == [0x5375, 0x6E53]
    assert c.read_input(1, 40002, 2) == [1, 66]          # SunSpec devices answer both functions
    assert c._tid == 2 and c.stats["ok"] == 2 and c.stats["reconnects"] == 1
    c.close()


def test_exception_response_is_specific_and_not_retried(sunspec_server):
    host, port = sunspec_server
    c = ModbusTCP(host, port, retries=3)
    with pytest.raises(ModbusExceptionResponse) as e:
        c.read_holding(1, 100, 2)
    assert e.value.code == 2 and e.value.name == "ILLEGAL DATA ADDRESS"
    assert c.stats["exceptions"] == 1 and c.stats["retries"] == 0
    c.close()


def test_connection_refused_is_a_connection_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = ModbusTCP("127.0.0.1", port, timeout_ms=200, retries=1)
    with pytest.raises(ModbusConnectionError):
        c.read_holding(1, 0, 1)
    assert c.stats["connect_errors"] == 2 and c.stats["retries"] == 1


class RawServer:
    """Accepts connections and answers each request with ``respond(request) -> bytes | None``."""

    def __init__(self, respond: Callable[[bytes], bytes | None]) -> None:
        self.respond = respond
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    req = conn.recv(12)
                except OSError:
                    return
                if not req:
                    return
                out = self.respond(req)
                if out == b"CLOSE":
                    return
                if out:
                    conn.sendall(out)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def answer(req: bytes, tid_delta: int = 0, pid: int = 0, unit_delta: int = 0) -> bytes:
    tid, _pid, _len, unit, fc, _addr, count = struct.unpack(">HHHBBHH", req)
    pdu = bytes((fc, 2 * count)) + bytes(2 * count)
    return struct.pack(">HHHB", (tid + tid_delta) & 0xFFFF, pid, len(pdu) + 1, unit + unit_delta) + pdu


@pytest.mark.parametrize("respond,exc,counter", [
    (lambda req: None, ModbusTimeout, "timeouts"),
    (lambda req: answer(req, tid_delta=1), ModbusFrameError, "frame_errors"),
    (lambda req: answer(req, pid=1), ModbusFrameError, "frame_errors"),
    (lambda req: answer(req, unit_delta=1), ModbusFrameError, "frame_errors"),
    (lambda req: answer(req)[:9], ModbusTimeout, "timeouts"),          # short frame, then silence
    (lambda req: b"CLOSE", ModbusConnectionError, "connect_errors"),
])
def test_misbehaving_servers_give_specific_errors_bounded_retries_and_reconnects(respond, exc, counter):
    srv = RawServer(respond)
    try:
        c = ModbusTCP("127.0.0.1", srv.port, timeout_ms=100, retries=2)
        t0 = time.monotonic()
        with pytest.raises(exc):
            c.read_holding(1, 0, 2)
        assert time.monotonic() - t0 < 2
        assert c.stats[counter] == 3 and c.stats["retries"] == 2
        assert c.stats["reconnects"] == 3 and srv.connections == 3    # a fresh stream per attempt
    finally:
        srv.close()


def test_recovers_after_a_bad_answer_by_reconnecting():
    calls = []

    def respond(req: bytes) -> bytes:
        calls.append(req)
        return answer(req, tid_delta=1 if len(calls) == 1 else 0)

    srv = RawServer(respond)
    try:
        c = ModbusTCP("127.0.0.1", srv.port, timeout_ms=200, retries=1)
        assert c.read_holding(1, 0, 2) == [0, 0]
        assert c.stats["frame_errors"] == 1 and c.stats["ok"] == 1 and srv.connections == 2
    finally:
        srv.close()


_payload = {"data": b""}
_hostile = None


def _hostile_server() -> RawServer:
    global _hostile
    if _hostile is None:
        _hostile = RawServer(lambda req: _payload["data"] or None)
    return _hostile


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_random_bytes_from_the_server_never_crash_the_client(data):
    srv = _hostile_server()
    _payload["data"] = data
    c = ModbusTCP("127.0.0.1", srv.port, timeout_ms=30, retries=0)
    try:
        c.read_holding(1, 0, 2)
    except ModbusError:
        pass
    else:
        assert data[2:4] == b"\x00\x00" and data[6:9] == b"\x01\x03\x04"
    finally:
        c.close()
