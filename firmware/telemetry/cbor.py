"""A minimal deterministic CBOR encoder (RFC 8949) writing into a bytearray.

Every ``put_*`` function writes one item head (and its content) at ``off`` in a
preallocated ``buf`` and returns the offset after it; nothing is allocated for
integers, byte strings, array/map headers or tags. Integers and lengths always
take their shortest form (RFC 8949 section 4.2.1), so the output is
byte-identical to ``cbor2.dumps(value, canonical=True)``.

``put_value``/``dumps`` encode a whole value (None, bool, int, bytes, str,
list/tuple, dict) for code off the hot path; map keys are sorted as cbor2's
canonical mode sorts them (shorter encoded key first, then bytewise: RFC 7049
section 3.9), which for the telemetry payload's keys 1..8 is also RFC 8949's
core deterministic order. Floats and big integers (beyond 64 bits) are not
supported: they raise ValueError.
"""

import struct

from micropython import const

MAJOR_UINT = const(0)
MAJOR_NINT = const(1)
MAJOR_BYTES = const(2)
MAJOR_TEXT = const(3)
MAJOR_ARRAY = const(4)
MAJOR_MAP = const(5)
MAJOR_TAG = const(6)
MAJOR_SIMPLE = const(7)

_AI_1 = const(24)  # argument follows in 1, 2, 4, 8 bytes
_AI_2 = const(25)
_AI_4 = const(26)
_AI_8 = const(27)

_U64_END = 1 << 64  # not const(): beyond a small int on 32-bit ports


def put_head(buf, off, major, n):
    """Write the head of a major type with argument ``n`` (0 <= n < 2**64)."""
    if n < 0:
        raise ValueError("cbor: negative argument")
    mt = major << 5
    if n < 24:
        size = 1
    elif n < 0x100:
        size = 2
    elif n < 0x10000:
        size = 3
    elif n <= 0xFFFFFFFF:
        size = 5
    elif n < _U64_END:
        size = 9
    else:
        raise ValueError("cbor: integer beyond 64 bits")
    if off + size > len(buf):
        raise ValueError("cbor: buffer full")
    if size == 1:
        buf[off] = mt | n
    elif size == 2:
        buf[off] = mt | _AI_1
        buf[off + 1] = n
    elif size == 3:
        buf[off] = mt | _AI_2
        struct.pack_into(">H", buf, off + 1, n)
    elif size == 5:
        buf[off] = mt | _AI_4
        struct.pack_into(">I", buf, off + 1, n)
    else:
        buf[off] = mt | _AI_8
        struct.pack_into(">Q", buf, off + 1, n)
    return off + size


def put_int(buf, off, v):
    """Unsigned (major 0) or negative (major 1, argument -1 - v) integer."""
    if v >= 0:
        return put_head(buf, off, MAJOR_UINT, v)
    return put_head(buf, off, MAJOR_NINT, -1 - v)


def put_bytes(buf, off, data):
    """Byte string: head then the bytes (any buffer: bytes, bytearray, memoryview)."""
    n = len(data)
    off = put_head(buf, off, MAJOR_BYTES, n)
    end = off + n
    if end > len(buf):
        raise ValueError("cbor: buffer full")
    buf[off:end] = data
    return end


def put_str(buf, off, s):
    """Text string (UTF-8). Allocates the encoded copy: not for the hot path."""
    data = s.encode()
    off = put_head(buf, off, MAJOR_TEXT, len(data))
    end = off + len(data)
    if end > len(buf):
        raise ValueError("cbor: buffer full")
    buf[off:end] = data
    return end


def put_array(buf, off, n):
    """Array header for ``n`` items (the items follow)."""
    return put_head(buf, off, MAJOR_ARRAY, n)


def put_map(buf, off, n):
    """Map header for ``n`` key/value pairs (the pairs follow, keys sorted)."""
    return put_head(buf, off, MAJOR_MAP, n)


def put_tag(buf, off, tag):
    """Tag head (the tagged item follows), e.g. 18 for COSE_Sign1."""
    return put_head(buf, off, MAJOR_TAG, tag)


def put_value(buf, off, v):
    """Encode a whole value deterministically; see the module docstring."""
    if v is None:
        return put_head(buf, off, MAJOR_SIMPLE, 22)
    if v is False:
        return put_head(buf, off, MAJOR_SIMPLE, 20)
    if v is True:
        return put_head(buf, off, MAJOR_SIMPLE, 21)
    if isinstance(v, int):
        return put_int(buf, off, v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return put_bytes(buf, off, v)
    if isinstance(v, str):
        return put_str(buf, off, v)
    if isinstance(v, (list, tuple)):
        off = put_array(buf, off, len(v))
        for item in v:
            off = put_value(buf, off, item)
        return off
    if isinstance(v, dict):
        keys = [(dumps(k), k) for k in v]
        keys.sort(key=_canonical_order)
        off = put_map(buf, off, len(keys))
        for enc, k in keys:
            end = off + len(enc)
            if end > len(buf):
                raise ValueError("cbor: buffer full")
            buf[off:end] = enc
            off = put_value(buf, end, v[k])
        return off
    raise ValueError("cbor: unsupported type")


def _canonical_order(item):
    enc = item[0]
    return (len(enc), enc)


def dumps(v, size=64):
    """``v`` as deterministic CBOR bytes (allocates; grows its buffer as needed)."""
    while True:
        buf = bytearray(size)
        try:
            n = put_value(buf, 0, v)
        except ValueError as e:
            if str(e) != "cbor: buffer full":
                raise
            size *= 4
            continue
        return bytes(buf[:n])
