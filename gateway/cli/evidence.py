"""``metanoia evidence``: per-interval Merkle roots of a grid's readings, proofs, verification.

``root --db DB --grid G --interval ISO|unix [--json]`` prints (and records, as a new
version if the readings changed) the root of the interval holding that time.
``prove --db DB --grid G --device HEX --seq N [--out proof.json]`` writes the
inclusion proof of one stored reading (with the raw reading, interval, root and
path). ``verify PROOF.json [--root HEX] [--leaf-count N] [--key DEVICE.json]`` needs no
database: exit 0 only when the reading is in the root (and the root and leaf count
are the ones given, and
the reading's signature verifies against DEVICE.json when given); 1 invalid;
2 bad arguments or unreadable files. See docs/evidence.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from gateway.aggregator.intervals import INTERVAL_S, IntervalError
from gateway.db import connect
from gateway.evidence import EvidenceError, EvidenceStore, ProofFormatError, load_proof, verify
from gateway.evidence.roots import iso

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evidence", help="Merkle roots of interval readings; inclusion proofs")
    esub = ev.add_subparsers(dest="evidence_command", metavar="SUBCOMMAND")
    ev.set_defaults(func=lambda _a: (ev.print_help(), EXIT_USAGE)[1])

    root = esub.add_parser("root", help="the root of a grid's interval (recorded as a version)")
    root.add_argument("--db", required=True, help="the gateway database")
    root.add_argument("--grid", required=True)
    root.add_argument("--interval", required=True, metavar="ISO|UNIX",
                      help="a time in the interval: unix seconds or ISO 8601 (no offset = UTC)")
    root.add_argument("--interval-s", type=int, default=INTERVAL_S, help="interval length (default 900)")
    root.add_argument("--json", action="store_true", help="one JSON object on the last line")
    root.set_defaults(func=cmd_root)

    prove = esub.add_parser("prove", help="inclusion proof of one stored reading")
    prove.add_argument("--db", required=True)
    prove.add_argument("--grid", required=True)
    prove.add_argument("--device", required=True, metavar="HEX", help="device id, 18 hex digits")
    prove.add_argument("--seq", required=True, type=int)
    prove.add_argument("--interval-s", type=int, default=INTERVAL_S)
    prove.add_argument("--out", type=Path, help="write the proof here (default: stdout)")
    prove.set_defaults(func=cmd_prove)

    ver = esub.add_parser("verify", help="check a proof (no database needed); exit 0 only if valid")
    ver.add_argument("proof", metavar="PROOF.json")
    ver.add_argument("--root", metavar="HEX", help="the root you trust (e.g. cited by a settlement)")
    ver.add_argument("--leaf-count", type=int, metavar="N", help="the leaf count cited with the root")
    ver.add_argument("--key", metavar="DEVICE.json", help="also verify the reading's signature")
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(func=cmd_verify)


def parse_time(text: str) -> int:
    """Unix seconds, or ISO 8601 (a time without an offset is UTC)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--interval {text!r}: not unix seconds nor an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def _open(path: str, interval_s: int) -> EvidenceStore:
    if not Path(path).is_file():
        raise UsageError(f"no database at {path}")
    if interval_s <= 0:
        raise UsageError("--interval-s must be positive")
    return EvidenceStore(connect(path), interval_s=interval_s)


def _fail(cmd: str, e: Exception, code: int) -> int:
    print(f"metanoia evidence {cmd}: {e}", file=sys.stderr)
    return code


def cmd_root(args: argparse.Namespace) -> int:
    try:
        t = parse_time(args.interval)
        store = _open(args.db, args.interval_s)
        root = store.root(args.grid, t)
    except UsageError as e:
        return _fail("root", e, EXIT_USAGE)
    except (EvidenceError, IntervalError) as e:
        return _fail("root", e, EXIT_INVALID)
    print(f"grid {root.grid} interval {iso(root.start)} (+{root.interval_s} s): {root.leaf_count} readings")
    print(f"root {root.root.hex()} (version {root.version})")
    if args.json:
        print(json.dumps(root.to_json()))
    return EXIT_OK


def cmd_prove(args: argparse.Namespace) -> int:
    try:
        device = bytes.fromhex(args.device)
        if len(device) != 9:
            raise ValueError
    except ValueError:
        return _fail("prove", UsageError("--device must be 9 bytes in hex"), EXIT_USAGE)
    try:
        store = _open(args.db, args.interval_s)
        proof = store.prove(args.grid, None, device, args.seq)
    except UsageError as e:
        return _fail("prove", e, EXIT_USAGE)
    except (EvidenceError, IntervalError) as e:
        return _fail("prove", e, EXIT_INVALID)
    text = json.dumps(proof.to_json(), indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
        print(f"proof of {device.hex()} seq {proof.seq}: leaf {proof.leaf_index} of {proof.leaf_count} in "
              f"{iso(proof.interval_start)}, root {proof.root.hex()} v{proof.root_version} -> {args.out}")
    else:
        print(text)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from gateway.cli.telemetry import UsageError as KeyUsageError
    from gateway.cli.telemetry import read_device
    from gateway.telemetry import TelemetryError, decode_message
    from gateway.telemetry import verify as verify_signature

    try:
        proof = load_proof(Path(args.proof).read_text())
        trusted = bytes.fromhex(args.root) if args.root else proof.root
        if len(trusted) != 32:
            raise ValueError("--root must be 32 bytes in hex")
        key = read_device(args.key) if args.key else None
    except OSError as e:
        return _fail("verify", UsageError(f"cannot read {args.proof}: {e.strerror or e}"), EXIT_USAGE)
    except (ProofFormatError, KeyUsageError, ValueError) as e:
        return _fail("verify", e, EXIT_USAGE)
    reasons: list[str] = []
    if proof.root != trusted:
        reasons.append("root_mismatch: the proof is for another root than --root")
    if args.leaf_count is not None and args.leaf_count != proof.leaf_count:
        reasons.append(f"leaf_count_mismatch: the proof is for a tree of {proof.leaf_count}, not {args.leaf_count}")
    if not verify(trusted, proof.reading, proof):
        reasons.append("not_included: the reading and path do not give the root (or the reading is not the "
                       "device/seq/interval the proof names)")
    signature = "not checked"
    if key is not None:
        device_id, public_key = key
        try:
            (sign1,) = decode_message(proof.reading)
            verify_signature(sign1, public_key, device_id=device_id)
            signature = "valid"
        except (TelemetryError, ValueError) as e:
            signature = f"invalid ({getattr(e, 'reason', 'bad_message')})"
            reasons.append(f"bad_signature: {e}")
    ok = not reasons
    print(f"reading {proof.device_id.hex()} seq {proof.seq}, leaf {proof.leaf_index} of {proof.leaf_count}, "
          f"grid {proof.grid} interval {iso(proof.interval_start)}")
    print(f"root {trusted.hex()}: {'INCLUDED' if ok else 'INVALID'}; signature {signature}")
    for r in reasons:
        print(f"invalid: {r}", file=sys.stderr)
    if args.json:
        print(json.dumps({"valid": ok, "root": trusted.hex(), "device_id": proof.device_id.hex(), "seq": proof.seq,
                          "interval_start": proof.interval_start, "signature": signature,
                          "reasons": [r.split(":")[0] for r in reasons]}))
    return EXIT_OK if ok else EXIT_INVALID
