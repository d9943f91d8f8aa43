"""Device configuration: one JSON file on flash, merged over documented defaults.

Every key has a default that works for a simulated device; an installer's
``/config.json`` only names what differs (Wi-Fi, broker, bus pins, profiles).
Unknown keys are rejected so a typo cannot silently fall back to a default.
"""

import json

from telemetry.cose import MAX_BATCH  # the gateway refuses larger arrays

DEFAULTS = {
    # Microgrid (complex) id: the MQTT topic prefix metanoia/{grid}/{device}/.
    "grid": "demo",
    # Seconds between readings. Energy is cumulative, so a longer interval
    # costs resolution, never energy.
    "interval_s": 60,
    "wifi": {"ssid": "", "password": ""},
    "ntp_host": "pool.ntp.org",
    # Re-synchronise the clock this often (ESP32's RTC drifts seconds per day).
    "ntp_every_s": 3600,
    # ssl: TLS to the broker, verified against the complex's CA certificate at
    # ca_file (PEM, copied from the gateway's broker-config); never unverified.
    "mqtt": {"host": "127.0.0.1", "port": 1883, "user": None, "password": None,
             "keepalive": 60, "ssl": False, "ca_file": None},
    # Grid meter on RS485 ("rtu": UART id and pins, direction (DE/RE) pin; baudrate/
    # parity None = the profile's default, Eastron ships 9600 8N1 or 2400) or a
    # SunSpec meter on the LAN ("tcp": host, port).
    "grid_meter": {"profile": "sdm630", "bus": "rtu", "uart": 2, "tx": 17, "rx": 16,
                   "de": 4, "baudrate": None, "parity": None, "unit": 1,
                   "host": None, "port": None},
    # PV inverter on the LAN (SunSpec over Modbus TCP); None when the home has no PV.
    "pv_inverter": None,
    # "atecc608" in production; "software" only on dev boards (flagged in readings).
    "signer": {"type": "atecc608", "i2c": 0, "scl": 22, "sda": 21, "address": 0x60,
               "slot": 0, "key_file": "/devkey.bin"},
    # Flash data partition holding the ring buffer of signed readings.
    "flash": {"partition": "readings"},
    "wdt_ms": 30000,
    # Backlog drain: readings per MQTT message and readings in flight unacked.
    "batch_max": 16,
    "window": 64,
    # Resend from the last ack when the gateway has not acknowledged for this long.
    "ack_timeout_s": 30,
    "reconnect_max_s": 60,
}


class ConfigError(ValueError):
    pass


def merge(defaults, override, path=""):
    out = {}
    for k in defaults:
        out[k] = defaults[k]
    for k in override:
        if k not in defaults:
            raise ConfigError("unknown config key %s%s" % (path, k))
        d = defaults[k]
        v = override[k]
        if isinstance(d, dict) and isinstance(v, dict):
            out[k] = merge(d, v, path + k + ".")
        else:
            out[k] = v
    return out


def load(path="/config.json"):
    """The config from ``path`` over DEFAULTS; a missing file means all defaults."""
    try:
        with open(path) as f:
            user = json.load(f)
    except OSError:
        user = {}
    except ValueError as e:
        raise ConfigError("config %s is not JSON: %s" % (path, e))
    if not isinstance(user, dict):
        raise ConfigError("config %s must be a JSON object" % path)
    cfg = merge(DEFAULTS, user)
    if not isinstance(cfg["interval_s"], int) or cfg["interval_s"] < 1:
        raise ConfigError("interval_s must be a positive integer")
    if cfg["mqtt"]["ssl"] and not cfg["mqtt"]["ca_file"]:
        raise ConfigError("mqtt.ssl needs mqtt.ca_file (the complex's CA certificate)")
    if not 1 <= cfg["batch_max"] <= min(cfg["window"], MAX_BATCH):
        raise ConfigError("need 1 <= batch_max <= window and <= %d" % MAX_BATCH)
    return cfg
