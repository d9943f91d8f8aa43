"""The telemetry format's constants and the Reading record (docs/telemetry.md).

One reading is a COSE_Sign1 (RFC 9052, CBOR tag 18), ES256, kid = device id,
whose payload is the CBOR map {1: device id, 2: seq, 3: time, 4: import Wh,
5: export Wh, 6: PV Wh, 7: power W, 8: flags}. The firmware encoder is
firmware/telemetry/cose.py; both sides are held to tests/vectors/telemetry.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TAG_COSE_SIGN1 = 18
ALG_ES256 = -7
HEADER_ALG = 1
HEADER_KID = 4
PROTECTED_ES256 = b"\xa1\x01\x26"  # {1: -7}, the firmware's exact bytes
SIG_CONTEXT = "Signature1"
DEVICE_ID_SIZE = 9
SIGNATURE_SIZE = 64

# Payload keys
KEY_DEVICE_ID = 1
KEY_SEQ = 2
KEY_TIME = 3
KEY_IMPORT_WH = 4
KEY_EXPORT_WH = 5
KEY_PV_WH = 6
KEY_POWER_W = 7
KEY_FLAGS = 8
PAYLOAD_KEYS = frozenset(range(1, 9))

U32_MAX = 2**32 - 1
I32_MIN = -(2**31)
I32_MAX = 2**31 - 1

FLAG_METER_ERROR = 0x01
FLAG_INVERTER_ERROR = 0x02
FLAG_CLOCK_UNSYNCED = 0x04
FLAG_SOFTWARE_KEY = 0x08
FLAG_COUNTER_BACKWARDS = 0x10
FLAG_OFFLINE = 0x20
FLAGS_ALL = 0x3F
FLAG_NAMES: dict[int, str] = {
    FLAG_METER_ERROR: "meter_error",
    FLAG_INVERTER_ERROR: "inverter_error",
    FLAG_CLOCK_UNSYNCED: "clock_unsynced",
    FLAG_SOFTWARE_KEY: "software_key",
    FLAG_COUNTER_BACKWARDS: "counter_backwards",
    FLAG_OFFLINE: "offline",
}

# Sizes. The firmware's canonical encoding of one reading is at most
# MAX_CANONICAL_SIGN1_SIZE bytes (uint32 seq/time/counters, int32 power);
# the decoder's cap is looser so that other valid encodings of the same
# message (e.g. from another COSE library) still fit.
MAX_CANONICAL_SIGN1_SIZE = 137
MAX_SIGN1_SIZE = 256
MAX_BATCH = 64
MAX_MESSAGE_SIZE = 9 + MAX_BATCH * MAX_SIGN1_SIZE


def flag_names(flags: int) -> list[str]:
    """Names of the bits set in ``flags``, lowest bit first."""
    return [name for bit, name in FLAG_NAMES.items() if flags & bit]


@dataclass(frozen=True, slots=True)
class Reading:
    """One meter reading, as signed by the device."""

    device_id: bytes
    seq: int
    time: int
    import_wh: int
    export_wh: int
    pv_wh: int
    power_w: int
    flags: int

    @property
    def flag_names(self) -> list[str]:
        return flag_names(self.flags)

    @property
    def software_key(self) -> bool:
        return bool(self.flags & FLAG_SOFTWARE_KEY)

    @property
    def clock_synced(self) -> bool:
        return self.time != 0 and not self.flags & FLAG_CLOCK_UNSYNCED

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON-ready values (device id in hex)."""
        return {"device_id": self.device_id.hex(), "seq": self.seq, "time": self.time,
                "import_wh": self.import_wh, "export_wh": self.export_wh, "pv_wh": self.pv_wh,
                "power_w": self.power_w, "flags": self.flags}

    def to_payload_map(self) -> dict[int, Any]:
        """The payload map (encode with ``cbor2.dumps(..., canonical=True)``)."""
        return {KEY_DEVICE_ID: self.device_id, KEY_SEQ: self.seq, KEY_TIME: self.time,
                KEY_IMPORT_WH: self.import_wh, KEY_EXPORT_WH: self.export_wh, KEY_PV_WH: self.pv_wh,
                KEY_POWER_W: self.power_w, KEY_FLAGS: self.flags}
