"""The installer's site config: documented defaults, specific refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.installer import build, site

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_defaults_make_a_demo_device_config():
    c = site.load(None)
    assert (c.grid, c.profile, c.broker_port, c.broker_tls) == ("demo", "sdm630", 1883, False)
    cfg = c.device_config()
    assert cfg["grid"] == "demo" and cfg["mqtt"] == {"host": "127.0.0.1", "port": 1883, "ssl": False, "ca_file": None}
    build.check_device_config(cfg)  # the firmware's own boot check accepts it


def test_toml_file_with_tls_points_the_device_at_its_ca(tmp_path: Path):
    (tmp_path / "ca.crt").write_text(CA)
    f = tmp_path / "site.toml"
    f.write_text('grid = "oak-court"\ngateway_url = "https://gw.oak/"\n[meter]\nprofile = "sunspec"\n'
                 '[broker]\nhost = "192.168.10.2"\ntls = true\nca_file = "ca.crt"\n[device]\ninterval_s = 30\n')
    c = site.load(f)
    assert c.gateway_url == "https://gw.oak" and c.broker_port == 8883 and c.ca_file == tmp_path / "ca.crt"
    cfg = c.device_config()
    assert cfg["mqtt"]["ssl"] is True and cfg["mqtt"]["ca_file"] == "/ca.crt"
    assert cfg["grid_meter"] == {"profile": "sunspec", "unit": 1, "bus": "tcp"} and cfg["interval_s"] == 30


def test_the_password_stays_out_of_repr():
    c = site.from_dict({"wifi": {"ssid": "flat", "password": "hunter2-hunter2"}})
    assert "hunter2" not in repr(c)


@pytest.mark.parametrize("data, reason", [
    ({"gird": "x"}, "unknown_key"),
    ({"broker": {"hots": "x"}}, "unknown_key"),
    ({"grid": "oak/court"}, "bad_grid"),
    ({"grid": "+"}, "bad_grid"),
    ({"meter": {"profile": "sdm999"}}, "bad_profile"),
    ({"meter": {"unit": 0}}, "bad_unit"),
    ({"meter": "sdm630"}, "bad_type"),
    ({"gateway_url": "gw.example"}, "bad_url"),
    ({"gateway_url": "ftp://gw.example"}, "bad_url"),
    ({"gateway_url": "https://gw.example/?x=1"}, "bad_url"),
    ({"broker": {"port": 70000}}, "bad_port"),
    ({"broker": {"port": "1883"}}, "bad_port"),
    ({"broker": {"host": "mqtt://x"}}, "bad_broker"),
    ({"broker": {"tls": True}}, "missing_ca"),
    ({"broker": {"tls": True, "ca_file": "/nonexistent.crt"}}, "missing_ca"),
    ({"wifi": {"ssid": "x" * 33}}, "bad_wifi"),
    ({"wifi": {"ssid": "flat", "password": "short"}}, "bad_wifi"),
])
def test_bad_site_configs_are_refused_with_their_reason(data, reason):
    with pytest.raises(site.SiteConfigError) as e:
        site.from_dict(data)
    assert e.value.reason == reason


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path):
    f = tmp_path / "site.toml"
    f.write_text("grid = \n")
    with pytest.raises(site.SiteConfigError) as e:
        site.load(f)
    assert e.value.reason == "not_toml"
    with pytest.raises(site.SiteConfigError) as e:
        site.load(tmp_path / "missing.toml")
    assert e.value.reason == "no_file"


@pytest.mark.parametrize("device", [{"interval_s": 0}, {"no_such_key": 1}, {"batch_max": 100}])
def test_device_keys_the_firmware_would_refuse_at_boot_stop_the_build(device, tmp_path: Path):
    with pytest.raises(build.BuildError) as e:
        build.build(site.from_dict({"device": device}), tmp_path / "b")
    assert e.value.reason == "bad_device_config"
    assert not (tmp_path / "b").exists()
