"""MicroPython side of ``metanoia bench firmware`` (runs under Node, see bench/firmware.py).

MicroPython-clean. Builds the production read-sign-buffer path from real firmware
modules over the rig's hardware models:

- grid: ``Meter(ModbusRTU(<fake RTU slave UART>), "sdm630")``, the whole SDM630
  profile (three requests, split at the meter's 60-register limit);
- PV: ``Meter(ModbusRTU(<second fake RTU slave UART>), "sunspec")``, a SunSpec
  inverter image (models 1 + 103) served over Modbus RTU, when the caller passes one;
- signer: ``ATECC608Signer(ATECC608(<ATECC608 emulator on the I2C interface>))``;
- ring: ``RingBuffer(<NOR flash model>)``;

and measures ``Device.sample()`` with gc disabled, by ``gc.mem_alloc()`` deltas.
What the hardware models allocate (slave UARTs, NOR model, recording MQTT client:
counted by the ``Metered*`` proxies below; ATECC608 emulator: its own
``alloc_bytes``) is subtracted: on the device those are C drivers, a wire or a
chip. The proxies' own call overhead stays on the firmware side (conservative).

``main(params)`` prints one JSON object. ``build(params)`` and ``measure(rig,
cycle, n)`` are separate so a test can check that the measurement sees an
extra allocation.
"""

import gc
import hashlib
import json
import time

from atecc608_emulator import ATECC608Emulator
from device.loop import Device
from meter_driver.meter import Meter
from meter_driver.modbus_rtu import ModbusRTU
from modbus_slave_uart import SlaveUART
from nor_flash import NorFlash
from secure_sign import p256
from secure_sign.atecc608 import ATECC608, ATECC608Signer
from secure_sign.software import SoftwareSigner
from storage.ring_buffer import RingBuffer
from telemetry.cose import FLAGS_ALL

_mem = gc.mem_alloc
_U32 = 0xFFFFFFFF


class Ledger:
    """Bytes allocated inside hardware models (to subtract from the firmware's total)."""

    def __init__(self):
        self.bytes = 0
        self.negative = 0   # a delta < 0: a collection ran inside a model call

    def add(self, a0):
        d = _mem() - a0
        if d < 0:
            self.negative += 1
        else:
            self.bytes += d


class MeteredUART:
    """machine.UART stand-in: forwards to the fake slave, books its allocations."""

    def __init__(self, slave, ledger):
        self._s = slave
        self._l = ledger

    def write(self, buf):
        a0 = _mem()
        r = self._s.write(buf)
        self._l.add(a0)
        return r

    def flush(self):
        a0 = _mem()
        self._s.flush()
        self._l.add(a0)

    def txdone(self):
        a0 = _mem()
        r = self._s.txdone()
        self._l.add(a0)
        return r

    def any(self):
        a0 = _mem()
        r = self._s.any()
        self._l.add(a0)
        return r

    def readinto(self, buf, n=None):
        a0 = _mem()
        r = self._s.readinto(buf, n)
        self._l.add(a0)
        return r


class MeteredFlash:
    """esp32.Partition stand-in over the NOR model, booking the model's allocations."""

    def __init__(self, flash, ledger):
        self._f = flash
        self._l = ledger

    def readblocks(self, block, buf, offset=0):
        a0 = _mem()
        self._f.readblocks(block, buf, offset)
        self._l.add(a0)

    def writeblocks(self, block, buf, offset=None):
        a0 = _mem()
        self._f.writeblocks(block, buf, offset)
        self._l.add(a0)

    def ioctl(self, op, arg):
        a0 = _mem()
        r = self._f.ioctl(op, arg)
        self._l.add(a0)
        return r


class RecordingMQTT:
    """umqtt.simple-compatible client that keeps the last publish (no network here)."""

    def __init__(self, ledger):
        self._l = ledger
        self.published = 0
        self.last = None

    def set_callback(self, cb):
        pass

    def set_last_will(self, topic, msg, retain=False, qos=0):
        pass

    def connect(self, clean_session=True):
        return 0

    def disconnect(self):
        pass

    def subscribe(self, topic, qos=0):
        pass

    def check_msg(self):
        return None

    def publish(self, topic, msg, retain=False, qos=0):
        a0 = _mem()
        self.published += 1
        self.last = msg
        self._l.add(a0)


class Clock:
    """Unix seconds, one per reading (an int past 2**30: a heap object, as on the device)."""

    def __init__(self, t0):
        self.t = t0

    def __call__(self):
        self.t += 1
        return self.t


class Rig:
    def __init__(self, params):
        self.ledger = Ledger()
        led = self.ledger
        g = SlaveUART(unit=1, max_regs=60)
        self.grid_slave = g
        t = g.input
        for a in range(0, 80):
            t[a] = 0
        t[342] = t[343] = 0
        for a, v in ((0, 231.4), (2, 229.8), (4, 230.6), (6, 4.12), (8, 3.97), (10, 5.03),
                     (12, 951.0), (14, 912.0), (16, 1160.0), (48, 13.12), (62, 0.97), (70, 60.01)):
            g.set_float(t, a, v)
        self.import_wh = params.get("import_wh", 4321987)
        self.export_wh = params.get("export_wh", 1234567)
        self.power_w = 3023
        self._set_grid()
        self.grid = Meter(ModbusRTU(MeteredUART(g, led), None, baudrate=9600, timeout_ms=50), "sdm630")
        self.pv = None
        self.pv_slave = None
        img = params.get("sunspec")
        if img:
            s = SlaveUART(unit=1, max_regs=125)
            base = img["base"]
            for i, v in enumerate(img["regs"]):
                s.holding[base + i] = v
            self.pv_slave = s
            self.pv_wh_reg = img["pv_wh_reg"]
            self.pv_wh = img["pv_wh"]
            self.pv = Meter(ModbusRTU(MeteredUART(s, led), None, baudrate=9600, timeout_ms=50), "sunspec")
        self.emu = ATECC608Emulator(seed=b"bench-firmware")
        self.signer = ATECC608Signer(ATECC608(self.emu))
        self.flash = NorFlash(params.get("flash_blocks", 16), 4096)
        self.ring = RingBuffer(MeteredFlash(self.flash, led))
        self.mqtt = RecordingMQTT(led)
        cfg = {"grid": "bench", "window": 32, "batch_max": 8, "ack_timeout_s": 30,
               "reconnect_max_s": 60, "interval_s": 10}
        self.dev = Device(cfg, self.signer, self.ring, self.grid, self.pv, self.mqtt,
                          clock=Clock(params.get("t0", 1767225600)))

    def _set_grid(self):
        g = self.grid_slave
        g.set_float(g.input, 52, float(self.power_w))
        g.set_float(g.input, 72, self.import_wh / 1000)
        g.set_float(g.input, 74, self.export_wh / 1000)

    def advance(self):
        """The meters move on between readings (called outside the measured windows)."""
        self.import_wh += 1 + self.import_wh % 7
        self.power_w = -self.power_w if self.import_wh % 3 == 0 else self.power_w + 17
        self._set_grid()
        if self.pv_slave is not None:
            self.pv_wh += 3
            self.pv_slave.set_u32(self.pv_slave.holding, self.pv_wh_reg, self.pv_wh)

    def hw(self):
        """Bytes the hardware models allocated so far (small ints: no allocation)."""
        return self.ledger.bytes + self.emu.alloc_bytes

    def broken(self):
        return self.ledger.negative + self.emu.gc_during_handler


def measure(rig, cycle, n):
    """Firmware bytes allocated by each of ``n`` calls of ``cycle`` (gc disabled).

    Returns (per-call list, ok): ``ok`` is False when a collection may have run
    (gc.mem_alloc() went down anywhere, or inside a hardware model).
    """
    per = [0] * n
    ok = True
    broken0 = rig.broken()
    gc.collect()
    gc.disable()
    try:
        last = _mem()
        for i in range(n):
            h0 = rig.hw()
            a0 = _mem()
            cycle()
            a1 = _mem()
            h1 = rig.hw()
            d = (a1 - a0) - (h1 - h0)
            if a0 < last or a1 < a0 or d < 0:
                ok = False
            per[i] = d
            rig.advance()
            last = _mem()
    finally:
        gc.enable()
    if rig.broken() != broken0:
        ok = False
    return per, ok


class _Part:
    """Wraps one collaborator of Device.sample() and books what the firmware allocates in it."""

    def __init__(self, rig):
        self.rig = rig
        self.bytes = 0


class PartMeter(_Part):
    def __init__(self, rig, meter):
        _Part.__init__(self, rig)
        self.m = meter

    def read(self):
        rig = self.rig
        h0 = rig.hw()
        a0 = _mem()
        r = self.m.read()
        a1 = _mem()
        self.bytes += (a1 - a0) - (rig.hw() - h0)
        return r


class PartSigner(_Part):
    def __init__(self, rig, signer):
        _Part.__init__(self, rig)
        self.s = signer

    def sign_digest(self, digest):
        rig = self.rig
        h0 = rig.hw()
        a0 = _mem()
        r = self.s.sign_digest(digest)
        a1 = _mem()
        self.bytes += (a1 - a0) - (rig.hw() - h0)
        return r


class PartEncoder(_Part):
    def __init__(self, rig, enc):
        _Part.__init__(self, rig)
        self.e = enc

    def encode(self, seq, t, imp, exp, pv, power, flags=0):
        rig = self.rig
        h0 = rig.hw()
        a0 = _mem()
        r = self.e.encode(seq, t, imp, exp, pv, power, flags)
        a1 = _mem()
        self.bytes += (a1 - a0) - (rig.hw() - h0)
        return r


class PartRing(_Part):
    def __init__(self, rig, ring):
        _Part.__init__(self, rig)
        self.r = ring

    @property
    def next_seq(self):
        return self.r.next_seq

    def append(self, seq, payload):
        rig = self.rig
        h0 = rig.hw()
        a0 = _mem()
        self.r.append(seq, payload)
        a1 = _mem()
        self.bytes += (a1 - a0) - (rig.hw() - h0)


def breakdown(rig, n):
    """Per-part medians over ``n`` wrapped cycles: where a cycle's bytes go."""
    dev = rig.dev
    grid = PartMeter(rig, dev.grid)
    pv = PartMeter(rig, dev.pv) if dev.pv is not None else None
    signer = PartSigner(rig, dev.encoder.signer)
    enc = PartEncoder(rig, dev.encoder)
    ring = PartRing(rig, dev.ring)
    saved = (dev.grid, dev.pv, dev.encoder, dev.ring)
    dev.grid, dev.pv, dev.encoder, dev.ring = grid, pv, enc, ring
    enc.e.signer = signer
    parts = [grid, pv, enc, signer, ring]
    names = ["meter_read_grid", "meter_read_pv", "encode", "sign_atecc608_driver", "ring_append"]
    rows = []
    before = [0] * 5

    def snap(dst):
        for k in range(5):
            dst[k] = parts[k].bytes if parts[k] is not None else 0

    try:
        for _ in range(n):
            snap(before)
            totals, ok = measure(rig, dev.sample, 1)
            after = [0] * 5
            snap(after)
            row = [after[k] - before[k] for k in range(5)]
            row.append(totals[0])
            rows.append((row, ok))
    finally:
        dev.grid, dev.pv, dev.encoder, dev.ring = saved
        enc.e.signer = signer.s
    out = {}
    ok_all = True
    for _row, ok in rows:
        ok_all = ok_all and ok
    for k in range(5):
        if parts[k] is None:
            continue
        out[names[k]] = median([r[k] for r, _ok in rows])
    # the encode window contains the sign call: report the encoder's own share
    out["encode"] -= out["sign_atecc608_driver"]
    total = median([r[5] for r, _ok in rows])
    inner = 0
    for k in out:
        inner += out[k]
    out["sample_loop"] = total - inner   # Device.sample() itself: clock, flags, counters
    out["total"] = total
    return out, ok_all


def median(xs):
    s = sorted(xs)
    k = len(s) // 2
    if len(s) % 2:
        return s[k]
    m = (s[k - 1] + s[k]) / 2
    return int(m) if m == int(m) else m


def _ack_msg(seq):
    # the gateway's ack: one CBOR uint (as it would arrive over MQTT)
    if seq < 24:
        return bytes((seq,))
    if seq < 0x100:
        return bytes((24, seq))
    return bytes((25, seq >> 8, seq & 0xFF))


def measure_publish(rig, n):
    """Bytes per publish_pending() of one new reading (the backlog before it acked)."""
    dev = rig.dev
    if not dev.connected:
        dev.connect()
    dev.publish_pending()
    dev.on_message(dev.t_ack, _ack_msg(dev.ring.next_seq - 1))
    pub = [0] * n
    ack = [0] * n
    ok = True
    for i in range(n):
        dev.sample()
        rig.advance()
        per, ok1 = measure(rig, dev.publish_pending, 1)
        pub[i] = per[0]
        msg = _ack_msg(dev.ring.next_seq - 1)
        per2, ok2 = measure(rig, lambda: dev.on_message(dev.t_ack, msg), 1)
        ack[i] = per2[0]
        ok = ok and ok1 and ok2
    return pub, ack, ok


def software_signer(n, rounds=5):
    """Software P-256 signatures: time (ms) and bytes allocated per signature, table build.

    Under Node ``ticks_us`` moves in whole milliseconds, so time is taken over
    ``rounds`` batches of ``n`` signatures (median of the batch means); the
    allocation is measured per signature. gc is disabled throughout: the time
    excludes collections, which on a device would add to it.
    """
    p256._TX = p256._TY = None   # the emulator built it: time a fresh build
    t = time.ticks_ms()
    p256.precompute()
    table_ms = time.ticks_diff(time.ticks_ms(), t)
    sw = SoftwareSigner(hashlib.sha256(b"bench software key").digest(), b"\x00" * 9)
    digests = [hashlib.sha256(bytes((i,))).digest() for i in range(n)]
    batch_ms = [0] * rounds
    alloc = [0] * n
    ok = True
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            t = time.ticks_ms()
            for d in digests:
                sw.sign_digest(d)
            batch_ms[r] = time.ticks_diff(time.ticks_ms(), t)
        for i in range(n):
            d = digests[i]
            a0 = _mem()
            sw.sign_digest(d)
            a1 = _mem()
            alloc[i] = a1 - a0
            if a1 < a0:
                ok = False
    finally:
        gc.enable()
    per = [b / n for b in batch_ms]
    check = [_hex(sw.public_key), _hex(digests[-1]), _hex(sw.sign_digest(digests[-1]))]
    return {"ms": median(per), "ms_max": max(per), "alloc": median(alloc), "alloc_max": max(alloc),
            "table_ms": table_ms, "n": n, "rounds": rounds, "valid": ok, "check": check}


def _hex(b):
    return "".join("%02x" % x for x in b)


def main(params):
    t_start = time.ticks_ms()
    rig = Rig(params)
    dev = rig.dev
    dev.connect()                      # recording client: flags as on a connected device
    warm = params.get("warmup", 3)
    n = params.get("cycles", 30)
    for _ in range(warm):
        dev.sample()
        rig.advance()
    seq0 = dev.ring.next_seq
    erases0 = dev.ring.erases
    per, ok = measure(rig, dev.sample, n)
    sector_opens = dev.ring.erases - erases0
    msgs = [m for s, m in dev.ring.pending(n + warm + 8, 1 << 30) if s >= seq0]
    parts, ok_parts = breakdown(rig, params.get("breakdown_cycles", 5))
    pub, ack, ok_pub = measure_publish(rig, params.get("publish_cycles", 5))
    enc = dev.encoder
    worst = enc.encode(_U32, _U32, _U32, _U32, _U32, -0x80000000, FLAGS_ALL)
    least = enc.encode(0, 0, 0, 0, 0, 0, 0)
    sw = software_signer(params.get("sw_sigs", 10))
    srt = sorted(per)
    out = {
        "alloc_per_cycle": median(per),
        "alloc_per_cycle_max": srt[-1],
        "alloc_per_cycle_min": srt[0],
        "cycles": n,
        "warmup": warm,
        "sector_opens_measured": sector_opens,
        "valid": ok and ok_parts and ok_pub and sw["valid"] and rig.broken() == 0,
        "gc_during_handler": rig.emu.gc_during_handler,
        "ledger_negative": rig.ledger.negative,
        "breakdown": parts,
        "alloc_per_publish": median(pub),
        "alloc_per_publish_max": max(pub),
        "alloc_per_ack": median(ack),
        "alloc_per_ack_max": max(ack),
        "messages": [_hex(m) for m in msgs],
        "worst_case_message": _hex(worst),
        "least_message": _hex(least),
        "public_key": _hex(rig.signer.public_key),
        "device_id": _hex(rig.signer.device_id),
        "pv": rig.pv is not None,
        "grid_requests": len(rig.grid_slave.requests),
        "emulator_alloc_bytes": rig.emu.alloc_bytes,
        "model_alloc_bytes": rig.ledger.bytes,
        "software": sw,
        "per_cycle": per,
        "seconds": time.ticks_diff(time.ticks_ms(), t_start) / 1000,
    }
    print(json.dumps(out))
    return out
