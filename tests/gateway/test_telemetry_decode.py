"""The gateway's strict telemetry decoder: vectors verify, other COSE encoders'
messages verify, every rejection reason is reachable, and no input (malformed,
tampered, fuzzed) gets through or raises anything but TelemetryError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycose.algorithms import Es256
from pycose.headers import KID, Algorithm
from pycose.keys import EC2Key
from pycose.keys.curves import P256
from pycose.messages import Sign1Message

from gateway.telemetry import (MAX_BATCH, MAX_SIGN1_SIZE, REASONS, DecodeError, PublicKeyError, Reading,
                               RejectionCounter, TelemetryError, VerificationError, decode_and_verify,
                               decode_message, load_public_key, verify)
from gateway.telemetry.decode import _decode_fast, _decode_strict
from gateway.telemetry.format import FLAG_OFFLINE, FLAG_SOFTWARE_KEY, flag_names

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "telemetry.json").read_text())
KEY = VECTORS["key"]
PUB = bytes.fromhex(KEY["public_key_hex"])
DEVICE_ID = bytes.fromhex(KEY["device_id"])
PRIV = ec.derive_private_key(int(KEY["private_key_hex"], 16), ec.SECP256R1())
OTHER_PRIV = ec.derive_private_key(12345678901234567890, ec.SECP256R1())
READINGS = VECTORS["readings"]
MESSAGES = {v["name"]: bytes.fromhex(v["message_hex"]) for v in READINGS}
TYPICAL = MESSAGES["typical"]


def reading_of(vector: dict[str, Any]) -> Reading:
    r = dict(vector["reading"])
    return Reading(device_id=bytes.fromhex(r.pop("device_id")), **r)


def es256(priv: ec.EllipticCurvePrivateKey, protected: bytes, payload: bytes) -> bytes:
    der = priv.sign(cbor2.dumps(["Signature1", protected, b"", payload]), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def payload_map(reading: Reading) -> dict[int, Any]:
    return reading.to_payload_map()


def decode_verify(data: bytes, key: Any = PUB) -> list[Reading]:
    return [verify(s, key) for s in decode_message(data)]


# -- the shared vectors ------------------------------------------------------------------

@pytest.mark.parametrize("vector", READINGS, ids=lambda v: v["name"])
def test_vector_decodes_and_verifies(vector):
    msg = bytes.fromhex(vector["message_hex"])
    (s,) = decode_message(msg)
    assert s.raw == msg and s.kid == DEVICE_ID
    assert s.payload.hex() == vector["payload_hex"]
    assert s.sig_structure().hex() == vector["sig_structure_hex"]
    assert verify(s, PUB) == reading_of(vector)
    assert verify(s, PUB).to_json() == vector["reading"]


def test_batch_vector_decodes_to_its_messages_in_order():
    sign1s = decode_message(bytes.fromhex(VECTORS["batch"]["message_hex"]))
    assert [s.raw for s in sign1s] == [MESSAGES[n] for n in VECTORS["batch"]["names"]]
    assert [r.seq for r in decode_and_verify(bytes.fromhex(VECTORS["batch"]["message_hex"]), PUB)] == [1234, 86400, 0]


def test_full_batch_is_accepted():
    batch = cbor2.dumps([cbor2.loads(TYPICAL)] * MAX_BATCH)
    assert len(decode_message(batch)) == MAX_BATCH


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vector_is_rejected_with_its_reason(vector):
    with pytest.raises(TelemetryError) as err:
        decode_verify(bytes.fromhex(vector["message_hex"]))
    assert err.value.reason == vector["reason"]


def test_fast_and_strict_paths_agree_on_the_vectors():
    for msg in MESSAGES.values():
        assert _decode_fast(msg) == _decode_strict(msg)


def test_vectors_verify_with_pycose_too():
    """The reference COSE implementation agrees with our signatures (its own decode()
    does not cope with cbor2 6's tuples, so the structure is handed over directly)."""
    key = EC2Key(crv=P256, x=PUB[:32], y=PUB[32:])
    for msg in MESSAGES.values():
        p, u, payload, sig = cbor2.loads(msg).value
        m = Sign1Message.from_cose_obj([p, dict(u), payload, sig], True)
        m.key = key
        assert m.verify_signature()


# -- other encoders ------------------------------------------------------------------------

def pycose_message(payload: bytes, *, priv: ec.EllipticCurvePrivateKey = PRIV, kid: bytes = DEVICE_ID,
                   phdr: dict | None = None, uhdr: dict | None = None) -> bytes:
    nums = priv.private_numbers()
    pub = nums.public_numbers
    key = EC2Key(crv=P256, d=nums.private_value.to_bytes(32, "big"), x=pub.x.to_bytes(32, "big"),
                 y=pub.y.to_bytes(32, "big"))
    m = Sign1Message(phdr=phdr if phdr is not None else {Algorithm: Es256},
                     uhdr=uhdr if uhdr is not None else {KID: kid}, payload=payload)
    m.key = key
    return m.encode()


SAMPLE = Reading(DEVICE_ID, 77, 1767225600, 100, 200, 300, -400, FLAG_OFFLINE | FLAG_SOFTWARE_KEY)


def test_pycose_message_with_canonical_payload_verifies():
    msg = pycose_message(cbor2.dumps(payload_map(SAMPLE), canonical=True))
    assert decode_verify(msg) == [SAMPLE]


def test_pycose_message_with_noncanonical_payload_verifies():
    """Keys in another order and ints in wider heads: same meaning, signature over the bytes sent."""
    payload = bytearray(b"\xa8")
    for k in (8, 7, 6, 5, 4, 3, 2):
        v = payload_map(SAMPLE)[k]
        payload += bytes((k,)) + (bytes((0x3B,)) + (-1 - v).to_bytes(8, "big") if v < 0
                                  else bytes((0x1B,)) + v.to_bytes(8, "big"))
    payload += b"\x01\x5f\x44" + DEVICE_ID[:4] + b"\x45" + DEVICE_ID[4:] + b"\xff"  # chunked bstr
    msg = pycose_message(bytes(payload))
    assert decode_verify(msg) == [SAMPLE]
    (s,) = decode_message(msg)
    assert s.raw == msg and s.payload == bytes(payload)


def test_pycose_message_signed_with_another_key_is_bad_signature():
    msg = pycose_message(cbor2.dumps(payload_map(SAMPLE), canonical=True), priv=OTHER_PRIV)
    with pytest.raises(VerificationError) as err:
        decode_verify(msg)
    assert err.value.reason == "bad_signature"


def test_pycose_message_with_kid_in_protected_header_is_rejected():
    msg = pycose_message(cbor2.dumps(payload_map(SAMPLE), canonical=True), phdr={Algorithm: Es256, KID: DEVICE_ID})
    with pytest.raises(DecodeError) as err:
        decode_message(msg)
    assert err.value.reason == "bad_protected_header"


def test_noncanonical_outer_encoding_and_protected_header_verify():
    payload = cbor2.dumps(payload_map(SAMPLE), canonical=True)
    protected = b"\xa1\x01\x38\x06"  # {1: -7} with -7 in a needless 1-byte argument
    sig = es256(PRIV, protected, payload)
    msg = (b"\xd2\x9f" + b"\x59\x00\x04" + protected + b"\xbf\x04\x49" + DEVICE_ID + b"\xff"
           + b"\x5a" + len(payload).to_bytes(4, "big") + payload + b"\x58\x40" + sig + b"\xff")
    assert decode_verify(msg) == [SAMPLE]
    (s,) = decode_message(msg)
    assert s.protected == protected and s.sig_structure() == cbor2.dumps(["Signature1", protected, b"", payload])


def test_noncanonical_batch_keeps_each_message_bytes():
    m1 = pycose_message(cbor2.dumps(payload_map(SAMPLE), canonical=True))
    batch = b"\x9f" + m1 + TYPICAL + b"\xff"
    sign1s = decode_message(batch)
    assert [s.raw for s in sign1s] == [m1, TYPICAL]
    assert [verify(s, PUB).seq for s in sign1s] == [77, 1234]


# -- every reason is reachable, and the API around it ------------------------------------------

def reason_of(fn: Callable[[], Any]) -> str:
    with pytest.raises(TelemetryError) as err:
        fn()
    return err.value.reason


def test_every_documented_reason_is_reachable():
    seen = {v["reason"] for v in VECTORS["invalid"]}
    (s,) = decode_message(TYPICAL)
    seen.add(reason_of(lambda: verify(s, PUB, device_id=bytes(9))))
    seen.add(reason_of(lambda: verify(s, b"\x04" + bytes(64))))
    assert seen == set(REASONS), set(REASONS) - seen


def test_an_oversize_message_inside_an_array_is_oversize():
    element = b"\xd2\x84" + b"\x5f" + b"\x40" * 300 + b"\xff" + b"\xa0\x40\x40"  # well-formed, 300+ bytes
    assert reason_of(lambda: decode_message(b"\x81" + element)) == "oversize"
    assert reason_of(lambda: decode_message(element)) == "oversize"


def test_signature_with_a_wide_length_head_still_verifies():
    msg = TYPICAL[:-66] + b"\x5a\x00\x00\x00\x40" + TYPICAL[-64:]
    assert decode_verify(msg) == decode_verify(TYPICAL)


def test_error_hierarchy_and_messages():
    err = reason_of(lambda: decode_message(b"\xd2\x83\x40\xa0\x40"))
    assert err == "bad_structure"
    with pytest.raises(ValueError, match="bad_structure: COSE_Sign1 holds a 3-element array"):
        decode_message(b"\xd2\x83\x40\xa0\x40")
    assert issubclass(DecodeError, TelemetryError) and issubclass(VerificationError, TelemetryError)
    with pytest.raises(AssertionError):
        TelemetryError("no_such_reason")


def test_public_key_forms_and_cache():
    vk = load_public_key(PUB)
    assert load_public_key(b"\x04" + PUB).public_numbers() == vk.public_numbers()
    assert load_public_key(KEY["public_key_pem"]).public_numbers() == vk.public_numbers()
    assert load_public_key(vk) is vk
    assert load_public_key(bytes(PUB)) is vk  # cached
    (s,) = decode_message(TYPICAL)
    for form in (PUB, b"\x04" + PUB, KEY["public_key_pem"], vk, bytearray(PUB)):
        assert verify(s, form).seq == 1234
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem384 = p384.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for bad in (p384, pem384, b"", PUB[:63], b"\x04" + bytes(64), 12345, "-----BEGIN PUBLIC KEY-----\nxx\n"):
        with pytest.raises(PublicKeyError) as err:
            load_public_key(bad)
        assert err.value.reason == "bad_key"


def test_rejection_counter_counts_by_reason():
    c = RejectionCounter()
    for v in VECTORS["invalid"]:
        try:
            decode_verify(bytes.fromhex(v["message_hex"]))
        except TelemetryError as e:
            c.record(e)
    snap = c.snapshot()
    assert set(snap) == set(REASONS) and c.total == len(VECTORS["invalid"])
    assert snap["bad_signature"] == sum(v["reason"] == "bad_signature" for v in VECTORS["invalid"])
    assert snap["wrong_device"] == 0


def test_reading_flag_names():
    assert flag_names(0x28) == ["software_key", "offline"]
    assert SAMPLE.flag_names == ["software_key", "offline"] and SAMPLE.software_key and SAMPLE.clock_synced


# -- tampering and fuzzing ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["typical", "worst_case_size"])
def test_changing_any_byte_to_any_value_never_yields_a_valid_reading(name):
    msg = MESSAGES[name]
    for i in range(len(msg)):
        for x in range(1, 256):
            bad = bytearray(msg)
            bad[i] ^= x
            with pytest.raises(TelemetryError):
                decode_verify(bytes(bad))


def test_truncating_or_inserting_never_yields_a_valid_reading():
    for i in range(len(TYPICAL)):
        with pytest.raises(TelemetryError):
            decode_verify(TYPICAL[:i])
        for b in (0x00, 0x40, 0xFF, TYPICAL[i]):
            with pytest.raises(TelemetryError):
                decode_verify(TYPICAL[:i] + bytes((b,)) + TYPICAL[i:])


@pytest.mark.parametrize("key", ["80", "a0", "c180", "c1a0", "8180"])
def test_container_or_tag_map_keys_are_bad_structure_not_a_crash(key):
    """Found by the mutation fuzz: a tag wrapping an array as a map key is unhashable in cbor2."""
    msg = b"\xd2\x84\x43\xa1\x01\x26\xa1" + bytes.fromhex(key) + b"\x00" + TYPICAL[18:]
    assert reason_of(lambda: decode_message(msg)) == "bad_structure"
    assert reason_of(lambda: decode_message(b"\xa1" + bytes.fromhex(key) + b"\x00")) == "bad_structure"


def _only_telemetry_errors(data: bytes) -> list[Reading] | None:
    try:
        return decode_verify(data)
    except TelemetryError as e:
        assert e.reason in REASONS
        return None


@settings(max_examples=3000, deadline=None)
@given(prefix=st.sampled_from([b"", b"\xd2\x84", b"\xd2\x84\x43\xa1\x01\x26", b"\x81\xd2\x84", b"\xa1", b"\x9f"]),
       data=st.binary(max_size=400))
def test_fuzz_arbitrary_bytes_give_telemetry_errors_only(prefix, data):
    assert _only_telemetry_errors(prefix + data) is None


LEAVES = st.one_of(st.integers(-(2**64), 2**64 - 1), st.binary(max_size=70), st.text(max_size=10), st.booleans(),
                   st.none(), st.floats(allow_nan=False), st.just(DEVICE_ID), st.sampled_from([-7, 1, 4, 18]))
STRUCTS = st.recursive(LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=5),
    st.dictionaries(st.one_of(st.integers(-3, 10), st.text(max_size=3), st.tuples(st.integers(0, 3)),
                              st.builds(cbor2.CBORTag, st.integers(0, 30), st.integers(0, 5))), inner, max_size=9),
    st.builds(cbor2.CBORTag, st.sampled_from([18, 2, 24, 55799]), inner)), max_leaves=20)
HEADERS = st.one_of(st.just(b"\xa1\x01\x26"), STRUCTS.map(cbor2.dumps), st.binary(max_size=8))
PAYLOADS = st.one_of(st.just(bytes.fromhex(READINGS[0]["payload_hex"])),
                     st.dictionaries(st.integers(0, 10), STRUCTS, max_size=9).map(cbor2.dumps),
                     st.builds(lambda r: cbor2.dumps(payload_map(Reading(DEVICE_ID, *r))),
                               st.tuples(*[st.integers(-2, 2**32 + 1)] * 6, st.integers(0, 0x7F))))
SIGN1_LIKE = st.builds(lambda p, u, pl, sig: cbor2.CBORTag(18, [p, u, pl, sig]), HEADERS,
                       st.one_of(st.just({4: DEVICE_ID}), STRUCTS), st.one_of(PAYLOADS, STRUCTS),
                       st.one_of(st.binary(min_size=64, max_size=64), STRUCTS))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(STRUCTS, SIGN1_LIKE, st.lists(SIGN1_LIKE, min_size=1, max_size=3)))
def test_fuzz_cbor_structures_give_telemetry_errors_only(value):
    data = cbor2.dumps(value)
    assert _only_telemetry_errors(data) is None  # random signatures never verify


@settings(max_examples=1500, deadline=None)
@given(name=st.sampled_from(sorted(MESSAGES)),
       edits=st.lists(st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, 200),
                                st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzz_mutations_of_valid_messages_never_forge_a_reading(name, edits):
    msg = bytearray(MESSAGES[name])
    for op, pos, value in edits:
        pos %= len(msg) + (op == "insert")
        if op == "set":
            msg[pos] = value
        elif op == "insert":
            msg.insert(pos, value)
        elif len(msg) > 1:
            del msg[pos]
    got = _only_telemetry_errors(bytes(msg))
    if bytes(msg) != MESSAGES[name]:
        # Only a re-encoding of the very same reading could verify; none of these edits makes one.
        assert got is None or got == [reading_of(next(v for v in READINGS if v["name"] == name))]


# -- encodings other implementations might choose -----------------------------------------

def loose(value: Any, draw: Callable[[Any], Any]) -> bytes:
    """Any valid CBOR encoding of ``value``: wider heads, indefinite lengths, any key order."""

    def head(major: int, n: int) -> bytes:
        widths = [w for w in (0, 1, 2, 4, 8) if (n < 24 if w == 0 else n < 256 ** w)]
        w = draw(st.sampled_from(widths))
        if w == 0:
            return bytes((major << 5 | n,))
        return bytes((major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[w],)) + n.to_bytes(w, "big")

    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        if draw(st.booleans()):
            return head(2, len(value)) + value
        cuts = sorted(draw(st.lists(st.integers(0, len(value)), max_size=3)))
        parts = [value[a:b] for a, b in zip([0, *cuts], [*cuts, len(value)])]
        return b"\x5f" + b"".join(head(2, len(p)) + p for p in parts) + b"\xff"
    if isinstance(value, list):
        body = b"".join(loose(v, draw) for v in value)
        return (head(4, len(value)) + body) if draw(st.booleans()) else b"\x9f" + body + b"\xff"
    if isinstance(value, dict):
        keys = draw(st.permutations(list(value)))
        body = b"".join(loose(k, draw) + loose(value[k], draw) for k in keys)
        return (head(5, len(value)) + body) if draw(st.booleans()) else b"\xbf" + body + b"\xff"
    assert isinstance(value, cbor2.CBORTag)
    return head(6, value.tag) + loose(value.value, draw)


U32 = st.integers(0, 2**32 - 1)
READINGS_ST = st.builds(Reading, st.just(DEVICE_ID), U32, U32, U32, U32, U32, st.integers(-(2**31), 2**31 - 1),
                        st.integers(0, 0x3F))


@settings(max_examples=300, deadline=None)
@given(reading=READINGS_ST, data=st.data())
def test_any_valid_encoding_of_a_reading_verifies_to_that_reading(reading, data):
    payload = loose(payload_map(reading), data.draw)
    protected = loose({1: -7}, data.draw)
    sig = es256(PRIV, protected, payload)
    msg = loose(cbor2.CBORTag(18, [protected, {4: DEVICE_ID}, payload, sig]), data.draw)
    if len(msg) > MAX_SIGN1_SIZE:
        assert reason_of(lambda: decode_message(msg)) == "oversize"
        return
    assert decode_verify(msg) == [reading]
    canonical = cbor2.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x26", {4: DEVICE_ID},
                                              cbor2.dumps(payload_map(reading), canonical=True), b"s" * 64]),
                            canonical=True)
    if msg[:-64] == canonical[:-64]:
        assert _decode_fast(msg) == _decode_strict(msg)


@settings(max_examples=200, deadline=None)
@given(reading=READINGS_ST)
def test_fast_path_and_strict_reader_agree_on_canonical_messages(reading):
    payload = cbor2.dumps(payload_map(reading), canonical=True)
    msg = cbor2.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x26", {4: DEVICE_ID}, payload,
                                         es256(PRIV, b"\xa1\x01\x26", payload)]), canonical=True)
    assert _decode_fast(msg) == _decode_strict(msg)
    assert decode_verify(msg) == [reading]
