"""The installer's whole day through the ``metanoia`` command: build, provision
(on the emulated board), label, and the utility's ``gateway devices add``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main as metanoia

pytestmark = pytest.mark.micropython

SITE = """grid = "oak-court"
gateway_url = "https://gw.oak-court.example"
[meter]
profile = "sdm120"
[broker]
host = "192.168.10.2"
"""


def test_build_provision_label_add(tmp_path: Path, capsys, monkeypatch):
    (tmp_path / "site.toml").write_text(SITE)
    assert metanoia(["device", "build", "--config", str(tmp_path / "site.toml"), "--out", str(tmp_path / "b"),
                     "--json"]) == 0
    built = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert built["modules"] > 20 and built["firmware_version"].startswith("0.1.0+")
    monkeypatch.setenv("METANOIA_WIFI_PASSWORD", "correct-horse-1")
    assert metanoia(["device", "provision", "--port", "emulator", "--bundle", str(tmp_path / "b"),
                     "--gateway", "https://gw.oak-court.example", "--grid", "oak-court", "--name", "101-A",
                     "--wifi-ssid", "flat-101", "--out", str(tmp_path / "records"), "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.splitlines()[-1])
    assert "configured and locked the ATECC608, generated its key" in out
    assert summary["profile"] == "sdm120" and summary["firmware_version"] == built["firmware_version"]
    record = Path(summary["record"])
    rec = json.loads(record.read_text())
    # No secret reaches the terminal: neither the claim code nor the Wi-Fi password.
    assert rec["claim_code"] not in out and "correct-horse-1" not in out
    assert metanoia(["device", "label", "--record", str(record), "--gateway", "https://gw.oak-court.example",
                     "--out", str(tmp_path / "labels.pdf")]) == 0
    assert (tmp_path / "labels.pdf").read_bytes().startswith(b"%PDF")
    assert metanoia(["gateway", "devices", "add", str(record), "--db", str(tmp_path / "gw.db")]) == 0
    assert f"added {rec['device_id']} grid=oak-court profile=sdm120" in capsys.readouterr().out


def test_refusals_print_their_reason_and_exit_2(tmp_path: Path, capsys):
    (tmp_path / "site.toml").write_text('grid = "oak court"\n')
    assert metanoia(["device", "build", "--config", str(tmp_path / "site.toml"), "--out", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.startswith("error [bad_grid]: grid 'oak court'")
    assert metanoia(["device", "flash", "--port", "/dev/ttyUSB0", "--dry-run"]) == 2
    assert "error [nothing_to_flash]" in capsys.readouterr().err
    assert metanoia(["device", "flash", "--port", "/dev/ttyUSB0", "--bundle", str(tmp_path), "--dry-run"]) == 2
    assert "error [no_bundle]" in capsys.readouterr().err
    assert metanoia(["device", "provision", "--port", "/dev/ttyNOPE", "--gateway", "http://gw", "--grid", "g"]) == 2
    assert "error [no_port]" in capsys.readouterr().err
