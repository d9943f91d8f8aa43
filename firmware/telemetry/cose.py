"""Signed telemetry: one reading as a COSE_Sign1 (RFC 9052), alg ES256.

The format (docs/telemetry.md has it byte by byte)::

    18([                                  ; d2 84
      h'a10126',                          ; protected: {1: -7}     43 a1 01 26
      {4: h'<device id, 9 bytes>'},       ; unprotected: kid       a1 04 49 ...
      h'<payload>',                       ; 58 LL ...
      h'<r || s, 64 bytes>'               ; 58 40 ...
    ])
    payload = {1: device id, 2: seq, 3: time, 4: import Wh, 5: export Wh,
               6: PV Wh, 7: power W (+import/-export), 8: flags}

The signature is ECDSA P-256 over SHA-256 of the Sig_structure
``["Signature1", h'a10126', h'', payload]``. The payload is canonical CBOR
(cbor2's ``canonical=True`` gives the same bytes). seq, time and the three
counters are uint32, power int32, flags a byte of the FLAG_* bits below.

``ReadingEncoder`` writes everything into buffers preallocated at construction:
one encode allocates only the hash object, the digest, the signer's 64-byte
signature and the returned message.
"""

import hashlib

from micropython import const
from telemetry import cbor

ALG_ES256 = const(-7)
TAG_COSE_SIGN1 = const(18)
DEVICE_ID_SIZE = const(9)
SIGNATURE_SIZE = const(64)

FLAG_METER_ERROR = const(0x01)       # the grid meter did not answer (values repeat the last)
FLAG_INVERTER_ERROR = const(0x02)    # the PV inverter did not answer
FLAG_CLOCK_UNSYNCED = const(0x04)    # no NTP time yet (time is 0)
FLAG_SOFTWARE_KEY = const(0x08)      # signed by the software signer, not a secure element
FLAG_COUNTER_BACKWARDS = const(0x10) # a cumulative counter went backwards
FLAG_OFFLINE = const(0x20)           # taken while the device had no broker connection
FLAGS_ALL = const(0x3F)

MAX_SIGN1_SIZE = const(137)  # uint32 counters/time/seq, int32 power, flags >= 24
MAX_BATCH = const(64)        # messages in one CBOR array on the tele topic
MAX_BATCH_SIZE = const(2 + MAX_BATCH * MAX_SIGN1_SIZE)

_U32_MAX = 0xFFFFFFFF  # not const(): beyond a small int on 32-bit ports
_I32_MIN = -0x80000000
_I32_MAX = 0x7FFFFFFF

# Sig_structure = ["Signature1", h'a10126', h'', payload]; payload >= 26 bytes
# and <= 51 bytes, so its bstr head is always 0x58 LL.
_TBS_PREFIX = b"\x84\x6aSignature1\x43\xa1\x01\x26\x40\x58"
_TBS_PAYLOAD = const(19)  # len(_TBS_PREFIX) + the length byte
# Message = d2 84 43 a1 01 26 a1 04 49 <kid> 58 LL <payload> 58 40 <sig>
_MSG_PREFIX = b"\xd2\x84\x43\xa1\x01\x26\xa1\x04\x49"
_MSG_PAYLOAD = const(20)  # len(_MSG_PREFIX) + 9 (kid) + 0x58 + length byte
_MAX_PAYLOAD = const(51)


class ReadingEncoder:
    """Encodes and signs readings for one device (``signer``: the secure_sign interface)."""

    def __init__(self, signer):
        device_id = signer.device_id
        if len(device_id) != DEVICE_ID_SIZE:
            raise ValueError("device id must be 9 bytes")
        self.signer = signer
        self.device_id = bytes(device_id)
        self.software = bool(signer.software)
        tbs = bytearray(_TBS_PAYLOAD + _MAX_PAYLOAD)
        tbs[0:len(_TBS_PREFIX)] = _TBS_PREFIX
        self._tbs = tbs
        self._tbs_mv = memoryview(tbs)
        msg = bytearray(MAX_SIGN1_SIZE)
        msg[0:9] = _MSG_PREFIX
        msg[9:18] = self.device_id
        msg[18] = 0x58
        self._msg = msg
        self._msg_mv = memoryview(msg)

    def encode(self, seq, time, import_wh, export_wh, pv_wh, power_w, flags=0):
        """Sign one reading and return the tagged COSE_Sign1 as bytes.

        ``time`` 0 means the clock is not synced (FLAG_CLOCK_UNSYNCED is set);
        FLAG_SOFTWARE_KEY is set from ``signer.software``. Values out of range
        (uint32; power int32; unknown flag bits) raise ValueError.
        """
        if not (0 <= seq <= _U32_MAX and 0 <= time <= _U32_MAX and 0 <= import_wh <= _U32_MAX
                and 0 <= export_wh <= _U32_MAX and 0 <= pv_wh <= _U32_MAX):
            raise ValueError("seq, time and counters must be uint32")
        if not _I32_MIN <= power_w <= _I32_MAX:
            raise ValueError("power_w must be int32")
        if flags & ~FLAGS_ALL or flags < 0:
            raise ValueError("unknown flag bits")
        if time == 0:
            flags |= FLAG_CLOCK_UNSYNCED
        if self.software:
            flags |= FLAG_SOFTWARE_KEY
        b = self._tbs
        o = _TBS_PAYLOAD
        b[o] = 0xA8  # map(8)
        b[o + 1] = 0x01
        o = cbor.put_bytes(b, o + 2, self.device_id)
        b[o] = 0x02
        o = cbor.put_int(b, o + 1, seq)
        b[o] = 0x03
        o = cbor.put_int(b, o + 1, time)
        b[o] = 0x04
        o = cbor.put_int(b, o + 1, import_wh)
        b[o] = 0x05
        o = cbor.put_int(b, o + 1, export_wh)
        b[o] = 0x06
        o = cbor.put_int(b, o + 1, pv_wh)
        b[o] = 0x07
        o = cbor.put_int(b, o + 1, power_w)
        b[o] = 0x08
        o = cbor.put_int(b, o + 1, flags)
        n = o - _TBS_PAYLOAD
        b[_TBS_PAYLOAD - 1] = n
        sig = self.signer.sign_digest(hashlib.sha256(self._tbs_mv[:o]).digest())
        if len(sig) != SIGNATURE_SIZE:
            raise ValueError("signer returned a bad signature")
        m = self._msg
        m[_MSG_PAYLOAD - 1] = n
        end = _MSG_PAYLOAD + n
        m[_MSG_PAYLOAD:end] = self._tbs_mv[_TBS_PAYLOAD:o]
        m[end] = 0x58
        m[end + 1] = SIGNATURE_SIZE
        m[end + 2:end + 66] = sig
        return bytes(self._msg_mv[:end + 66])


def wrap_array_into(buf, messages):
    """Write ``messages`` (encoded COSE_Sign1s) as one CBOR array into ``buf``; return its length."""
    n = len(messages)
    if n < 1 or n > MAX_BATCH:
        raise ValueError("1..MAX_BATCH messages per array")
    o = cbor.put_array(buf, 0, n)
    for m in messages:
        end = o + len(m)
        if end > len(buf):
            raise ValueError("cbor: buffer full")
        buf[o:end] = m
        o = end
    return o


def wrap_array(messages):
    """Several already-encoded COSE_Sign1 messages as one CBOR array, for ``tele``.

    Returns a bytearray of exactly the array's size (one allocation).
    """
    size = 1 if len(messages) < 24 else 2
    for m in messages:
        size += len(m)
    buf = bytearray(size)
    wrap_array_into(buf, messages)
    return buf
