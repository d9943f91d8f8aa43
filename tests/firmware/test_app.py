"""device.app: the production wiring from config, on CPython behind the shims."""

from __future__ import annotations

import time

import pytest

import machine
import network
from device import app, config
from gateway.telemetry.decode import decode_message, verify
from gateway.telemetry.format import FLAG_SOFTWARE_KEY
from hil.atecc608_emulator import ATECC608Emulator
from secure_sign.atecc608 import ATECCNotLockedError
from telemetry.cose import ReadingEncoder


def _signer_cfg(**over):
    return config.merge(config.DEFAULTS["signer"], over)


def test_atecc608_signer_from_config_signs_with_the_chip_serial_as_device_id():
    chip = ATECC608Emulator()
    machine.attach_i2c(0, chip)
    signer = app.open_signer(_signer_cfg(type="atecc608", i2c=0))
    assert not signer.software
    assert signer.device_id == chip.serial and len(signer.device_id) == 9
    msg = ReadingEncoder(signer).encode(1, 1780000000, 10, 20, 30, -5, 0)
    (s1,) = decode_message(msg)
    r = verify(s1, signer.public_key)
    assert r.device_id == chip.serial and not r.flags & FLAG_SOFTWARE_KEY


def test_an_unprovisioned_chip_is_refused_at_start():
    machine.attach_i2c(0, ATECC608Emulator(provisioned=False))
    with pytest.raises(ATECCNotLockedError):
        app.open_signer(_signer_cfg(type="atecc608", i2c=0))


def test_software_signer_key_persists_across_boots(tmp_path):
    cfg = _signer_cfg(type="software", key_file=str(tmp_path / "devkey.bin"))
    a = app.open_signer(cfg)
    b = app.open_signer(cfg)
    assert a.software and a.device_id == b.device_id and a.public_key == b.public_key


def test_unknown_signer_and_missing_partition_are_config_errors():
    with pytest.raises(config.ConfigError):
        app.open_signer(_signer_cfg(type="tpm"))
    with pytest.raises(config.ConfigError, match="no data partition"):
        app.open_ring({"partition": "does-not-exist"})


def test_clock_reports_zero_until_ntp_answers_then_unix_time(monkeypatch):
    network.set_link(False)
    try:
        clock = app.Clock("pool.ntp.org", 3600)
        assert clock() == 0 and not clock.synced
    finally:
        network.set_link(True)
    assert abs(clock() - time.time()) < 5 and clock.synced
