"""The device loop on real MicroPython (WebAssembly under Node): the Modbus
driver reads an SDM630 through the fake RTU slave, the software key signs,
the ring buffer commits to the NOR flash model, and a recording MQTT client
stands in for umqtt (MicroPython under Node has no socket). What the device
published is then verified by the gateway's decoder on CPython."""

from __future__ import annotations

import json

import pytest
from device.version import VERSION as FW_VERSION

from gateway.telemetry.decode import decode_message, verify
from gateway.telemetry.format import FLAG_OFFLINE, FLAG_SOFTWARE_KEY

pytestmark = pytest.mark.micropython

SCRIPT = r"""
import json, binascii
from modbus_slave_uart import SlaveUART
from nor_flash import NorFlash
from meter_driver.modbus_rtu import ModbusRTU
from meter_driver.meter import Meter
from secure_sign.software import SoftwareSigner
from storage.ring_buffer import RingBuffer
from device import config
from device.loop import Device

class RecordingMQTT:
    def __init__(self):
        self.up = True
        self.sent = []
        self.inbox = []
        self.cb = None
    def set_callback(self, f): self.cb = f
    def set_last_will(self, t, m, r=False, q=0): self.will = (t, m, r, q)
    def connect(self, clean_session=True):
        if not self.up: raise OSError(113)
    def disconnect(self): pass
    def subscribe(self, t, q=0): pass
    def publish(self, t, m, retain=False, qos=0):
        if not self.up: raise OSError(104)
        self.sent.append((t, bytes(m)))
    def check_msg(self):
        if not self.up: raise OSError(104)
        if self.inbox: self.cb(*self.inbox.pop(0))

slave = SlaveUART(unit=1, max_regs=60)
for a in range(0, 80): slave.input[a] = 0
for a in range(342, 344): slave.input[a] = 0
kwh = [1000.0]
def tick():
    kwh[0] += 0.25
    slave.set_float(slave.input, 72, kwh[0])
    slave.set_float(slave.input, 74, 12.5)
    slave.set_float(slave.input, 52, 830.0)

flash = NorFlash(8)
key = binascii.unhexlify("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721")
dev_id = binascii.unhexlify("0123456789abcdef01")
now = [1780000000]
ticks = [0]

def make():
    cfg = config.merge(config.DEFAULTS, {"grid": "mp", "batch_max": 8, "window": 32})
    meter = Meter(ModbusRTU(slave, None, baudrate=9600, timeout_ms=50), "sdm630", unit=1)
    return Device(cfg, SoftwareSigner(key, dev_id), RingBuffer(flash), meter, mqtt=RecordingMQTT(),
                  clock=lambda: now[0], ticks_ms=lambda: ticks[0])

def ack_all(d):
    # What the gateway would answer: the highest seq it has seen (all contiguous here).
    d.mqtt.inbox.append((d.t_ack, bytes([0x18, d.sent_upto]) if d.sent_upto >= 24 else bytes([d.sent_upto])))
    d.service()

out = {}
d = make()
for _ in range(3):
    now[0] += 60; tick(); d.sample(); d.service(); ack_all(d)
out["online"] = {"acked": d.acked, "pending": len(d.ring.pending(64, 1 << 20)), "messages": len(d.mqtt.sent)}
d.mqtt.up = False
d.service()
for _ in range(10):
    now[0] += 60; tick(); d.sample(); ticks[0] += 1000; d.service()
out["offline"] = {"connected": d.connected, "pending": len(d.ring.pending(64, 1 << 20))}
# Reboot with the backlog in flash, then the network comes back.
d = make()
out["reboot_next_seq"] = d.ring.next_seq
ticks[0] += 120000
d.service()
ack_all(d)
out["drained"] = {"acked": d.acked, "pending": len(d.ring.pending(64, 1 << 20)),
                  "messages": len(d.mqtt.sent), "counters": d.counters}
out["tele"] = [binascii.hexlify(m).decode() for t, m in d.mqtt.sent if t == d.t_tele]
out["state"] = [m.decode() for t, m in d.mqtt.sent if t == d.t_state]
print(json.dumps(out))
"""


def test_device_loop_on_micropython_buffers_through_outage_and_reboot(mp):
    out = mp(SCRIPT, heap=32 * 1024 * 1024).last_json()
    assert out["online"] == {"acked": 3, "pending": 0, "messages": 4}  # state + 3 tele
    assert out["offline"] == {"connected": False, "pending": 10}
    assert out["reboot_next_seq"] == 14
    drained = out["drained"]
    assert drained["acked"] == 13 and drained["pending"] == 0
    # The retained state carries the firmware version (the gateway's contract);
    # from the source tree that is device/version.py's RELEASE + "+src".
    assert [json.loads(m) for m in out["state"]] == [{"state": "online", "fw": FW_VERSION}]
    assert out["state"][0] == '{"state":"online","fw":"%s"}' % FW_VERSION
    # 10 readings after the reboot went out as two CBOR arrays (batch_max 8).
    assert len(out["tele"]) == 2
    from hil.device_sim import public_key_pem  # CPython side: verify what MicroPython signed
    from secure_sign.software import SoftwareSigner

    signer = SoftwareSigner(bytes.fromhex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721"),
                            bytes.fromhex("0123456789abcdef01"))
    pem = public_key_pem(signer.public_key)
    readings = [verify(s, pem) for m in out["tele"] for s in decode_message(bytes.fromhex(m))]
    assert [r.seq for r in readings] == list(range(4, 14))
    assert all(r.flags & FLAG_OFFLINE and r.flags & FLAG_SOFTWARE_KEY for r in readings)
    assert [r.import_wh for r in readings] == [1000000 + 250 * i for i in range(4, 14)]
    assert all(r.export_wh == 12500 and r.power_w == 830 for r in readings)
    assert [r.time for r in readings] == [1780000000 + 60 * i for i in range(4, 14)]
