"""`metanoia telemetry decode FILE --key DEVICE.json [--json]` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "telemetry.json").read_text())
KEY = VECTORS["key"]
MESSAGES = {v["name"]: bytes.fromhex(v["message_hex"]) for v in VECTORS["readings"]}
READING_KEYS = {"device_id", "seq", "time", "import_wh", "export_wh", "pv_wh", "power_w", "flags", "valid"}


@pytest.fixture
def device(tmp_path):
    path = tmp_path / "DEVICE.json"
    path.write_text(json.dumps({"device_id": KEY["device_id"], "public_key_pem": KEY["public_key_pem"]}))
    return path


def write(tmp_path, name, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def run(capsys, *argv):
    code = main(["telemetry", "decode", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_valid_reading_exits_0_and_prints_it(tmp_path, device, capsys):
    code, out, _err = run(capsys, write(tmp_path, "m.cbor", MESSAGES["typical"]), "--key", device)
    assert code == 0
    assert "VALID" in out and "seq        1234" in out and "power_w    1530" in out


def test_json_is_one_object_on_the_last_line(tmp_path, device, capsys):
    code, out, _err = run(capsys, write(tmp_path, "m.cbor", MESSAGES["exporting_offline_backlog"]), "--key", device,
                          "--json")
    doc = json.loads(out.splitlines()[-1])
    assert code == 0 and set(doc) == READING_KEYS
    want = dict(next(v for v in VECTORS["readings"] if v["name"] == "exporting_offline_backlog")["reading"])
    assert doc == dict(want, valid=True)


def test_hex_text_file_is_accepted(tmp_path, device, capsys):
    path = tmp_path / "m.hex"
    path.write_text(MESSAGES["worst_case_size"].hex() + "\n")
    code, out, _err = run(capsys, path, "--key", device, "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["seq"] == 2**32 - 1


def test_array_message_prints_each_reading(tmp_path, device, capsys):
    data = bytes.fromhex(VECTORS["batch"]["message_hex"])
    code, out, _err = run(capsys, write(tmp_path, "b.cbor", data), "--key", device, "--json")
    doc = json.loads(out.splitlines()[-1])
    assert code == 0 and doc["valid"] is True and doc["count"] == 3
    assert [r["seq"] for r in doc["readings"]] == [1234, 86400, 0]
    assert all(set(r) == READING_KEYS for r in doc["readings"])
    assert "reading 1/3: VALID" in out and "reading 3/3: VALID" in out


def test_array_with_one_bad_signature_exits_1_and_marks_it(tmp_path, device, capsys):
    bad = bytearray(MESSAGES["typical"])
    bad[-1] ^= 1
    data = cbor2.dumps([cbor2.loads(MESSAGES["first_boot_clock_unsynced"]), cbor2.loads(bytes(bad))])
    code, out, err = run(capsys, write(tmp_path, "b.cbor", data), "--key", device, "--json")
    doc = json.loads(out.splitlines()[-1])
    assert code == 1 and doc["valid"] is False
    assert [r["valid"] for r in doc["readings"]] == [True, False]
    assert doc["readings"][1]["reason"] == "bad_signature" and "bad_signature" in err


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_message_exits_1_with_its_reason(tmp_path, device, capsys, vector):
    code, out, err = run(capsys, write(tmp_path, "m.cbor", bytes.fromhex(vector["message_hex"])), "--key", device,
                         "--json")
    assert code == 1
    assert vector["reason"] in err
    doc = json.loads(out.splitlines()[-1])
    assert doc["valid"] is False and doc.get("reason", "") in (vector["reason"], "")
    reasons = {doc.get("reason")} | {r.get("reason") for r in doc.get("readings", [])}
    assert vector["reason"] in reasons


def test_message_of_another_device_is_wrong_device(tmp_path, capsys):
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    dev = tmp_path / "OTHER.json"
    dev.write_text(json.dumps({"device_id": "0123000000000001ee", "public_key_pem": pem}))
    code, _out, err = run(capsys, write(tmp_path, "m.cbor", MESSAGES["typical"]), "--key", dev)
    assert code == 1 and "wrong_device" in err


def test_right_device_id_but_wrong_key_is_bad_signature(tmp_path, capsys):
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    dev = tmp_path / "D.json"
    dev.write_text(json.dumps({"device_id": KEY["device_id"], "public_key_pem": pem}))
    code, out, err = run(capsys, write(tmp_path, "m.cbor", MESSAGES["typical"]), "--key", dev)
    assert code == 1 and "bad_signature" in err and "INVALID (bad_signature)" in out


@pytest.mark.parametrize("content,needle", [
    (None, "cannot read"),
    ("not json", "not JSON"),
    ("[]", "JSON object"),
    (json.dumps({"device_id": "0123"}), "needs device_id"),
    (json.dumps({"device_id": KEY["device_id"], "public_key_pem": "-----BEGIN PUBLIC KEY-----\nAAAA\n"}), "bad_key"),
])
def test_unusable_key_file_exits_2(tmp_path, capsys, content, needle):
    dev = tmp_path / "DEVICE.json"
    if content is not None:
        dev.write_text(content)
    code, _out, err = run(capsys, write(tmp_path, "m.cbor", MESSAGES["typical"]), "--key", dev)
    assert code == 2 and needle in err


def test_missing_message_file_exits_2(tmp_path, device, capsys):
    code, _out, err = run(capsys, tmp_path / "nope.cbor", "--key", device)
    assert code == 2 and "cannot read" in err


def test_console_script_end_to_end_with_stdin(device):
    """The real process: exit codes and the JSON last line through the `metanoia` console script."""
    metanoia = str(Path(sys.executable).with_name("metanoia"))
    ok = subprocess.run([metanoia, "telemetry", "decode", "-", "--key", str(device),
                         "--json"], input=MESSAGES["typical"], capture_output=True, cwd=ROOT, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.decode().splitlines()[-1])["valid"] is True
    bad = subprocess.run([metanoia, "telemetry", "decode", "-", "--key", str(device)],
                         input=MESSAGES["typical"][:-1], capture_output=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 1 and b"not_cbor" in bad.stderr
