"""The read-sign-buffer-publish loop.

Order matters for "nothing lost, exactly once": a reading is signed, then
committed to the flash ring buffer, and only then published; it leaves flash
only when the gateway's ``ack`` (highest contiguous seq stored) covers it.
The gateway dedupes by seq, so re-sending after an outage, a lost ack or a
reboot is always safe.

Hardware arrives as objects: ``grid``/``pv`` have ``read() -> dict`` (the
meter_driver facades), ``signer`` the secure_sign interface, ``ring`` the
storage.RingBuffer, ``mqtt`` an umqtt.simple-compatible client, ``clock()``
returns unix seconds (0 while unsynced), ``ticks_ms()`` a monotonic tick and
``link_up()`` whether Wi-Fi is up (asking it to reconnect when it is not).
"""

import time

from device.version import VERSION
from micropython import const
from telemetry.cose import (FLAG_CLOCK_UNSYNCED, FLAG_COUNTER_BACKWARDS, FLAG_INVERTER_ERROR,
                            FLAG_METER_ERROR, FLAG_OFFLINE, MAX_BATCH, ReadingEncoder, wrap_array)

_POWER_MAX = const(0x7FFFFFFF)


def decode_ack(msg):
    """The ack payload is one CBOR unsigned integer (major type 0): the seq."""
    n = len(msg)
    if n == 0 or msg[0] >> 5 != 0:
        raise ValueError("ack is not a CBOR uint")
    ai = msg[0] & 0x1F
    if ai < 24:
        if n != 1:
            raise ValueError("ack has trailing bytes")
        return ai
    if ai > 27:
        raise ValueError("ack has a bad length")
    size = 1 << (ai - 24)  # additional info 24..27: 1, 2, 4, 8 bytes follow
    if n != 1 + size:
        raise ValueError("ack has a bad length")
    v = 0
    for i in range(1, n):
        v = (v << 8) | msg[i]
    return v


def _hex(b):
    return "".join("%02x" % x for x in b)


def state_payloads(version):
    """The retained ``state`` payloads (online, last will), JSON with no spaces.

    The gateway records the firmware version from the online message; the
    exact bytes are the contract (docs/firmware.md). Built once per Device.
    """
    return ('{"state":"online","fw":"%s"}' % version).encode(), b'{"state":"offline"}'


class Device:
    def __init__(self, cfg, signer, ring, grid, pv=None, mqtt=None, clock=None, ticks_ms=None,
                 wdt=None, link_up=None, log=None, version=VERSION):
        self.cfg = cfg
        self.signer = signer
        self.ring = ring
        self.grid = grid
        self.pv = pv
        self.mqtt = mqtt
        self.clock = clock or (lambda: 0)
        self.ticks_ms = ticks_ms or time.ticks_ms
        self.wdt = wdt
        self.link_up = link_up or (lambda: True)
        self.log = log or (lambda *a: None)
        self.encoder = ReadingEncoder(signer)
        self.device_hex = _hex(signer.device_id)
        base = "metanoia/%s/%s/" % (cfg["grid"], self.device_hex)
        self.t_tele = (base + "tele").encode()
        self.t_ack = (base + "ack").encode()
        self.t_state = (base + "state").encode()
        self.t_cmd = (base + "cmd").encode()
        self.state_online, self.state_offline = state_payloads(version)
        self.connected = False
        self.sent_upto = ring.next_seq - 1   # highest seq published since the last (re)connect
        self.acked = ring.acked_seq          # highest seq the gateway acknowledged (0 = none)
        self._last_progress = self.ticks_ms()
        self._next_connect = self._last_progress
        self._last_ping = self._last_progress
        self._backoff_ms = 1000
        self._last_counts = None             # (import, export, pv) of the last reading
        self.counters = {"readings": 0, "meter_errors": 0, "inverter_errors": 0, "backwards": 0,
                         "published": 0, "messages": 0, "acks": 0, "bad_acks": 0, "resends": 0,
                         "connects": 0, "connect_failures": 0, "publish_failures": 0,
                         "cmds": 0, "bad_cmds": 0, "link_down": 0, "pings": 0}

    # -- reading --------------------------------------------------------------
    def sample(self):
        """Read the meters, sign one reading, commit it to flash; return its seq."""
        flags = 0
        backwards = False
        last = self._last_counts
        imp = exp = pv_wh = 0
        power = 0
        if last is not None:
            imp, exp, pv_wh = last
        try:
            g = self.grid.read()
            backwards = g.get("backwards", False)
            imp = int(g["import_wh"])
            exp = int(g["export_wh"])
            power = int(g["power_w"])
        except Exception as e:  # a silent or garbled meter must not stop the loop
            flags |= FLAG_METER_ERROR
            self.counters["meter_errors"] += 1
            self.log("grid meter:", repr(e))
        if self.pv is not None:
            try:
                p = self.pv.read()
                pv_wh = int(p["pv_wh"])
                backwards = backwards or p.get("backwards", False)
            except Exception as e:
                flags |= FLAG_INVERTER_ERROR
                self.counters["inverter_errors"] += 1
                self.log("inverter:", repr(e))
        if backwards:
            # The meter facade flags it; we sign the value the meter gave.
            flags |= FLAG_COUNTER_BACKWARDS
            self.counters["backwards"] += 1
        self._last_counts = (imp, exp, pv_wh)
        if power > _POWER_MAX:
            power = _POWER_MAX
        elif power < -_POWER_MAX:
            power = -_POWER_MAX
        t = self.clock()
        if not t:
            flags |= FLAG_CLOCK_UNSYNCED
        if not self.connected:
            flags |= FLAG_OFFLINE
        seq = self.ring.next_seq
        msg = self.encoder.encode(seq, t, imp, exp, pv_wh, power, flags)
        self.ring.append(seq, msg)
        self.counters["readings"] += 1
        return seq

    # -- MQTT -------------------------------------------------------------------
    def connect(self):
        m = self.mqtt
        m.set_callback(self.on_message)
        m.set_last_will(self.t_state, self.state_offline, True, 1)
        m.connect()
        self.connected = True
        m.publish(self.t_state, self.state_online, True, 1)
        m.subscribe(self.t_ack, 1)
        m.subscribe(self.t_cmd, 1)
        # Anything published before but not acknowledged goes out again.
        self.sent_upto = max(self.acked, self._first_pending() - 1)
        self._last_progress = self.ticks_ms()
        self._last_ping = self._last_progress
        self._backoff_ms = 1000
        self.counters["connects"] += 1

    def _first_pending(self):
        p = self.ring.pending(1, 1 << 16)
        return p[0][0] if p else self.ring.next_seq

    def drop_connection(self, why):
        self.log("mqtt down:", why)
        self.connected = False
        try:
            self.mqtt.disconnect()
        except Exception:
            pass
        now = self.ticks_ms()
        self._next_connect = time.ticks_add(now, self._backoff_ms)
        self._backoff_ms = min(self._backoff_ms * 2, self.cfg["reconnect_max_s"] * 1000)

    def on_message(self, topic, msg):
        if topic == self.t_ack:
            try:
                seq = decode_ack(msg)
            except ValueError:
                self.counters["bad_acks"] += 1
                return
            if seq >= self.ring.next_seq:
                # Acknowledges something never sent: a broken or hostile gateway.
                self.counters["bad_acks"] += 1
                return
            self.counters["acks"] += 1
            if seq > self.acked:
                self.acked = seq
                self._last_progress = self.ticks_ms()
                self.ring.ack(seq)
        elif topic == self.t_cmd:
            self.on_cmd(msg)

    def on_cmd(self, msg):
        """Gateway configuration: JSON object with a few runtime-settable keys."""
        import json

        try:
            cmd = json.loads(msg)
            for k in cmd:
                if k not in ("interval_s", "batch_max"):
                    raise ValueError(k)
                v = cmd[k]
                if not isinstance(v, int) or v < 1 or (k == "batch_max" and v > min(self.cfg["window"], MAX_BATCH)):
                    raise ValueError(k)
            for k in cmd:
                self.cfg[k] = cmd[k]
            self.counters["cmds"] += 1
        except Exception:
            self.counters["bad_cmds"] += 1

    def publish_pending(self):
        """Send readings after ``sent_upto``, oldest first, batched, within the window."""
        cfg = self.cfg
        window = cfg["window"]
        batch_max = cfg["batch_max"]
        now = self.ticks_ms()
        if self.sent_upto > self.acked and time.ticks_diff(now, self._last_progress) > cfg["ack_timeout_s"] * 1000:
            # No ack progress: assume loss somewhere and go again from the last ack.
            self.sent_upto = self.acked
            self._last_progress = now
            self.counters["resends"] += 1
        while True:
            # Ask flash only for the in-flight readings plus one batch: each
            # returned payload is a fresh copy, so asking for the window is waste.
            want = min(window, self.sent_upto - self.acked + batch_max)
            items = self.ring.pending(want, 1 << 30)
            batch = []
            for seq, payload in items:
                if seq > self.sent_upto:
                    batch.append((seq, payload))
                    if len(batch) >= batch_max:
                        break
            if not batch:
                return
            if len(batch) == 1:
                msg = batch[0][1]
            else:
                msg = wrap_array([p for _s, p in batch])
            self.mqtt.publish(self.t_tele, msg, False, 1)
            self.sent_upto = batch[-1][0]
            self.counters["published"] += len(batch)
            self.counters["messages"] += 1
            if len(items) < want or len(batch) < batch_max:
                return

    def service(self):
        """Connect if due, publish the backlog, process incoming acks and commands."""
        if not self.connected:
            now = self.ticks_ms()
            if time.ticks_diff(now, self._next_connect) < 0:
                return
            if not self.link_up():
                self.counters["link_down"] += 1
                self._next_connect = time.ticks_add(now, 1000)
                return
            try:
                self.connect()
            except Exception as e:
                self.counters["connect_failures"] += 1
                self.drop_connection(repr(e))
                return
        try:
            for _ in range(8):
                self.mqtt.check_msg()
            self.publish_pending()
            self.mqtt.check_msg()
            # Keep the session alive between readings: without a PINGREQ within
            # 1.5 x keepalive the broker drops us and publishes the last will.
            now = self.ticks_ms()
            if time.ticks_diff(now, self._last_ping) > self.cfg["mqtt"]["keepalive"] * 500:
                self.mqtt.ping()
                self._last_ping = now
                self.counters["pings"] += 1
        except Exception as e:
            self.counters["publish_failures"] += 1
            self.drop_connection(repr(e))

    def stats(self):
        s = {}
        for k in self.counters:
            s[k] = self.counters[k]
        s["sent_upto"] = self.sent_upto
        s["acked"] = self.acked
        s["ring"] = self.ring.stats()
        return s

    def run(self, steps=None):
        """The device's main loop; ``steps`` bounds it for tests."""
        next_sample = self.ticks_ms()
        n = 0
        while steps is None or n < steps:
            n += 1
            if self.wdt is not None:
                self.wdt.feed()
            now = self.ticks_ms()
            if time.ticks_diff(now, next_sample) >= 0:
                self.sample()
                next_sample = time.ticks_add(next_sample, self.cfg["interval_s"] * 1000)
                if time.ticks_diff(now, next_sample) >= 0:  # fell behind: don't burst
                    next_sample = time.ticks_add(now, self.cfg["interval_s"] * 1000)
            self.service()
            time.sleep_ms(50)
