"""Generate tests/vectors/telemetry.json: the telemetry format's shared test vectors.

Independent of both the firmware encoder and the gateway decoder: messages are
built here with cbor2 (canonical mode) and signed with python-ecdsa's RFC 6979
deterministic ECDSA, so re-running gives the same file byte for byte, and the
firmware's software signer (RFC 6979 too) must reproduce the signatures.

    .venv/bin/python tests/vectors/make_telemetry_vectors.py          # rewrite
    .venv/bin/python tests/vectors/make_telemetry_vectors.py --check  # verify up to date
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import cbor2
from ecdsa import NIST256p, SigningKey
from ecdsa.util import sigencode_string

OUT = Path(__file__).with_name("telemetry.json")

# A fixed, public test key. Never used outside tests.
PRIVATE_KEY = hashlib.sha256(b"metanoia-edge telemetry test vector key").digest()
DEVICE_ID = bytes.fromhex("0123a1b2c3d4e5f6ee")  # ATECC608-style serial: 01 23 .. .. ee
OTHER_DEVICE_ID = bytes.fromhex("0123000000000001ee")

PROTECTED = cbor2.dumps({1: -7}, canonical=True)  # a1 01 26
FLAG_CLOCK_UNSYNCED = 0x04
FLAG_SOFTWARE_KEY = 0x08
U32 = 2**32 - 1

# (name, encoder arguments, signer is software?)
READINGS: list[tuple[str, dict[str, int], bool]] = [
    ("typical", dict(seq=1234, time=1767225600, import_wh=5123456, export_wh=1234567, pv_wh=2345678,
                     power_w=1530, flags=0), False),
    ("first_boot_clock_unsynced", dict(seq=0, time=0, import_wh=0, export_wh=0, pv_wh=0,
                                       power_w=0, flags=0), True),
    ("exporting_offline_backlog", dict(seq=86400, time=1767312000, import_wh=5200000, export_wh=1300000,
                                       pv_wh=2500000, power_w=-4200, flags=0x20), True),
    ("worst_case_size", dict(seq=U32, time=U32, import_wh=U32, export_wh=U32, pv_wh=U32,
                             power_w=-(2**31), flags=0x37), False),
    ("max_power_meter_and_inverter_error", dict(seq=U32 - 1, time=1767225601, import_wh=U32,
                                                export_wh=U32, pv_wh=U32, power_w=2**31 - 1,
                                                flags=0x03), True),
    ("head_boundaries_23_24", dict(seq=23, time=24, import_wh=255, export_wh=256, pv_wh=65535,
                                   power_w=-24, flags=0x10), False),
    ("head_boundaries_65536", dict(seq=65536, time=65535, import_wh=65536, export_wh=2**24,
                                   pv_wh=2**31, power_w=-25, flags=0), False),
    ("negative_head_boundaries", dict(seq=7, time=1767225602, import_wh=1, export_wh=2, pv_wh=3,
                                      power_w=-256, flags=0), False),
    ("negative_head_boundaries_2", dict(seq=8, time=1767225603, import_wh=1, export_wh=2, pv_wh=3,
                                        power_w=-257, flags=0), False),
    ("negative_16_bit_edge", dict(seq=9, time=1767225604, import_wh=1, export_wh=2, pv_wh=3,
                                  power_w=-65537, flags=0), False),
]
BATCH = ("typical", "exporting_offline_backlog", "first_boot_clock_unsynced")


def signing_key() -> SigningKey:
    return SigningKey.from_string(PRIVATE_KEY, curve=NIST256p)


def sign(digest: bytes) -> bytes:
    return signing_key().sign_digest_deterministic(digest, hashfunc=hashlib.sha256, sigencode=sigencode_string)


def payload_of(device_id: bytes, r: dict[str, int]) -> bytes:
    return cbor2.dumps({1: device_id, 2: r["seq"], 3: r["time"], 4: r["import_wh"], 5: r["export_wh"],
                        6: r["pv_wh"], 7: r["power_w"], 8: r["flags"]}, canonical=True)


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload], canonical=True)


def sign1(protected: bytes, kid: bytes, payload: bytes, signature: bytes) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {4: kid}, payload, signature]), canonical=True)


def signed(payload: bytes, protected: bytes = PROTECTED, kid: bytes = DEVICE_ID) -> bytes:
    sig = sign(hashlib.sha256(sig_structure(protected, payload)).digest())
    return sign1(protected, kid, payload, sig)


def reading_vector(name: str, args: dict[str, int], software: bool) -> dict[str, object]:
    flags = args["flags"] | (FLAG_SOFTWARE_KEY if software else 0) | (FLAG_CLOCK_UNSYNCED if args["time"] == 0 else 0)
    reading = dict(args, flags=flags)
    payload = payload_of(DEVICE_ID, reading)
    tbs = sig_structure(PROTECTED, payload)
    digest = hashlib.sha256(tbs).digest()
    sig = sign(digest)
    message = sign1(PROTECTED, DEVICE_ID, payload, sig)
    return {
        "name": name,
        "encode": args,
        "software_key": software,
        "reading": dict(reading, device_id=DEVICE_ID.hex()),
        "payload_hex": payload.hex(),
        "sig_structure_hex": tbs.hex(),
        "digest_hex": digest.hex(),
        "signature_hex": sig.hex(),
        "message_hex": message.hex(),
        "size": len(message),
    }


def invalid_vectors(valid: dict[str, bytes]) -> list[dict[str, str]]:
    """Messages that must be rejected, each with the one reason it must give."""
    base = valid["typical"]
    msg = cbor2.loads(base).value
    prot, _uhdr, payload, sig = msg
    good = payload_of(DEVICE_ID, dict(seq=1, time=1767225600, import_wh=1, export_wh=2, pv_wh=3,
                                      power_w=4, flags=0))
    tampered_payload = bytearray(payload)
    tampered_payload[-3] ^= 0x01  # a bit of the power value; still well-formed
    flipped_sig = bytearray(sig)
    flipped_sig[10] ^= 0x80
    other = SigningKey.from_string(hashlib.sha256(b"another key").digest(), curve=NIST256p)
    other_sig = other.sign_digest_deterministic(hashlib.sha256(sig_structure(prot, payload)).digest(),
                                                hashfunc=hashlib.sha256, sigencode=sigencode_string)
    nine_keys = cbor2.loads(good)
    nine_keys[9] = 0
    cases: list[tuple[str, bytes, str]] = [
        ("empty", b"", "not_cbor"),
        ("truncated", base[:-1], "not_cbor"),
        ("trailing_byte", base + b"\x00", "trailing_data"),
        ("oversize", cbor2.dumps(cbor2.CBORTag(18, [prot, {4: DEVICE_ID}, payload, sig + bytes(20000)])),
         "oversize"),
        ("untagged", cbor2.dumps([prot, {4: DEVICE_ID}, payload, sig]), "not_sign1_tag"),
        ("tag_17_mac0", cbor2.dumps(cbor2.CBORTag(17, [prot, {4: DEVICE_ID}, payload, sig])), "not_sign1_tag"),
        ("three_elements", cbor2.dumps(cbor2.CBORTag(18, [prot, {4: DEVICE_ID}, payload])), "bad_structure"),
        ("alg_es384", signed(good, protected=cbor2.dumps({1: -35})), "alg_not_es256"),
        ("no_alg", signed(good, protected=cbor2.dumps({3: 0})), "alg_not_es256"),
        ("protected_extra_param", signed(good, protected=cbor2.dumps({1: -7, 4: DEVICE_ID})),
         "bad_protected_header"),
        ("protected_empty_bstr", signed(good, protected=b""), "alg_not_es256"),
        ("protected_not_a_map", signed(good, protected=cbor2.dumps([1, -7])), "bad_protected_header"),
        ("unprotected_extra_label", cbor2.dumps(cbor2.CBORTag(18, [prot, {4: DEVICE_ID, 99: 1}, payload, sig])),
         "bad_unprotected_header"),
        ("kid_missing", cbor2.dumps(cbor2.CBORTag(18, [prot, {}, payload, sig])), "bad_kid"),
        ("kid_8_bytes", cbor2.dumps(cbor2.CBORTag(18, [prot, {4: DEVICE_ID[:8]}, payload, sig])), "bad_kid"),
        ("kid_other_device", cbor2.dumps(cbor2.CBORTag(18, [prot, {4: OTHER_DEVICE_ID}, payload, sig])),
         "kid_mismatch"),
        ("payload_nine_keys", signed(cbor2.dumps(nine_keys, canonical=True)), "bad_payload"),
        ("payload_negative_seq", signed(cbor2.dumps({**cbor2.loads(good), 2: -1}, canonical=True)),
         "bad_payload"),
        ("payload_unknown_flag_bit", signed(cbor2.dumps({**cbor2.loads(good), 8: 0x40}, canonical=True)),
         "bad_payload"),
        ("payload_duplicate_key", signed(b"\xa9" + good[1:] + b"\x08\x01"), "bad_payload"),
        ("payload_float_power", signed(cbor2.dumps({**cbor2.loads(good), 7: 4.0}, canonical=True)), "bad_payload"),
        ("payload_bool_flags", signed(cbor2.dumps({**cbor2.loads(good), 8: False}, canonical=True)), "bad_payload"),
        ("payload_bignum_tag_seq", signed(cbor2.dumps({**cbor2.loads(good), 2: cbor2.CBORTag(2, b"\x01")},
                                                      canonical=True)), "bad_payload"),
        ("payload_time_uint64", signed(cbor2.dumps({**cbor2.loads(good), 3: 2**32}, canonical=True)), "bad_payload"),
        ("empty_batch", b"\x80", "empty_batch"),
        ("batch_of_65", cbor2.dumps([cbor2.loads(base)] * 65), "batch_too_large"),
        ("batch_with_a_non_message", cbor2.dumps([cbor2.loads(base), 1]), "not_sign1_tag"),
        ("detached_payload", cbor2.dumps(cbor2.CBORTag(18, [prot, {4: DEVICE_ID}, None, sig])), "bad_payload"),
        ("signature_der_length", cbor2.dumps(cbor2.CBORTag(18, [prot, {4: DEVICE_ID}, payload, sig[:63]])),
         "bad_signature_length"),
        ("tampered_payload", sign1(prot, DEVICE_ID, bytes(tampered_payload), sig), "bad_signature"),
        ("flipped_signature_bit", sign1(prot, DEVICE_ID, payload, bytes(flipped_sig)), "bad_signature"),
        ("signed_by_another_key", sign1(prot, DEVICE_ID, payload, other_sig), "bad_signature"),
    ]
    return [{"name": n, "message_hex": m.hex(), "reason": r} for n, m, r in cases]


def build() -> dict[str, object]:
    vk = signing_key().get_verifying_key()
    readings = [reading_vector(n, a, s) for n, a, s in READINGS]
    by_name = {v["name"]: bytes.fromhex(str(v["message_hex"])) for v in readings}
    batch = cbor2.dumps([cbor2.loads(by_name[n]) for n in BATCH], canonical=True)
    return {
        "description": "Metanoia telemetry test vectors (COSE_Sign1, ES256). Generated by "
                       "make_telemetry_vectors.py; see docs/telemetry.md.",
        "key": {
            "private_key_hex": PRIVATE_KEY.hex(),
            "public_key_hex": vk.to_string("raw").hex(),
            "public_key_pem": vk.to_pem().decode(),
            "device_id": DEVICE_ID.hex(),
        },
        "protected_hex": PROTECTED.hex(),
        "readings": readings,
        "batch": {"names": list(BATCH), "message_hex": batch.hex()},
        "invalid": invalid_vectors(by_name),
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else "tests/vectors/telemetry.json is out of date")
    OUT.write_text(text)
    print(f"wrote {OUT}")
