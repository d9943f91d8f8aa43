"""The device registry: provisioning records in (strictly checked), pinned keys out,
single-use pairing by claim code, revocation; and its CLI."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.cli import main as metanoia
from gateway.db import connect
from gateway.devices import (BadRecordError, ClaimError, DeviceRecord, DeviceRegistry, DeviceRegistryError,
                             DeviceRevokedError, DuplicateDeviceError, UnknownDeviceError, claim_hash_of,
                             record_from_dict)

CODE = "K7QF-2M9X-PL4D"


def keypair(seed: int) -> tuple[bytes, str]:
    key = ec.derive_private_key(1000 + seed, ec.SECP256R1()).public_key()
    raw = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return raw, pem


def record(n: int = 1, **over: Any) -> dict[str, Any]:
    raw, _ = keypair(n)
    rec: dict[str, Any] = {"device_id": f"{n:018x}", "public_key": raw.hex(), "claim_code": f"{CODE}-{n}",
                           "profile": "sdm630", "grid": "oak-court"}
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not None}


@pytest.fixture
def reg(tmp_path: Path) -> DeviceRegistry:
    clock = iter(range(1_780_000_000, 1_780_100_000))
    return DeviceRegistry(connect(tmp_path / "gw.db"), clock=lambda: next(clock))


def test_add_then_get_returns_the_record_with_raw_key_and_only_the_claim_hash(reg: DeviceRegistry):
    rec = reg.add(record(1))
    got = reg.get(bytes.fromhex(f"{1:018x}"))
    assert got == rec
    assert got.public_key == keypair(1)[0] and len(got.public_key) == 64
    assert got.claim_hash == hashlib.sha256(f"{CODE}-1".encode()).digest()
    assert (got.status, got.household, got.revoked_at, got.grid) == ("active", None, None, "oak-court")
    assert got.added_at == 1_780_000_000
    # The claim code itself is stored nowhere.
    dump = b"".join(bytes(str(r), "utf8") for r in reg.conn.execute("SELECT * FROM devices"))
    assert CODE.encode() not in dump


@pytest.mark.parametrize("form", ["raw_hex", "sec1_hex", "compressed_hex", "pem", "pem_key_name"])
def test_every_public_key_form_gives_the_same_raw_key(reg: DeviceRegistry, form: str):
    raw, pem = keypair(2)
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    value = {"raw_hex": raw.hex(), "sec1_hex": (b"\x04" + raw).hex(),
             "compressed_hex": point.public_bytes(serialization.Encoding.X962,
                                                  serialization.PublicFormat.CompressedPoint).hex(),
             "pem": pem, "pem_key_name": pem}[form]
    rec = record(2, public_key=None) | ({"public_key_pem": value} if form == "pem_key_name" else
                                       {"public_key": value})
    assert reg.add(rec).public_key == raw


def test_a_claim_hash_record_and_a_claim_code_record_are_the_same(reg: DeviceRegistry):
    a = record_from_dict(record(3))
    b = record_from_dict(record(3, claim_code=None, claim_hash=claim_hash_of(f"{CODE}-3").hex()))
    assert a == b


def test_device_json_from_device_sim_is_accepted_with_a_claim_code_from_the_command_line(reg: DeviceRegistry):
    raw, pem = keypair(4)
    ident = {"device_id": "ab" * 9, "public_key_pem": pem, "grid": "demo", "name": "101-A"}
    with pytest.raises(BadRecordError) as e:
        reg.add(ident)
    assert e.value.reason == "missing_key"  # no claim
    rec = reg.add(ident, claim_code=CODE)
    assert (rec.public_key, rec.grid, rec.name, rec.profile) == (raw, "demo", "101-A", "unspecified")


@pytest.mark.parametrize("over, reason", [
    ({"device_id": "00" * 8}, "bad_device_id"),
    ({"device_id": "00" * 10}, "bad_device_id"),
    ({"device_id": "zz" * 9}, "bad_device_id"),
    ({"device_id": None}, "missing_key"),
    ({"public_key": "00" * 64}, "bad_key"),                      # not a point on P-256
    ({"public_key": keypair(1)[0][:63].hex()}, "bad_key"),        # wrong length
    ({"public_key": "nothex"}, "bad_key"),
    ({"public_key": None}, "missing_key"),
    ({"claim_code": "short"}, "bad_claim"),
    ({"claim_code": None}, "missing_key"),
    ({"claim_hash": "00" * 31}, "bad_claim"),
    ({"claim_hash": "11" * 32}, "bad_claim"),                     # disagrees with the claim code
    ({"grid": "oak/court"}, "bad_grid"),                          # would escape its MQTT topic
    ({"grid": "+"}, "bad_grid"),
    ({"grid": None}, "missing_key"),
    ({"profile": "sdm 630"}, "bad_profile"),
    ({"colour": "red"}, "unknown_key"),
])
def test_bad_provisioning_records_are_refused_with_a_specific_reason(reg: DeviceRegistry, over: dict[str, Any],
                                                                     reason: str):
    with pytest.raises(BadRecordError) as e:
        reg.add(record(1, **over))
    assert e.value.reason == reason
    assert reg.list() == []


def test_a_p384_key_is_refused(reg: DeviceRegistry):
    pem = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(BadRecordError) as e:
        reg.add(record(1, public_key=pem))
    assert e.value.reason == "bad_key"


def test_a_record_object_is_validated_too():
    with pytest.raises(BadRecordError):
        DeviceRecord(device_id=b"\x01" * 8, public_key=keypair(1)[0], claim_hash=b"\0" * 32, profile="x",
                     grid="g")


def test_duplicate_device_and_duplicate_key_are_refused(reg: DeviceRegistry):
    reg.add(record(1))
    with pytest.raises(DuplicateDeviceError) as e:
        reg.add(record(1, claim_code="another-code-1"))
    assert e.value.reason == "duplicate_device"
    with pytest.raises(DuplicateDeviceError) as e:  # a second id claiming the same secure element key
        reg.add(record(2, public_key=keypair(1)[0].hex()))
    assert e.value.reason == "duplicate_key"
    assert len(reg.list()) == 1


def test_list_filters_by_grid_and_active_keys_excludes_revoked_and_other_grids(reg: DeviceRegistry):
    for n in (1, 2, 3):
        reg.add(record(n))
    reg.add(record(4, grid="elm-row"))
    reg.revoke(f"{2:018x}", "meter replaced")
    assert [r.device_id[-1] for r in reg.list("oak-court")] == [1, 2, 3]
    assert [r.device_id[-1] for r in reg.list(status="revoked")] == [2]
    keys = reg.active_keys("oak-court")
    assert keys == {bytes.fromhex(f"{n:018x}"): keypair(n)[0] for n in (1, 3)}
    assert set(reg.active_keys("elm-row")) == {bytes.fromhex(f"{4:018x}")}


def test_revoke_records_time_and_reason_once_and_unknown_devices_are_errors(reg: DeviceRegistry):
    reg.add(record(1))
    rec = reg.revoke(f"{1:018x}", "tampering suspected")
    assert (rec.status, rec.revoke_reason) == ("revoked", "tampering suspected") and rec.revoked_at
    with pytest.raises(DeviceRevokedError):
        reg.revoke(f"{1:018x}", "again")
    assert reg.get(f"{1:018x}").revoke_reason == "tampering suspected"
    with pytest.raises(UnknownDeviceError):
        reg.revoke(f"{9:018x}", "x")
    with pytest.raises(DeviceRegistryError):
        reg.revoke(f"{1:018x}", "  ")
    assert reg.get(f"{9:018x}") is None


def test_pairing_needs_the_right_claim_code_and_works_once(reg: DeviceRegistry):
    reg.add(record(1))
    dev = f"{1:018x}"
    with pytest.raises(ClaimError):
        reg.pair(dev, "apt-101", "WRONG-CODE-000")
    with pytest.raises(ClaimError):
        reg.pair(dev, "apt-101", "")
    assert reg.get(dev).household is None
    rec = reg.pair(dev, "apt-101", f"{CODE}-1")
    assert rec.household == "apt-101" and rec.paired_at
    with pytest.raises(ClaimError) as e:  # the code is spent, even for the same household
        reg.pair(dev, "apt-102", f"{CODE}-1")
    assert e.value.reason == "claim_used"
    assert reg.get(dev).household == "apt-101"


def test_concurrent_claims_of_one_code_pair_exactly_once(tmp_path: Path):
    db = tmp_path / "gw.db"
    DeviceRegistry(connect(db)).add(record(1))
    results: list[str] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        reg = DeviceRegistry(connect(db))
        barrier.wait()
        try:
            reg.pair(f"{1:018x}", f"apt-{i}", f"{CODE}-1")
            results.append("ok")
        except ClaimError:
            results.append("refused")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["refused"] * 7


def test_revoked_or_unknown_devices_cannot_be_paired(reg: DeviceRegistry):
    reg.add(record(1))
    reg.revoke(f"{1:018x}", "stolen")
    with pytest.raises(DeviceRevokedError):
        reg.pair(f"{1:018x}", "apt-1", f"{CODE}-1")
    with pytest.raises(UnknownDeviceError):
        reg.pair(f"{7:018x}", "apt-1", f"{CODE}-7")


# -- CLI ------------------------------------------------------------------------------------

def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = metanoia(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_add_list_show_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    db = str(tmp_path / "gw.db")
    f = tmp_path / "rec.json"
    f.write_text(json.dumps(record(1)))
    assert run(capsys, "gateway", "devices", "add", str(f), "--db", db)[0] == 0
    rc, out, _ = run(capsys, "gateway", "devices", "add", "--json", json.dumps(record(2, claim_code=None)),
                     "--claim-code", "CLI-CODE-0002", "--db", db)
    assert rc == 0 and f"{2:018x}" in out
    rc, out, err = run(capsys, "gateway", "devices", "add", str(f), "--db", db)
    assert rc == 1 and "already registered" in err
    rc, out, err = run(capsys, "gateway", "devices", "add", "--json", json.dumps(record(3, device_id="abc")),
                       "--db", db)
    assert rc == 2 and "device_id" in err
    rc, out, _ = run(capsys, "gateway", "devices", "revoke", f"{1:018x}", "--reason", "replaced", "--db", db)
    assert rc == 0
    rc, out, _ = run(capsys, "gateway", "devices", "list", "--json", "--db", db)
    listing = json.loads(out.strip().splitlines()[-1])
    assert listing["count"] == 2
    assert {d["device_id"]: d["status"] for d in listing["devices"]} == {f"{1:018x}": "revoked",
                                                                      f"{2:018x}": "active"}
    assert all("claim" not in k for d in listing["devices"] for k in d)
    rc, out, _ = run(capsys, "gateway", "devices", "show", f"{2:018x}", "--json", "--db", db)
    shown = json.loads(out.strip().splitlines()[-1])
    assert shown["public_key"] == keypair(2)[0].hex() and "BEGIN PUBLIC KEY" in shown["public_key_pem"]
    rc, _, err = run(capsys, "gateway", "devices", "show", f"{9:018x}", "--db", db)
    assert rc == 1 and "no device" in err
    rc, _, err = run(capsys, "gateway", "devices", "revoke", f"{1:018x}", "--reason", "x", "--db", db)
    assert rc == 1 and "already revoked" in err
