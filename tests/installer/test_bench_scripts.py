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


def test_check_readings_sh_sees_signed_readings_stored_by_a_real_gateway(tmp_path: Path):
    """Mosquitto, `metanoia gateway run` and a device signing readings: the script
    says ok once two new ones are stored, and fails for a device whose signatures
    do not verify under the recorded key."""
    import sys
    import threading
    import time

    import paho.mqtt.client as paho

    from bench.signed_readings import SigningDevice
    from hil.broker import Mosquitto

    good, forger = SigningDevice.generate(), SigningDevice.generate()
    db = tmp_path / "gw.db"
    records = {}
    for name, dev in (("good", good), ("forged", forger)):
        rec = {"device_id": dev.device_id.hex(), "public_key": dev.public_key.hex(), "claim_code": "AAAA-BBBB-CCCC",
               "grid": "bench", "name": name}
        if dev is forger:  # registered with another key than the one it signs with
            rec["public_key"] = SigningDevice.generate().public_key.hex()
        records[name] = tmp_path / f"{name}.json"
        records[name].write_text(json.dumps(rec))
        subprocess.run([ENV["METANOIA"], "gateway", "devices", "add", str(records[name]), "--db", str(db)],
                       check=True, capture_output=True)
    stop = threading.Event()
    with Mosquitto() as broker:
        gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "gateway", "run", "--db", str(db), "--grid",
                               "bench", "--broker", f"{broker.host}:{broker.port}", "--workers", "0"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="devices")
        pub.connect(broker.host, broker.port)
        pub.loop_start()

        def publish() -> None:
            seq = 0
            while not stop.wait(0.5):
                seq += 1
                for dev in (good, forger):
                    pub.publish(f"metanoia/bench/{dev.device_id.hex()}/tele",
                                dev.reading(seq, int(time.time()), 1000 + seq), qos=1)

        t = threading.Thread(target=publish, daemon=True)
        t.start()
        try:
            env = {**ENV, "CHECK_EVERY": "1", "CHECK_TIMEOUT_S": "60"}
            ok = subprocess.run([str(BENCH / "check_readings.sh"), str(records["good"]), str(db)], env=env,
                                capture_output=True, text=True, timeout=120)
            assert ok.returncode == 0, ok.stdout + ok.stderr
            assert f"ok: signed readings from {good.device_id.hex()} arrive and verify" in ok.stdout
            env["CHECK_TIMEOUT_S"] = "6"
            bad = subprocess.run([str(BENCH / "check_readings.sh"), str(records["forged"]), str(db)], env=env,
                                 capture_output=True, text=True, timeout=120)
            assert bad.returncode == 1 and "no new readings" in bad.stderr
            assert "bad_signature" in bad.stderr  # the gateway's rejection counts point at the cause
        finally:
            stop.set()
            t.join(timeout=5)
            pub.loop_stop()
            pub.disconnect()
            gw.terminate()
            gw.wait(timeout=30)
