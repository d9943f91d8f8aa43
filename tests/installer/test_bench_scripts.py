"""hil/bench scripts are thin wrappers over the tested commands: what can run
without a board (a dry run, a rehearsal on the emulated board) runs here."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hil.firmware_host import ROOT

BENCH = ROOT / "hil" / "bench"
ENV = {**os.environ, "METANOIA": str(ROOT / ".venv" / "bin" / "metanoia")}


def test_flash_sh_builds_and_prints_the_flash_commands(tmp_path: Path):
    (tmp_path / "oak.toml").write_text('grid = "oak-court"\n')
    proc = subprocess.run([str(BENCH / "flash.sh"), "oak.toml", "/dev/ttyUSB0"], cwd=tmp_path,
                          env={**ENV, "DRY_RUN": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "modules compiled" in proc.stdout and (tmp_path / "bundle-oak" / "manifest.json").is_file()
    assert "mpremote connect /dev/ttyUSB0 cp -r device" in proc.stdout and "esptool" not in proc.stdout


def test_deploy_sh_keeps_the_device_config(tmp_path: Path):
    (tmp_path / "oak.toml").write_text('grid = "oak-court"\n')
    proc = subprocess.run([str(BENCH / "deploy.sh"), "oak.toml", "/dev/ttyUSB3"], cwd=tmp_path,
                          env={**ENV, "DRY_RUN": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cp -r device" in proc.stdout and "config.json" not in proc.stdout


@pytest.mark.micropython
def test_provision_sh_rehearses_on_the_emulated_board(tmp_path: Path):
    (tmp_path / "oak.toml").write_text('grid = "oak-court"\n')
    subprocess.run([str(BENCH / "flash.sh"), "oak.toml", "/dev/null"], cwd=tmp_path, env={**ENV, "DRY_RUN": "1"},
                   capture_output=True, check=True, timeout=120)
    proc = subprocess.run([str(BENCH / "provision.sh"), "emulator", "https://gw.oak", "oak-court", "101-A", "flat-101"],
                          cwd=tmp_path, env={**ENV, "BUNDLE": "bundle-oak", "METANOIA_WIFI_PASSWORD": "pass-word-1"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (record,) = (tmp_path / "records").iterdir()
    assert json.loads(record.read_text())["name"] == "101-A"
    assert (tmp_path / "labels" / f"{record.stem}.pdf").read_bytes().startswith(b"%PDF")


def test_check_readings_sh_refuses_missing_inputs(tmp_path: Path):
    proc = subprocess.run([str(BENCH / "check_readings.sh"), "nope.json", "gw.db"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no record nope.json" in proc.stderr
