"""The firmware's ReadingEncoder reproduces the shared vectors byte for byte,
on CPython and on MicroPython, and stays within the size budget."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from ecdsa import NIST256p, SigningKey
from ecdsa.util import sigencode_string
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import cose  # the firmware module (firmware/ is on sys.path via conftest)

ROOT = Path(__file__).resolve().parents[2]
VECTORS_PATH = ROOT / "tests" / "vectors" / "telemetry.json"
VECTORS = json.loads(VECTORS_PATH.read_text())
KEY = VECTORS["key"]
DEVICE_ID = bytes.fromhex(KEY["device_id"])
READINGS = VECTORS["readings"]
SOFTWARE_SIGNER = ROOT / "firmware" / "secure_sign" / "software.py"


class EcdsaSigner:
    """A test Signer on CPython: python-ecdsa, RFC 6979 deterministic, like the firmware's."""

    def __init__(self, private_key: bytes, device_id: bytes, software: bool) -> None:
        self._sk = SigningKey.from_string(private_key, curve=NIST256p)
        self.device_id = device_id
        self.public_key = self._sk.get_verifying_key().to_string("raw")
        self.software = software
        self.digests: list[bytes] = []

    def sign_digest(self, digest: bytes) -> bytes:
        assert len(digest) == 32
        self.digests.append(bytes(digest))
        return self._sk.sign_digest_deterministic(bytes(digest), hashfunc=hashlib.sha256,
                                                  sigencode=sigencode_string)


def signer_for(vector: dict, software: bool | None = None) -> EcdsaSigner:
    return EcdsaSigner(bytes.fromhex(KEY["private_key_hex"]), DEVICE_ID,
                       vector["software_key"] if software is None else software)


@pytest.mark.parametrize("vector", READINGS, ids=lambda v: v["name"])
def test_encoder_reproduces_vector_on_cpython(vector):
    signer = signer_for(vector)
    msg = cose.ReadingEncoder(signer).encode(**vector["encode"])
    assert signer.digests == [bytes.fromhex(vector["digest_hex"])]
    assert msg.hex() == vector["message_hex"]


def test_payload_and_sig_structure_match_cbor2_reference():
    """The vectors themselves: payload and Sig_structure are what cbor2 and RFC 9052 give."""
    for v in READINGS:
        r = v["reading"]
        payload = cbor2.dumps({1: bytes.fromhex(r["device_id"]), 2: r["seq"], 3: r["time"], 4: r["import_wh"],
                               5: r["export_wh"], 6: r["pv_wh"], 7: r["power_w"], 8: r["flags"]}, canonical=True)
        assert payload.hex() == v["payload_hex"]
        tbs = cbor2.dumps(["Signature1", b"\xa1\x01\x26", b"", payload])
        assert tbs.hex() == v["sig_structure_hex"]
        assert hashlib.sha256(tbs).hexdigest() == v["digest_hex"]


def test_vectors_verify_with_cryptography():
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + bytes.fromhex(KEY["public_key_hex"]))
    for v in READINGS:
        sig = bytes.fromhex(v["signature_hex"])
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        key.verify(der, bytes.fromhex(v["sig_structure_hex"]), ec.ECDSA(hashes.SHA256()))


def test_vectors_file_is_up_to_date_with_its_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_vectors", ROOT / "tests" / "vectors" / "make_telemetry_vectors.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.render() == VECTORS_PATH.read_text()


def test_software_flag_comes_from_the_signer_and_clock_flag_from_time_zero():
    args = dict(seq=5, time=0, import_wh=1, export_wh=2, pv_wh=3, power_w=-4, flags=cose.FLAG_OFFLINE)
    hw = cbor2.loads(cbor2.loads(cose.ReadingEncoder(signer_for({"software_key": False})).encode(**args)).value[2])
    sw = cbor2.loads(cbor2.loads(cose.ReadingEncoder(signer_for({"software_key": True})).encode(**args)).value[2])
    assert hw[8] == cose.FLAG_OFFLINE | cose.FLAG_CLOCK_UNSYNCED
    assert sw[8] == cose.FLAG_OFFLINE | cose.FLAG_CLOCK_UNSYNCED | cose.FLAG_SOFTWARE_KEY


def test_worst_case_vector_is_the_size_bound_and_within_budget():
    sizes = [len(bytes.fromhex(v["message_hex"])) for v in READINGS]
    assert max(sizes) == cose.MAX_SIGN1_SIZE <= 140


U32 = st.integers(0, 2**32 - 1)


@settings(max_examples=150, deadline=None)
@given(seq=U32, time=U32, imp=U32, exp=U32, pv=U32, power=st.integers(-(2**31), 2**31 - 1),
       flags=st.integers(0, 0x3F), software=st.booleans())
def test_any_reading_fits_the_bound_and_verifies(seq, time, imp, exp, pv, power, flags, software):
    signer = signer_for({"software_key": software})
    msg = cose.ReadingEncoder(signer).encode(seq, time, imp, exp, pv, power, flags)
    assert len(msg) <= cose.MAX_SIGN1_SIZE
    tag = cbor2.loads(msg)
    assert tag.tag == 18
    protected, unprotected, payload, sig = tag.value
    assert protected == b"\xa1\x01\x26" and dict(unprotected) == {4: DEVICE_ID}
    want = flags | (cose.FLAG_SOFTWARE_KEY if software else 0) | (cose.FLAG_CLOCK_UNSYNCED if time == 0 else 0)
    assert payload == cbor2.dumps({1: DEVICE_ID, 2: seq, 3: time, 4: imp, 5: exp, 6: pv, 7: power, 8: want},
                                  canonical=True)
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + signer.public_key)
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.verify(der, cbor2.dumps(["Signature1", protected, b"", payload]), ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("field,value", [("seq", -1), ("seq", 2**32), ("time", 2**32), ("import_wh", -5),
                                         ("export_wh", 2**40), ("pv_wh", 2**32), ("power_w", 2**31),
                                         ("power_w", -(2**31) - 1), ("flags", 0x40), ("flags", -1)])
def test_out_of_range_values_are_refused(field, value):
    args = dict(seq=1, time=2, import_wh=3, export_wh=4, pv_wh=5, power_w=6, flags=0)
    args[field] = value
    with pytest.raises(ValueError):
        cose.ReadingEncoder(signer_for({"software_key": False})).encode(**args)


def test_bad_signer_is_refused():
    class Short(EcdsaSigner):
        def sign_digest(self, digest):
            return b"\x00" * 63

    with pytest.raises(ValueError):
        cose.ReadingEncoder(EcdsaSigner(b"\x01" * 32, b"\x01" * 8, False))
    enc = cose.ReadingEncoder(Short(b"\x01" * 32, DEVICE_ID, False))
    with pytest.raises(ValueError):
        enc.encode(1, 2, 3, 4, 5, 6, 0)


def test_wrap_array_matches_the_batch_vector_and_cbor2():
    by_name = {v["name"]: bytes.fromhex(v["message_hex"]) for v in READINGS}
    msgs = [by_name[n] for n in VECTORS["batch"]["names"]]
    assert bytes(cose.wrap_array(msgs)).hex() == VECTORS["batch"]["message_hex"]
    many = [by_name["typical"]] * cose.MAX_BATCH
    assert bytes(cose.wrap_array(many)) == cbor2.dumps([cbor2.loads(m) for m in many])
    buf = bytearray(cose.MAX_BATCH_SIZE)
    n = cose.wrap_array_into(buf, many)
    assert bytes(buf[:n]) == bytes(cose.wrap_array(many))
    with pytest.raises(ValueError):
        cose.wrap_array([])
    with pytest.raises(ValueError):
        cose.wrap_array(many + [by_name["typical"]])


# -- on MicroPython ------------------------------------------------------------------------

_MP_REPLAY = """
import json, gc
from binascii import hexlify, unhexlify
from telemetry import cose

V = json.load(open("/vectors.json"))

class ReplaySigner:
    # Checks the digest the encoder asks to sign; answers with the vector's signature.
    def __init__(self, device_id, software):
        self.device_id = device_id
        self.software = software
        self.public_key = b""
        self.expect = None
        self.sig = None
    def sign_digest(self, digest):
        if digest != self.expect:
            raise AssertionError("digest " + hexlify(digest).decode())
        return self.sig

did = unhexlify(V["key"]["device_id"])
out = {}
for v in V["readings"]:
    s = ReplaySigner(did, v["software_key"])
    s.expect = unhexlify(v["digest_hex"])
    s.sig = unhexlify(v["signature_hex"])
    e = v["encode"]
    m = cose.ReadingEncoder(s).encode(e["seq"], e["time"], e["import_wh"], e["export_wh"], e["pv_wh"],
                                      e["power_w"], e["flags"])
    out[v["name"]] = hexlify(m).decode()
by = {v["name"]: unhexlify(v["message_hex"]) for v in V["readings"]}
out["batch"] = hexlify(cose.wrap_array([by[n] for n in V["batch"]["names"]])).decode()
print(json.dumps(out))
"""


@pytest.mark.micropython
def test_encoder_reproduces_vectors_on_micropython(mp):
    out = mp(_MP_REPLAY, files={"/vectors.json": VECTORS_PATH.read_text()}).last_json()
    for v in READINGS:
        assert out[v["name"]] == v["message_hex"], v["name"]
    assert out["batch"] == VECTORS["batch"]["message_hex"]


_MP_ALLOC = """
import gc, json
from telemetry import cose

class FixedSigner:
    device_id = b"\\x01\\x23\\xa1\\xb2\\xc3\\xd4\\xe5\\xf6\\xee"
    public_key = bytes(64)
    software = False
    def __init__(self):
        self.sig = bytes(range(64))
    def sign_digest(self, digest):
        return self.sig

enc = cose.ReadingEncoder(FixedSigner())
args = [(1234, 1767225600, 5123456, 1234567, 2345678, 1530, 0),
        (4294967295, 4294967295, 4294967295, 4294967295, 4294967295, -2147483648, 0x37)]
enc.encode(*args[0])  # warm up
res = []
for a in args:
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    m = enc.encode(*a)
    after = gc.mem_alloc()
    gc.enable()
    res.append([after - before, len(m)])
print(json.dumps(res))
"""


@pytest.mark.micropython
def test_encode_allocates_little_on_micropython(mp):
    """One encode (hardware signer stand-in returning a fixed signature) stays far
    inside the 8 KB read-sign-buffer budget: only hash, digest and result are new."""
    (typ_alloc, typ_len), (worst_alloc, worst_len) = mp(_MP_ALLOC).last_json()
    assert typ_len == 132 and worst_len == cose.MAX_SIGN1_SIZE
    assert 0 < typ_alloc <= 1024, typ_alloc
    assert 0 < worst_alloc <= 1024, worst_alloc


# -- with the firmware's software signer, once it exists ---------------------------------------

needs_software_signer = pytest.mark.skipif(not SOFTWARE_SIGNER.exists(),
                                           reason="firmware/secure_sign/software.py not written yet")
SOFTWARE_VECTORS = [v for v in READINGS if v["software_key"]]


@needs_software_signer
@pytest.mark.parametrize("vector", SOFTWARE_VECTORS, ids=lambda v: v["name"])
def test_software_signer_reproduces_vector_on_cpython(vector):
    from secure_sign.software import SoftwareSigner

    signer = SoftwareSigner(bytes.fromhex(KEY["private_key_hex"]), DEVICE_ID)
    assert signer.software is True and bytes(signer.public_key).hex() == KEY["public_key_hex"]
    assert cose.ReadingEncoder(signer).encode(**vector["encode"]).hex() == vector["message_hex"]


_MP_SOFTWARE = """
import json
from binascii import hexlify, unhexlify
from telemetry import cose
from secure_sign.software import SoftwareSigner

V = json.load(open("/vectors.json"))
s = SoftwareSigner(unhexlify(V["key"]["private_key_hex"]), unhexlify(V["key"]["device_id"]))
enc = cose.ReadingEncoder(s)
out = {}
for v in V["readings"]:
    if v["software_key"]:
        e = v["encode"]
        m = enc.encode(e["seq"], e["time"], e["import_wh"], e["export_wh"], e["pv_wh"], e["power_w"], e["flags"])
        out[v["name"]] = hexlify(m).decode()
print(json.dumps(out))
"""


@needs_software_signer
@pytest.mark.micropython
def test_software_signer_reproduces_vectors_on_micropython(mp):
    out = mp(_MP_SOFTWARE, files={"/vectors.json": VECTORS_PATH.read_text()}, timeout=300).last_json()
    assert out == {v["name"]: v["message_hex"] for v in SOFTWARE_VECTORS}
