"""Device config: defaults that work, overrides merged, typos refused."""

import json

import pytest

from device import config


def test_missing_file_gives_the_documented_defaults(tmp_path):
    cfg = config.load(str(tmp_path / "none.json"))
    assert cfg == config.merge(config.DEFAULTS, {})
    assert cfg["interval_s"] == 60 and cfg["signer"]["type"] == "atecc608"


def test_nested_override_keeps_sibling_defaults(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"grid": "gangnam-1", "mqtt": {"host": "10.0.0.2"},
                             "grid_meter": {"profile": "sdm120", "baudrate": 2400}}))
    cfg = config.load(str(p))
    assert cfg["grid"] == "gangnam-1"
    assert cfg["mqtt"]["host"] == "10.0.0.2" and cfg["mqtt"]["port"] == 1883
    assert cfg["grid_meter"]["baudrate"] == 2400 and cfg["grid_meter"]["de"] == 4


@pytest.mark.parametrize("bad, why", [
    ({"intreval_s": 5}, "unknown config key intreval_s"),
    ({"mqtt": {"hots": "x"}}, "unknown config key mqtt.hots"),
    ({"interval_s": 0}, "interval_s"),
    ({"batch_max": 100, "window": 10}, "batch_max"),
    ({"batch_max": 65, "window": 128}, "batch_max"),  # the gateway refuses arrays over 64
])
def test_bad_config_is_refused_with_its_reason(tmp_path, bad, why):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(config.ConfigError, match=why):
        config.load(str(p))


def test_config_that_is_not_json_is_refused(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{grid: nope")
    with pytest.raises(config.ConfigError, match="not JSON"):
        config.load(str(p))


def test_config_loads_on_micropython(mp):
    out = mp("from device import config\n"
             "c = config.load('/config.json')\n"
             "print(c['grid'], c['mqtt']['port'], c['grid_meter']['baudrate'])",
             files={"/config.json": '{"grid": "g1", "grid_meter": {"baudrate": 2400}}'})
    assert out.stdout.split() == ["g1", "1883", "2400"]
