"""`metanoia gateway ...`: run and operate the gateway of one complex.

One function per sub-command, each registered by a small ``_add_<name>``
helper called from ``register``. Sub-commands:

- ``run``: the aggregator's ingest service (verify, store, acknowledge);
  docs/gateway.md.
- ``gap close DEVICE SEQ``: an operator closes a permanent hole in a device's
  seqs, so its acknowledgements move past it (recorded in the database).
- (others add ``devices``, ``broker-config``, ``status`` here, each with its
  own ``_add_<name>`` and ``cmd_<name>``.)

Exit status: 0 ok; 1 the command failed; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    gw = sub.add_parser("gateway", help="run and operate the gateway of a complex")
    gsub = gw.add_subparsers(dest="gateway_command", metavar="SUBCOMMAND")
    gw.set_defaults(func=lambda _a: (gw.print_help(), EXIT_USAGE)[1])
    _add_run(gsub)
    _add_gap(gsub)
    from gateway.cli import gateway_devices  # devices add|list|show|revoke (docs/devices.md)
    gateway_devices.register(gsub)
    from gateway.cli import gateway_broker  # broker-config (docs/broker.md)
    gateway_broker.register(gsub)
    from gateway.cli import gateway_status  # status [--json]
    gateway_status.register(gsub)
    from gateway.cli import gateway_web  # web serve|add-operator (docs/homeowner.md, docs/operator.md)
    gateway_web.register(gsub)
    from gateway.cli import gateway_view  # view operator|household (docs/web-readmodel.md)
    gateway_view.register(gsub)


# -- run ------------------------------------------------------------------------------------

def _add_run(gsub: argparse._SubParsersAction) -> None:
    p = gsub.add_parser("run", help="verify, store and acknowledge the complex's telemetry",
                        description="Subscribe to metanoia/GRID/+/tele, verify each signed reading against "
                                    "the pinned device key, store it durably, then acknowledge it.")
    p.add_argument("--db", required=True, metavar="FILE", help="the gateway's SQLite database")
    p.add_argument("--grid", required=True, metavar="ID", help="the complex's grid id (topic prefix)")
    p.add_argument("--broker", default=None, metavar="HOST:PORT",
                   help="MQTT broker (default: from --credentials, else 127.0.0.1:1883)")
    p.add_argument("--credentials", default=None, metavar="FILE",
                   help="the gateway's broker credential from `metanoia gateway broker-config` "
                        "(credentials/gateway.json: user, password, host, port, ca_file; TLS)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="signature-verifying processes (default: one per core; 0 = verify in-process)")
    p.add_argument("--keys", metavar="FILE", default=None,
                   help="JSON {device id hex: public key hex (64-byte X||Y) or PEM} instead of the "
                        "device registry (tests, bench)")
    p.add_argument("--client-id", default=None, help="MQTT client id (default metanoia-gateway-GRID)")
    p.set_defaults(func=cmd_run)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--broker must be HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.aggregator.ingest import IngestConfig, IngestError, load_credentials, run_service

    creds: dict = {}
    try:
        if args.credentials:
            creds = load_credentials(args.credentials)
        default = f"{creds['host']}:{creds['port']}" if "host" in creds and "port" in creds else "127.0.0.1:1883"
        host, port = _host_port(args.broker or default)
    except (ValueError, IngestError) as e:
        print(f"metanoia gateway run: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.workers is not None and args.workers < 0:
        print("metanoia gateway run: --workers must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    cfg = IngestConfig(db_path=args.db, grid=args.grid, host=host, port=port, workers=args.workers,
                       keys_file=args.keys, client_id=args.client_id, username=creds.get("user"),
                       password=creds.get("password"), ca_file=creds.get("ca_file"))
    return run_service(cfg)


# -- gap close ------------------------------------------------------------------------------

def _add_gap(gsub: argparse._SubParsersAction) -> None:
    gap = gsub.add_parser("gap", help="inspect or close holes in a device's seqs")
    gapsub = gap.add_subparsers(dest="gap_command", metavar="SUBCOMMAND")
    gap.set_defaults(func=lambda _a: (gap.print_help(), EXIT_USAGE)[1])
    ls = gapsub.add_parser("list", help="devices whose acknowledgement is stalled by a hole")
    ls.add_argument("--db", required=True, metavar="FILE")
    ls.set_defaults(func=cmd_gap_list)
    close = gapsub.add_parser("close", help="declare seqs up to SEQ lost for good so acks move past them",
                              description="Records in the database that DEVICE's seqs up to SEQ that are "
                                          "missing will never arrive. The gateway's acknowledgement then "
                                          "moves past them (within a second if it is running).")
    close.add_argument("device", metavar="DEVICE", help="device id (hex)")
    close.add_argument("seq", type=int, metavar="SEQ", help="close every missing seq <= SEQ")
    close.add_argument("--db", required=True, metavar="FILE")
    close.add_argument("--reason", default="operator", help="a note kept with the record")
    close.set_defaults(func=cmd_gap_close)


def cmd_gap_list(args: argparse.Namespace) -> int:
    from gateway.aggregator.store import ReadingStore

    store = ReadingStore.open(args.db)
    try:
        gaps = store.gaps()
    finally:
        store.close()
    if not gaps:
        print("no device has a hole below its highest stored seq")
    for g in gaps:
        print(f"{g.device_id.hex()}  acked {g.contiguous}  missing {g.first_missing}..{g.next_present - 1}  "
              f"highest stored {g.highest}")
    return EXIT_OK


def cmd_gap_close(args: argparse.Namespace) -> int:
    from gateway.aggregator.store import ReadingStore, StoreError

    try:
        device_id = bytes.fromhex(args.device)
    except ValueError:
        print(f"metanoia gateway gap close: DEVICE must be hex, got {args.device!r}", file=sys.stderr)
        return EXIT_USAGE
    store = ReadingStore.open(args.db)
    try:
        ack = store.close_gap(device_id, args.seq, closed_by=args.reason)
    except StoreError as e:
        print(f"metanoia gateway gap close: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    print(f"{device_id.hex()}: seqs up to {args.seq} closed; acknowledgement now {ack}")
    return EXIT_OK
