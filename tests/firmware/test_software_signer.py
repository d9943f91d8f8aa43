"""Software P-256 signer: RFC 6979 vectors, interop with python-ecdsa and cryptography."""

from __future__ import annotations

import hashlib
import os

import ecdsa
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_sign import p256
from secure_sign.software import KeyFileError, SoftwareSigner, decode_key_file, encode_key_file, verify

# RFC 6979 appendix A.2.5: ECDSA, 256 bits (prime field), SHA-256
RFC_X = bytes.fromhex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
RFC_UX = "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6"
RFC_UY = "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299"
RFC_VECTORS = [
    (b"sample",
     "A6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60",
     "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716",
     "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8"),
    (b"test",
     "D16B6AE827F17175E040871A1C7EC3500192C4C92677336EC2537ACAEE0008E0",
     "F1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367",
     "019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083"),
]
DEVICE_ID = bytes.fromhex("a1a2a3a4a5a6a7a8a9")


def crypto_verify(pub: bytes, digest: bytes, sig: bytes) -> bool:
    key = ec.EllipticCurvePublicNumbers(int.from_bytes(pub[:32], "big"), int.from_bytes(pub[32:], "big"),
                                        ec.SECP256R1()).public_key()
    der = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        return True
    except InvalidSignature:
        return False


def test_public_key_matches_rfc6979_vector():
    signer = SoftwareSigner(RFC_X, DEVICE_ID)
    assert signer.public_key.hex().upper() == RFC_UX + RFC_UY
    assert signer.device_id == DEVICE_ID and signer.software is True


@pytest.mark.parametrize("msg,k,r,s", RFC_VECTORS)
def test_rfc6979_nonce_and_signature_vectors(msg, k, r, s):
    digest = hashlib.sha256(msg).digest()
    d = int.from_bytes(RFC_X, "big")
    assert next(p256.rfc6979_nonces(d, digest)) == int(k, 16)
    sig = SoftwareSigner(RFC_X, DEVICE_ID).sign_digest(digest)
    assert sig.hex().upper() == r + s


@settings(max_examples=25, deadline=None)
@given(d=st.integers(min_value=1, max_value=p256.N - 1), digest=st.binary(min_size=32, max_size=32))
def test_agrees_with_python_ecdsa_and_verifies_with_cryptography(d, digest):
    signer = SoftwareSigner(d.to_bytes(32, "big"), DEVICE_ID)
    sk = ecdsa.SigningKey.from_secret_exponent(d, curve=ecdsa.NIST256p, hashfunc=hashlib.sha256)
    assert signer.public_key == sk.get_verifying_key().to_string()
    expected = sk.sign_digest_deterministic(digest, hashfunc=hashlib.sha256, sigencode=ecdsa.util.sigencode_string)
    sig = signer.sign_digest(digest)
    assert sig == expected
    assert crypto_verify(signer.public_key, digest, sig)
    assert signer.verify_digest(digest, sig)


@settings(max_examples=15, deadline=None)
@given(digest=st.binary(min_size=32, max_size=32))
def test_verify_accepts_foreign_signatures_and_rejects_tampering(digest):
    key = ec.generate_private_key(ec.SECP256R1())
    nums = key.public_key().public_numbers()
    pub = nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
    r, s = utils.decode_dss_signature(key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert verify(pub, digest, sig)
    # the high-S twin is valid ECDSA too: no low-S rule on either side
    assert verify(pub, digest, r.to_bytes(32, "big") + (p256.N - s).to_bytes(32, "big"))
    flipped = bytes([digest[0] ^ 1]) + digest[1:]
    assert not verify(pub, flipped, sig)
    assert not verify(pub, digest, sig[:63] + bytes([sig[63] ^ 1]))
    assert not verify(pub, digest, bytes(32) + sig[32:])        # r = 0
    assert not verify(pub[:32] + bytes(32), digest, sig)        # not on the curve


def test_bad_inputs_get_specific_errors_and_are_counted():
    signer = SoftwareSigner(RFC_X, DEVICE_ID)
    with pytest.raises(ValueError):
        signer.sign_digest(b"\x00" * 31)
    with pytest.raises(ValueError):
        signer.sign_digest(b"\x00" * 33)
    assert signer.errors == 2 and signer.signatures == 0
    for key in (bytes(32), p256.N.to_bytes(32, "big"), b"\x01" * 31):
        with pytest.raises(ValueError):
            SoftwareSigner(key, DEVICE_ID)
    with pytest.raises(ValueError):
        SoftwareSigner(RFC_X, b"\x01" * 8)


def test_generate_rejects_out_of_range_scalars():
    draws = [b"\x00" * 32, b"\xff" * 32, RFC_X, DEVICE_ID]
    signer = SoftwareSigner.generate(lambda n: draws.pop(0)[:n])
    assert signer.public_key.hex().upper() == RFC_UX + RFC_UY
    assert signer.device_id == DEVICE_ID


def test_load_or_create_persists_identity(tmp_path):
    path = str(tmp_path / "device.key")
    first = SoftwareSigner.load_or_create(path, os.urandom)
    raw = open(path, "rb").read()
    assert len(raw) == 50 and raw[:5] == b"MNSK\x01" and raw[5:14] == first.device_id
    assert raw[46:] == hashlib.sha256(raw[:46]).digest()[:4]
    assert not os.path.exists(path + ".tmp")
    again = SoftwareSigner.load_or_create(path, lambda n: pytest.fail("must not draw a new key"))
    assert (again.device_id, again.public_key) == (first.device_id, first.public_key)
    digest = hashlib.sha256(b"reading").digest()
    assert crypto_verify(first.public_key, digest, again.sign_digest(digest))


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic"])
def test_damaged_key_file_is_refused_not_replaced(tmp_path, damage):
    path = tmp_path / "device.key"
    blob = bytearray(encode_key_file(DEVICE_ID, RFC_X))
    if damage == "truncate":
        blob = blob[:40]
    elif damage == "flip":
        blob[20] ^= 0x01
    else:
        blob[0:4] = b"XXXX"
    path.write_bytes(bytes(blob))
    with pytest.raises(KeyFileError):
        SoftwareSigner.load_or_create(str(path), os.urandom)
    assert path.read_bytes() == bytes(blob)


def test_key_file_round_trip():
    assert decode_key_file(encode_key_file(DEVICE_ID, RFC_X)) == (DEVICE_ID, RFC_X)
