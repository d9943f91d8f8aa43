"""`metanoia gateway devices add|list|show|revoke`: the complex's device registry.

Registered by ``gateway.cli.gateway.register``; docs/devices.md.
Exit status: 0 ok; 1 refused (duplicate, unknown, already revoked); 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.devices import DeviceRecord, DeviceRegistry

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(gsub: argparse._SubParsersAction) -> None:
    dev = gsub.add_parser("devices", help="the device registry: add, list, show, revoke",
                          description="Provisioning records in, pinned keys out (docs/devices.md).")
    dsub = dev.add_subparsers(dest="devices_command", metavar="ACTION")
    dev.set_defaults(func=lambda _a: (dev.print_help(), EXIT_USAGE)[1])

    add = dsub.add_parser("add", help="register a device from its provisioning record (or device.json)")
    src = add.add_mutually_exclusive_group(required=True)
    src.add_argument("file", nargs="?", type=Path, metavar="FILE",
                     help="provisioning record (JSON), or the device.json of `metanoia device sim`; - = stdin")
    src.add_argument("--json", dest="record_json", metavar="TEXT", help="the record as a JSON string")
    add.add_argument("--claim-code", metavar="CODE", default=None,
                     help="the device's one-time claim code, when the record has no claim (only its hash "
                          "is stored)")
    add.add_argument("--grid", default=None, help="grid id, when the record has none")
    add.add_argument("--profile", default=None, help="meter profile, when the record has none")
    add.add_argument("--db", required=True, metavar="FILE", help="the gateway's SQLite database")
    add.set_defaults(func=cmd_add)

    ls = dsub.add_parser("list", help="registered devices")
    ls.add_argument("--grid", default=None)
    ls.add_argument("--status", choices=("active", "revoked"), default=None)
    ls.add_argument("--json", action="store_true", help="one JSON object on the last line")
    ls.add_argument("--db", required=True, metavar="FILE")
    ls.set_defaults(func=cmd_list)

    show = dsub.add_parser("show", help="one device")
    show.add_argument("device", metavar="ID", help="device id (18 hex digits)")
    show.add_argument("--json", action="store_true")
    show.add_argument("--db", required=True, metavar="FILE")
    show.set_defaults(func=cmd_show)

    rev = dsub.add_parser("revoke", help="revoke a device for good (its readings are then rejected)")
    rev.add_argument("device", metavar="ID")
    rev.add_argument("--reason", required=True, help="why (kept with the record)")
    rev.add_argument("--db", required=True, metavar="FILE")
    rev.set_defaults(func=cmd_revoke)


def _registry(db: str) -> DeviceRegistry:
    from gateway.db import connect
    from gateway.devices import DeviceRegistry

    return DeviceRegistry(connect(db))


def _err(action: str, e: Exception) -> None:
    print(f"metanoia gateway devices {action}: {e}", file=sys.stderr)


def cmd_add(args: argparse.Namespace) -> int:
    from gateway.devices import BadRecordError, DeviceRegistryError, load_record_file, record_from_dict

    try:
        if args.record_json is not None:
            text = args.record_json
        elif str(args.file) == "-":
            text = sys.stdin.read()
        else:
            text = args.file.read_text()
    except OSError as e:
        _err("add", e)
        return EXIT_USAGE
    reg = _registry(args.db)
    try:
        record = record_from_dict(load_record_file(text), claim_code=args.claim_code, grid=args.grid,
                                  profile=args.profile, now=reg._now())
        rec = reg.add(record)
    except BadRecordError as e:
        _err("add", e)
        return EXIT_USAGE
    except DeviceRegistryError as e:
        _err("add", e)
        return EXIT_FAILED
    finally:
        reg.conn.close()
    print(f"added {rec.id_hex} grid={rec.grid} profile={rec.profile}")
    return EXIT_OK


def _line(r: DeviceRecord) -> str:
    paired = r.household or "-"
    return f"{r.id_hex}  {r.grid:<12} {r.profile:<12} {r.status:<8} household={paired}  {r.name or ''}".rstrip()


def cmd_list(args: argparse.Namespace) -> int:
    reg = _registry(args.db)
    try:
        recs = reg.list(args.grid, status=args.status)
    finally:
        reg.conn.close()
    for r in recs:
        print(_line(r))
    if args.json:
        print(json.dumps({"devices": [r.to_json() for r in recs], "count": len(recs)}))
    elif not recs:
        print("no devices")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from gateway.devices import DeviceRegistryError

    reg = _registry(args.db)
    try:
        rec = reg.require(args.device)
    except DeviceRegistryError as e:
        _err("show", e)
        return EXIT_FAILED if e.reason == "unknown_device" else EXIT_USAGE
    finally:
        reg.conn.close()
    if args.json:
        out = rec.to_json()
        out["public_key_pem"] = rec.public_key_pem()
        print(json.dumps(out))
    else:
        for k, v in rec.to_json().items():
            print(f"{k:<14} {v if v is not None else '-'}")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    from gateway.devices import BadRecordError, DeviceRegistryError

    reg = _registry(args.db)
    try:
        rec = reg.revoke(args.device, args.reason)
    except BadRecordError as e:
        _err("revoke", e)
        return EXIT_USAGE
    except DeviceRegistryError as e:
        _err("revoke", e)
        return EXIT_FAILED
    finally:
        reg.conn.close()
    print(f"revoked {rec.id_hex}: {rec.revoke_reason} (regenerate the broker config: "
          f"metanoia gateway broker-config)")
    return EXIT_OK
