"""`metanoia telemetry`: decode and verify signed telemetry (docs/telemetry.md).

``metanoia telemetry decode FILE --key DEVICE.json [--json]`` strictly decodes
one ``tele`` message (a COSE_Sign1 or a CBOR array of them) and checks every
signature against the device's key, then prints each reading. FILE holds the
message as raw CBOR bytes or as hex text; ``-`` reads standard input. DEVICE.json
(as written by ``metanoia device sim``) has ``device_id`` (hex) and
``public_key_pem``.

With ``--json`` the last line is one JSON object: for a single COSE_Sign1 the
reading (``device_id``, ``seq``, ``time``, ``import_wh``, ``export_wh``,
``pv_wh``, ``power_w``, ``flags``, ``valid``, and ``reason``/``error`` when it is
not valid); for an array ``{"valid", "count", "readings": [...]}``; for a
message that cannot be decoded at all ``{"valid": false, "reason", "error"}``.
Fields of a reading whose signature fails are shown, marked ``"valid": false``.

Exit status: 0 every reading is valid; 1 the message or a signature is invalid
(the reason code is printed, e.g. ``bad_signature``); 2 bad arguments, an
unreadable FILE or an unusable DEVICE.json.
"""

from __future__ import annotations

import argparse
import binascii
import json
import logging
import string
import sys
import time
from pathlib import Path
from typing import Any

from gateway.telemetry import Reading, Sign1, TelemetryError, decode_message, load_public_key, verify

log = logging.getLogger(__name__)

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
_HEX = frozenset(string.hexdigits.encode() + string.whitespace.encode())


class UsageError(Exception):
    """An unreadable input file or key file (exit status 2)."""


def register(sub: argparse._SubParsersAction) -> None:
    tele = sub.add_parser("telemetry", help="decode and verify signed telemetry (COSE_Sign1)")
    tsub = tele.add_subparsers(dest="telemetry_command", metavar="SUBCOMMAND")
    tele.set_defaults(func=lambda _a: (tele.print_help(), EXIT_USAGE)[1])

    dec = tsub.add_parser("decode", help="strictly decode a tele message and check its signatures",
                          description="Exit 0 only when every reading is valid; 1 with the reason otherwise.")
    dec.add_argument("file", metavar="FILE", help="the message: raw CBOR or hex text; - for stdin")
    dec.add_argument("--key", required=True, metavar="DEVICE.json",
                     help="the device's key file (device_id, public_key_pem)")
    dec.add_argument("--json", action="store_true", help="one JSON object on the last line")
    dec.set_defaults(func=cmd_decode)


def read_message(path: str) -> bytes:
    """The message bytes from FILE (raw CBOR, or hex text with optional whitespace)."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    # A COSE_Sign1 starts with 0xd2 and an array with 0x8_/0x9_: never hex text.
    if data and all(b in _HEX for b in data):
        try:
            return binascii.unhexlify(b"".join(data.split()))
        except binascii.Error:
            pass  # odd length: treat as raw bytes (and let the decoder say why not)
    return data


def read_device(path: str) -> tuple[bytes, Any]:
    """(device id, public key) from a DEVICE.json."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected a JSON object")
    try:
        device_id = bytes.fromhex(doc["device_id"])
        pem = doc["public_key_pem"]
        if len(device_id) != 9 or not isinstance(pem, str):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{path}: needs device_id (9 bytes, hex) and public_key_pem") from None
    try:
        key = load_public_key(pem)
    except TelemetryError as e:
        raise UsageError(f"{path}: {e}") from None
    return device_id, key


def _check(sign1: Sign1, key: Any, device_id: bytes) -> tuple[Reading, TelemetryError | None]:
    try:
        return verify(sign1, key, device_id=device_id), None
    except TelemetryError as e:
        return sign1.reading, e


def _when(t: int) -> str:
    if t == 0:
        return "0 (clock not synced)"
    return f"{t} ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(t))})"


def _print_reading(r: Reading, err: TelemetryError | None, label: str) -> None:
    print(f"{label}: {'VALID' if err is None else 'INVALID (' + err.reason + ')'}")
    print(f"  device_id  {r.device_id.hex()}")
    print(f"  seq        {r.seq}")
    print(f"  time       {_when(r.time)}")
    print(f"  import_wh  {r.import_wh}")
    print(f"  export_wh  {r.export_wh}")
    print(f"  pv_wh      {r.pv_wh}")
    print(f"  power_w    {r.power_w}")
    print(f"  flags      0x{r.flags:02x}{' (' + ', '.join(r.flag_names) + ')' if r.flags else ''}")
    if err is not None:
        print(f"  error      {err}")


def _as_json(r: Reading, err: TelemetryError | None) -> dict[str, Any]:
    out = r.to_json()
    out["valid"] = err is None
    if err is not None:
        out["reason"] = err.reason
        out["error"] = str(err)
    return out


def cmd_decode(args: argparse.Namespace) -> int:
    try:
        data = read_message(args.file)
        device_id, key = read_device(args.key)
    except UsageError as e:
        print(f"metanoia telemetry decode: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sign1s = decode_message(data)
    except TelemetryError as e:
        print(f"invalid: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"valid": False, "reason": e.reason, "error": str(e)}))
        return EXIT_INVALID
    results = [_check(s, key, device_id) for s in sign1s]
    batch = data[0] >> 5 == 4
    for i, (reading, err) in enumerate(results):
        _print_reading(reading, err, f"reading {i + 1}/{len(results)}" if batch else "reading")
    errors = [err for _r, err in results if err is not None]
    if errors:
        print(f"invalid: {errors[0]}", file=sys.stderr)
    if args.json:
        if batch:
            doc: dict[str, Any] = {"valid": not errors, "count": len(results),
                                   "readings": [_as_json(r, e) for r, e in results]}
        else:
            doc = _as_json(*results[0])
        print(json.dumps(doc))
    return EXIT_INVALID if errors else EXIT_OK
