"""The firmware's minimal CBOR encoder is byte-identical to cbor2's canonical
encoding, on CPython and on MicroPython."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import cbor  # the firmware module

INTS = st.integers(-(2**64), 2**64 - 1)
# Values near every head-size boundary, where off-by-one errors live.
EDGES = st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
BOUNDARY_INTS = st.one_of(EDGES, EDGES.map(lambda n: -1 - n), INTS)
KEYS = st.one_of(BOUNDARY_INTS, st.binary(max_size=30), st.text(max_size=30))
SCALARS = st.one_of(BOUNDARY_INTS, st.binary(max_size=300), st.text(max_size=100), st.booleans(), st.none())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=30),
    st.dictionaries(KEYS, inner, max_size=30)), max_leaves=60)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_dumps_is_byte_identical_to_cbor2_canonical(value):
    assert cbor.dumps(value) == cbor2.dumps(value, canonical=True)


# cbor2 gives a few tags meaning while encoding (256 opens a stringref namespace,
# 25/28/29 are references): their content is not a plain encoding of the value.
_SEMANTIC_TAGS = {25, 28, 29, 256}


@settings(max_examples=200, deadline=None)
@given(tag=st.one_of(EDGES, st.integers(0, 2**64 - 1)).filter(lambda t: t not in _SEMANTIC_TAGS), value=VALUES)
def test_tag_head_matches_cbor2(tag, value):
    buf = bytearray(16)
    n = cbor.put_tag(buf, 0, tag)
    assert bytes(buf[:n]) + cbor.dumps(value) == cbor2.dumps(cbor2.CBORTag(tag, value), canonical=True)


@settings(max_examples=200, deadline=None)
@given(n=st.one_of(EDGES, st.integers(0, 2**64 - 1)))
def test_array_and_map_heads_match_cbor2(n):
    buf = bytearray(9)
    a = cbor.put_array(buf, 0, n)
    # The head of an n-item array/map is the head of n as uint with the major type swapped.
    uint = cbor2.dumps(n)
    assert bytes(buf[:a]) == bytes((uint[0] | 0x80,)) + uint[1:]
    m = cbor.put_map(buf, 0, n)
    assert bytes(buf[:m]) == bytes((uint[0] | 0xA0,)) + uint[1:]


def test_writes_at_an_offset_and_returns_the_new_offset():
    buf = bytearray(b"\xee" * 20)
    off = cbor.put_int(buf, 3, 1000)
    off = cbor.put_bytes(buf, off, memoryview(b"ab"))
    assert off == 9 and bytes(buf[:10]) == b"\xee\xee\xee\x19\x03\xe8\x42ab\xee"


@pytest.mark.parametrize("value", [2**64, -(2**64) - 1, 1.5, object(), {1, 2}])
def test_unsupported_values_raise_value_error(value):
    with pytest.raises(ValueError):
        cbor.dumps(value)


@pytest.mark.parametrize("put,arg", [(cbor.put_int, 2**32), (cbor.put_bytes, b"x" * 8), (cbor.put_str, "abcdefgh"),
                                     (cbor.put_array, 70000), (cbor.put_tag, 2**40)])
def test_a_full_buffer_raises_instead_of_growing(put, arg):
    buf = bytearray(4)
    with pytest.raises(ValueError, match="buffer full"):
        put(buf, 0, arg)
    assert len(buf) == 4


@pytest.mark.micropython
@settings(max_examples=8, deadline=None)
@given(st.lists(VALUES, min_size=5, max_size=20))
def test_dumps_is_byte_identical_to_cbor2_on_micropython(mp, values):
    # Values travel as Python literals (bytes and int keys do not survive JSON).
    src = "[\n" + "".join(repr(v) + ",\n" for v in values) + "]\n"
    code = ("import json\nfrom binascii import hexlify\nfrom telemetry import cbor\n"
            "vals = eval(open('/values.py').read())\n"
            "print(json.dumps([hexlify(cbor.dumps(v)).decode() for v in vals]))\n")
    got = mp(code, files={"/values.py": src}).last_json()
    assert got == [cbor2.dumps(v, canonical=True).hex() for v in values]
    assert json.dumps(got)  # a real list came back


@pytest.mark.micropython
def test_heads_and_errors_on_micropython(mp):
    code = """
import json
from binascii import hexlify
from telemetry import cbor
out = []
buf = bytearray(16)
for n in (0, 23, 24, 255, 256, 65535, 65536, 4294967295, 4294967296, 18446744073709551615):
    for put in (cbor.put_int, cbor.put_array, cbor.put_map, cbor.put_tag):
        out.append(hexlify(buf[:put(buf, 0, n)]).decode())
    out.append(hexlify(buf[:cbor.put_int(buf, 0, -1 - n)]).decode())
errs = []
for bad in (18446744073709551616, 1.5):
    try:
        cbor.dumps(bad)
        errs.append("no error")
    except ValueError as e:
        errs.append("ValueError")
try:
    cbor.put_bytes(bytearray(4), 0, b"12345678")
except ValueError as e:
    errs.append(str(e))
print(json.dumps([out, errs]))
"""
    out, errs = mp(code).last_json()
    want = []
    for n in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1):
        want.append(cbor2.dumps(n).hex())
        uint = cbor2.dumps(n)
        for major in (0x80, 0xA0, 0xC0):
            want.append((bytes((uint[0] | major,)) + uint[1:]).hex())
        want.append(cbor2.dumps(-1 - n).hex())
    assert out == want
    assert errs == ["ValueError", "ValueError", "cbor: buffer full"]
