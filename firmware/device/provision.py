"""Provisioning on the device, run by ``metanoia device provision`` over the REPL.

The host puts the settings in ``/provision.json`` (a file, so no secret is on a
command line), then runs ``provision.run_file()``, which prints one JSON line:
the chip's serial number (the device id), the public key of the key it made,
the firmware version and what it did. Steps:

1. The ATECC608 config zone: if unlocked, write the production slot layout,
   read it back, lock it with its CRC (a config altered on the way is refused).
   A locked config must already hold a P-256 private key in the slot.
2. The key: GenKey inside the chip and lock the data zone; a chip whose data
   zone is already locked keeps its key (``fresh_key`` false).
3. ``/config.json``: the settings merged into the file, validated by the same
   ``config.load`` the device boots with, then renamed over the old file.
"""

import json
import os

from device import config
from device.version import VERSION
from secure_sign import atecc608

SETTINGS = "/provision.json"


def _hex(b):
    return "".join("%02x" % x for x in b)


def update_config(path, settings):
    """Merge ``settings`` (nested dicts merge key by key) into the JSON at ``path``."""
    try:
        with open(path) as f:
            user = json.load(f)
    except OSError:
        user = {}
    for k in settings:
        v = settings[k]
        if isinstance(v, dict) and isinstance(user.get(k), dict):
            merged = user[k]
            for kk in v:
                merged[kk] = v[kk]
        else:
            user[k] = v
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(user, f)
    try:
        cfg = config.load(tmp)  # the device's own boot check: refuse before replacing
    except Exception:
        os.remove(tmp)
        raise
    os.rename(tmp, path)
    return cfg


def provision_chip(chip, slot):
    """Configure and lock as needed; returns (serial, public key, configured, fresh_key)."""
    chip.wake()
    try:
        cfg = chip.read_config()
        configured = False
        if cfg[atecc608.CFG_LOCK_CONFIG] != 0:
            cfg = atecc608.configure(chip, slot)
            chip.lock_config(atecc608.crc16(cfg))
            cfg = chip.read_config()
            configured = True
        if not atecc608.slot_is_p256_private(cfg, slot):
            raise atecc608.ATECCConfigError(
                "config zone locked without a P-256 private key in slot %d: this chip cannot hold the key" % slot)
        fresh = cfg[atecc608.CFG_LOCK_VALUE] != 0
        if fresh:
            pub = chip.genkey(slot)
            chip.lock_data()
        else:
            pub = chip.public_key(slot)
        return chip.serial_number(cfg), pub, configured, fresh
    finally:
        chip.sleep()


def run(settings, i2c=None, path="/config.json"):
    """Provision with ``settings`` (keys of config.json); ``i2c`` defaults to the
    bus the device config names (the emulator in tests)."""
    cfg = config.load(path)
    scfg = cfg["signer"]
    if scfg["type"] != "atecc608":
        raise config.ConfigError("signer.type is %r: provisioning needs the ATECC608" % scfg["type"])
    if i2c is None:
        from device.app import open_i2c

        i2c = open_i2c(scfg)
    chip = atecc608.ATECC608(i2c, scfg["address"])
    serial, pub, configured, fresh = provision_chip(chip, scfg["slot"])
    signer = atecc608.ATECC608Signer(chip, scfg["slot"])  # the boot-time checks, now passing
    if signer.public_key != pub:
        raise atecc608.ATECCConfigError("the chip's public key changed between GenKey and read-back")
    cfg = update_config(path, settings)
    return {"device_id": _hex(serial), "public_key": _hex(pub), "revision": _hex(signer.revision),
            "configured": configured, "fresh_key": fresh, "firmware_version": VERSION,
            "grid": cfg["grid"], "profile": cfg["grid_meter"]["profile"]}


def _take(settings_path):
    """The settings file's JSON; the file is removed first (it may hold passwords)."""
    with open(settings_path) as f:
        settings = json.load(f)
    os.remove(settings_path)
    return settings


def run_file(i2c=None, settings_path=SETTINGS, path="/config.json"):
    """``run`` with the settings from ``settings_path``; prints one JSON line."""
    print(json.dumps(run(_take(settings_path), i2c, path)))


def configure_file(i2c=None, settings_path=SETTINGS, path="/config.json"):
    """Settings only, no key: e.g. the broker credential issued after registration.

    ``expect_device_id`` in the settings (hex) must be this chip's serial number,
    so a credential cannot land on the wrong device; it is checked before any
    write. A TLS broker needs its CA at ``mqtt.ca_file`` on the device."""
    settings = _take(settings_path)
    want = settings.pop("expect_device_id", None)
    cfg = config.load(path)
    scfg = cfg["signer"]
    if i2c is None and scfg["type"] == "atecc608":
        from device.app import open_i2c

        i2c = open_i2c(scfg)
    signer = atecc608.ATECC608Signer(atecc608.ATECC608(i2c, scfg["address"]), scfg["slot"])
    got = _hex(signer.device_id)
    if want is not None and want != got:
        raise config.ConfigError("these settings are for device %s, this is %s" % (want, got))
    m = settings.get("mqtt") or {}
    ca = m.get("ca_file")
    if m.get("ssl") and ca:
        try:
            os.stat(ca)
        except OSError:
            raise config.ConfigError("mqtt.ca_file %s is not on the device" % ca)
    cfg = update_config(path, settings)
    print(json.dumps({"device_id": got, "grid": cfg["grid"], "mqtt_host": cfg["mqtt"]["host"],
                      "mqtt_user": cfg["mqtt"]["user"], "ssl": cfg["mqtt"]["ssl"], "firmware_version": VERSION}))
