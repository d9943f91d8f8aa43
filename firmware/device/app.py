"""Wires real hardware to the loop from the config on flash.

``main()`` is what ``main.py`` runs on the ESP32. The same function runs on
CPython for simulation: there ``machine``, ``network``, ``ntptime``, ``esp32``
and ``umqtt.simple`` are the host shims, with the virtual rig's serial port,
flash image and broker attached beforehand.
"""

import time

import esp32
import machine
import network
import ntptime
from device import config
from device.loop import Device
from meter_driver.meter import Meter, open_rtu, open_tcp
from storage.ring_buffer import RingBuffer
from umqtt.simple import MQTTClient

# MicroPython's ESP32 port counts seconds from 2000-01-01; others from 1970.
_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0


class Clock:
    """Unix seconds once NTP has answered, 0 before (the reading is then flagged)."""

    def __init__(self, host, every_s, ticks_ms=time.ticks_ms):
        self.host = host
        self.every_ms = every_s * 1000
        self.ticks_ms = ticks_ms
        self.synced = False
        self._last = 0

    def sync(self):
        try:
            ntptime.host = self.host
            ntptime.settime()
            self.synced = True
            self._last = self.ticks_ms()
        except Exception:  # no network yet: keep the RTC, retry later
            pass
        return self.synced

    def __call__(self):
        if not self.synced or time.ticks_diff(self.ticks_ms(), self._last) > self.every_ms:
            self.sync()
        if not self.synced:
            return 0
        return int(time.time()) + _EPOCH_OFFSET


def open_meter(mcfg):
    """A ``Meter`` for one source of the config (``grid_meter`` / ``pv_inverter``)."""
    if mcfg["bus"] == "rtu":
        bus = open_rtu(mcfg["uart"], mcfg["profile"], baudrate=mcfg.get("baudrate"),
                       parity=mcfg.get("parity"), de_pin=mcfg.get("de"), tx=mcfg.get("tx"),
                       rx=mcfg.get("rx"))
    elif mcfg["bus"] == "tcp":
        bus = open_tcp(mcfg["host"], mcfg["profile"], port=mcfg.get("port"))
    else:
        raise config.ConfigError("unknown meter bus %r" % mcfg["bus"])
    return Meter(bus, mcfg["profile"], mcfg.get("unit"))


def open_i2c(scfg):
    """The secure element's bus. 100 kHz: the wake pulse (a write to address 0)
    must hold SDA low for t_WLO >= 60 us; at 400 kHz it lasts about 20 us and the
    chip stays asleep."""
    return machine.I2C(scfg["i2c"], scl=machine.Pin(scfg["scl"]), sda=machine.Pin(scfg["sda"]), freq=100000)


def open_signer(scfg):
    """The ATECC608 in production; the software key only where the config says so."""
    if scfg["type"] == "atecc608":
        from secure_sign.atecc608 import ATECC608, ATECC608Signer

        return ATECC608Signer(ATECC608(open_i2c(scfg), scfg["address"]), scfg["slot"])
    if scfg["type"] == "software":
        import os

        from secure_sign.software import SoftwareSigner

        return SoftwareSigner.load_or_create(scfg["key_file"], os.urandom)
    raise config.ConfigError("unknown signer %r" % scfg["type"])


def open_ring(fcfg):
    parts = esp32.Partition.find(esp32.Partition.TYPE_DATA, label=fcfg["partition"])
    if not parts:
        raise config.ConfigError("no data partition %r for the ring buffer" % fcfg["partition"])
    return RingBuffer(parts[0])


def open_tls(m):
    """An SSLContext that verifies the broker against the CA at ``m["ca_file"]``, or None.

    micropython-lib's umqtt.simple wraps its socket with ``ssl.wrap_socket(sock,
    server_hostname=host)``, so the broker's certificate must name ``mqtt.host``.
    MicroPython's ssl module defaults to CERT_NONE: require verification here.
    """
    if not m["ssl"]:
        return None
    if not m["ca_file"]:
        raise config.ConfigError("mqtt.ssl needs mqtt.ca_file")
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # MicroPython's ssl.SSLContext starts at CERT_NONE (the 1.29 stubs omit verify_mode).
    ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]
    ctx.load_verify_locations(cafile=m["ca_file"])
    return ctx


def build(cfg, clock=None, ticks_ms=None, wdt=None, log=None):
    """The Device for ``cfg``, with every piece of hardware opened."""
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    w = cfg["wifi"]

    def link_up():
        if wlan.isconnected():
            return True
        if w["ssid"]:
            try:
                wlan.connect(w["ssid"], w["password"])
            except OSError:
                pass
        return False

    if w["ssid"]:
        wlan.connect(w["ssid"], w["password"])
    signer = open_signer(cfg["signer"])
    ring = open_ring(cfg["flash"])
    grid = open_meter(cfg["grid_meter"])
    pv = open_meter(cfg["pv_inverter"]) if cfg["pv_inverter"] else None
    m = cfg["mqtt"]
    client_id = "".join("%02x" % b for b in signer.device_id)
    mqtt = MQTTClient(client_id, m["host"], port=m["port"], user=m["user"], password=m["password"],
                      keepalive=m["keepalive"], ssl=open_tls(m))
    if clock is None:
        clock = Clock(cfg["ntp_host"], cfg["ntp_every_s"])
    return Device(cfg, signer, ring, grid, pv, mqtt, clock=clock, ticks_ms=ticks_ms, wdt=wdt,
                  link_up=link_up, log=log)


def main(config_path="/config.json"):
    cfg = config.load(config_path)
    # The watchdog starts first: a hang anywhere below resets the device.
    wdt = machine.WDT(timeout=cfg["wdt_ms"])
    dev = build(cfg, wdt=wdt, log=print)
    dev.run()
