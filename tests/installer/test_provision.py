"""``metanoia device provision`` end to end in CI: the bundle on MicroPython
under Node (as on the board's REPL), the ATECC608 emulator answering the real
I2C packets, starting from a blank chip. The record goes into the gateway's
registry, and a reading the device then signs verifies under the recorded key."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gateway.cli import main as metanoia
from gateway.db import connect
from gateway.devices import DeviceRegistry
from gateway.installer import build, claim
from gateway.installer.provision import ProvisionError, provision
from gateway.telemetry.decode import decode_message, verify
from hil.mp_session import NodeSession

pytestmark = pytest.mark.micropython

BLANK_CHIP = "import atecc608_emulator as E\nBUS = E.ATECC608Emulator(provisioned=False, blank=True, seed=%r)\n"


@pytest.fixture()
def board(bundle: build.Bundle):
    """A freshly flashed board with a blank ATECC608 (state lives for the test)."""
    with NodeSession(bundle.fs) as s:
        s.exec(BLANK_CHIP % b"board-1")
        yield s


def sign_on_device(s: NodeSession) -> bytes:
    """What the device loop does at boot and per reading: the signer from the chip."""
    out = s.exec("import binascii\nfrom secure_sign.atecc608 import ATECC608, ATECC608Signer\n"
                 "from telemetry.cose import ReadingEncoder\n"
                 "sig = ATECC608Signer(ATECC608(BUS, 0x60), 0)\n"
                 "print(binascii.hexlify(ReadingEncoder(sig).encode(7, 1780000000, 1234, 56, 78, -90, 0)).decode())")
    return bytes.fromhex(out.strip())


def test_a_blank_chip_is_configured_locked_and_keyed_and_the_record_registers(board, bundle, tmp_path: Path,
                                                                             capsys):
    p = provision(board, gateway_url="https://gw.oak-court.example", grid="oak-court", name="101-A", bus="BUS",
                  out_dir=tmp_path / "records", wifi_ssid="flat-101", wifi_password="correct-horse-1")
    rec, dev = p.record, p.device
    assert dev["configured"] and dev["fresh_key"] and dev["firmware_version"] == bundle.version
    assert set(rec) == {"device_id", "public_key", "claim_code", "grid", "profile", "name"}
    assert rec["grid"] == "oak-court" and rec["profile"] == "sdm630" and rec["name"] == "101-A"
    assert claim.is_claim_code(rec["claim_code"])
    # The device id is the emulated chip's serial number, read over I2C.
    serial = board.exec("print(''.join('%02x' % b for b in BUS.serial))").strip()
    assert rec["device_id"] == serial
    # The chip really is locked and configured as the emulator's production layout says.
    cfg = json.loads(board.exec("import json\nprint(json.dumps([BUS.config[86], BUS.config[87], "
                                "BUS.config[20] | BUS.config[21] << 8, BUS.config[96] | BUS.config[97] << 8, "
                                "E.SLOT0_CONFIG, E.SLOT0_KEY_CONFIG]))"))
    assert cfg[:2] == [0, 0] and cfg[2:4] == cfg[4:6]
    # /config.json: the settings merged, the settings file gone.
    conf = json.loads(board.get("/config.json"))
    assert conf["wifi"] == {"ssid": "flat-101", "password": "correct-horse-1"} and conf["grid"] == "oak-court"
    assert "provision.json" not in board.exec("import os\nprint(os.listdir('/'))")
    # The record file: private (it holds the claim code), accepted by the gateway's CLI.
    assert p.path is not None and stat.S_IMODE(p.path.stat().st_mode) == 0o600
    db = tmp_path / "gateway.db"
    assert metanoia(["gateway", "devices", "add", str(p.path), "--db", str(db)]) == 0
    reg = DeviceRegistry(connect(db))
    stored = reg.get(rec["device_id"])
    assert stored is not None and stored.public_key.hex() == rec["public_key"] and stored.grid == "oak-court"
    # A reading signed by the provisioned chip verifies under the pinned key, and
    # the claim code on the label pairs the device once.
    (sign1,) = decode_message(sign_on_device(board))
    reading = verify(sign1, stored.public_key_pem())
    assert reading.seq == 7 and reading.import_wh == 1234 and reading.device_id.hex() == rec["device_id"]
    assert reg.pair(rec["device_id"], "apt-101", rec["claim_code"]).household == "apt-101"


def test_a_second_provision_keeps_the_key_and_makes_a_new_claim_code(board):
    first = provision(board, gateway_url="http://gw:8080", grid="oak-court", bus="BUS")
    again = provision(board, gateway_url="http://gw:8080", grid="oak-court", bus="BUS")
    assert not again.device["configured"] and not again.device["fresh_key"]
    assert again.record["public_key"] == first.record["public_key"]
    assert again.record["claim_code"] != first.record["claim_code"]


def test_another_chip_gives_another_identity(bundle):
    with NodeSession(bundle.fs) as s:
        s.exec(BLANK_CHIP % b"board-2")
        other = provision(s, gateway_url="http://gw", grid="oak-court", bus="BUS").record
    with NodeSession(bundle.fs) as s:
        s.exec(BLANK_CHIP % b"board-3")
        third = provision(s, gateway_url="http://gw", grid="oak-court", bus="BUS").record
    assert other["device_id"] != third["device_id"] and other["public_key"] != third["public_key"]


def test_a_chip_locked_with_a_foreign_layout_is_refused(bundle):
    with NodeSession(bundle.fs) as s:
        s.exec(BLANK_CHIP % b"foreign" + "BUS.set_locked(config=True)\n")
        with pytest.raises(ProvisionError) as e:
            provision(s, gateway_url="http://gw", grid="oak-court", bus="BUS")
    assert e.value.reason == "chip_config" and "new, unconfigured chip" in str(e.value)


def test_no_chip_on_the_bus_says_check_the_wiring(bundle):
    with NodeSession(bundle.fs) as s:
        s.exec("import atecc608_emulator as E\nBUS = E.ATECC608Emulator(address=0x35)\n")
        with pytest.raises(ProvisionError) as e:
            provision(s, gateway_url="http://gw", grid="oak-court", bus="BUS")
        assert e.value.reason == "no_chip" and "wiring" in str(e.value)
        # Nothing was written to the device's config.
        assert json.loads(s.get("/config.json"))["wifi"]["ssid"] == ""


def test_a_board_without_the_firmware_is_told_to_flash_first(tmp_path: Path):
    (tmp_path / "fs").mkdir()
    with NodeSession(tmp_path / "fs") as s:
        with pytest.raises(ProvisionError) as e:
            provision(s, gateway_url="http://gw", grid="oak-court")
    assert e.value.reason == "no_firmware"


@pytest.mark.parametrize("kw, reason", [
    ({"grid": "oak court"}, "bad_grid"),
    ({"grid": "oak", "gateway_url": "gw.example"}, "bad_url"),
    ({"grid": "oak", "wifi_ssid": "flat", "wifi_password": "short"}, "bad_wifi"),
    ({"grid": "oak", "name": "x" * 65}, "bad_name"),
])
def test_bad_arguments_are_refused_before_touching_the_device(kw, reason, bundle):
    class NoDevice:
        def exec(self, code: str, timeout: float = 60.0) -> str:
            raise AssertionError("the device must not be touched")

        put = get = exec  # type: ignore[assignment]

    args = {"gateway_url": "http://gw", **kw}
    with pytest.raises(Exception) as e:
        provision(NoDevice(), **args)  # type: ignore[arg-type]
    assert getattr(e.value, "reason", None) == reason


def test_claim_codes_are_random_unambiguous_and_60_bits():
    codes = {claim.new_claim_code() for _ in range(2000)}
    assert len(codes) == 2000
    assert all(claim.is_claim_code(c) and len(c) == 14 for c in codes)
    used = set("".join(codes).replace("-", ""))
    assert not used & set("ILOU") and len(used) == 32
    assert claim.BITS >= 50
    assert claim.group_device_id("0123ee4f5d8c1a7b01") == "0123 EE4F 5D8C 1A7B 01"


def test_the_broker_credential_issued_after_registration_lands_on_its_device_only(board, tmp_path: Path, capsys):
    from gateway.installer.provision import configure

    p = provision(board, gateway_url="https://gw", grid="oak-court", bus="BUS", out_dir=tmp_path / "r")
    db, out = str(tmp_path / "gw.db"), tmp_path / "broker"
    assert metanoia(["gateway", "devices", "add", str(p.path), "--db", db]) == 0
    assert metanoia(["gateway", "broker-config", "--db", db, "--out", str(out), "--grid", "oak-court",
                     "--hostname", "192.168.10.2"]) == 0
    cred = out / "credentials" / f"{p.record['device_id']}.json"
    ca = (out / "ca.crt").read_bytes()
    with pytest.raises(ProvisionError) as e:
        configure(board, credentials=cred, bus="BUS")
    assert e.value.reason == "missing_ca"
    # Another device's credential is refused before anything is written.
    other = tmp_path / "other.json"
    other.write_text(cred.read_text().replace(p.record["device_id"], "0123456789abcdefee"))
    with pytest.raises(ProvisionError) as e:
        configure(board, credentials=other, ca=ca, bus="BUS")
    assert e.value.reason == "bad_device_config" and "0123456789abcdefee" in str(e.value)
    assert "password" not in json.loads(board.get("/config.json"))["mqtt"]
    dev = configure(board, credentials=cred, ca=ca, bus="BUS")
    assert dev["device_id"] == p.record["device_id"] and dev["ssl"] and dev["mqtt_host"] == "192.168.10.2"
    conf = json.loads(board.get("/config.json"))
    assert conf["mqtt"] == json.loads(cred.read_text())["mqtt"] and board.get("/ca.crt") == ca
    assert conf["grid"] == "oak-court"
