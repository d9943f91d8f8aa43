"""`metanoia gateway broker-config`: the complex's production Mosquitto config from the registry.

Registered by ``gateway.cli.gateway.register``; docs/broker.md.
Exit status: 0 ok; 1 failed (unusable CA on disk, file system); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(gsub: argparse._SubParsersAction) -> None:
    p = gsub.add_parser(
        "broker-config", help="generate the TLS Mosquitto config, CA, credentials and ACL from the registry",
        description="Writes mosquitto.conf, the complex's CA (reused when present), the server certificate, "
                    "one password per active device plus the gateway's, and an ACL under which a device "
                    "writes only its own tele/state and reads only its own ack/cmd. Revoked devices are "
                    "left out. Idempotent; reload Mosquitto afterwards (systemctl reload mosquitto).")
    p.add_argument("--db", required=True, metavar="FILE", help="the gateway's SQLite database")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="directory for the files (e.g. /etc/mosquitto/metanoia); paths in mosquitto.conf "
                        "point into it")
    p.add_argument("--grid", required=True, metavar="ID", help="the complex's grid id")
    p.add_argument("--hostname", action="append", default=None, metavar="H",
                   help="host name or IP devices use to reach the broker (repeatable; default: this "
                        "host's name, localhost, 127.0.0.1)")
    p.add_argument("--port", type=int, default=8883, help="TLS listener port (default %(default)s)")
    p.add_argument("--bind", default=None, metavar="ADDR", help="listen on this address only (default: all)")
    p.add_argument("--persistence-dir", default=None, metavar="DIR",
                   help="set persistence_location (default: leave it to the main mosquitto.conf; Debian's "
                        "sets /var/lib/mosquitto/ and Mosquitto refuses a second one)")
    p.add_argument("--gateway-clients", type=int, default=1, metavar="N",
                   help="gateway processes that connect at once, one credential each (default 1)")
    p.add_argument("--owner", default=None, metavar="USER[:GROUP]",
                   help="give the files Mosquitto reads (passwd, acl, server.key) to this user, e.g. "
                        "mosquitto (needs root)")
    p.add_argument("--rotate", action="append", default=[], metavar="USER",
                   help="new password for this device id / gateway user (repeatable; 'all' for everyone)")
    p.add_argument("--renew-server-cert", action="store_true", help="issue a new server certificate now")
    p.add_argument("--json", action="store_true", help="one JSON object on the last line")
    p.set_defaults(func=cmd_broker_config)


def default_hostnames() -> list[str]:
    return sorted({socket.getfqdn(), socket.gethostname(), "localhost", "127.0.0.1"} - {""})


def cmd_broker_config(args: argparse.Namespace) -> int:
    from gateway.broker import BrokerConfigError, BrokerSettings, PkiError, generate
    from gateway.db import connect
    from gateway.devices import DeviceRegistry, DeviceRegistryError

    try:
        settings = BrokerSettings(grid=args.grid, hostnames=tuple(args.hostname or default_hostnames()),
                                  port=args.port, bind=args.bind, persistence_dir=args.persistence_dir,
                                  gateway_clients=args.gateway_clients, owner=args.owner)
    except (BrokerConfigError, DeviceRegistryError) as e:
        print(f"metanoia gateway broker-config: {e}", file=sys.stderr)
        return EXIT_USAGE
    conn = connect(args.db)
    try:
        result = generate(DeviceRegistry(conn), args.out, settings, rotate=args.rotate,
                          renew_server=args.renew_server_cert)
    except BrokerConfigError as e:
        print(f"metanoia gateway broker-config: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (PkiError, OSError, LookupError) as e:
        print(f"metanoia gateway broker-config: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        conn.close()
    print(f"broker config for grid {args.grid} in {result.out}: {len(result.devices)} device credential(s), "
          f"gateway user(s) {', '.join(result.gateway_users)}")
    if result.ca_created:
        print(f"new CA: copy {result.out / 'ca.crt'} to every device (mqtt.ca_file); keep ca.key backed up")
    if result.server_issued:
        print("new server certificate issued")
    if result.new_credentials:
        print(f"new passwords for: {', '.join(result.new_credentials)} (in {result.out / 'credentials'})")
    if result.removed_credentials:
        print(f"credentials removed: {', '.join(result.removed_credentials)}")
    if result.changed_files:
        print("reload the broker: systemctl reload mosquitto")
    if args.json:
        print(json.dumps({"out": str(result.out), "conf": str(result.conf), "grid": args.grid,
                          "devices": list(result.devices), "gateway_users": list(result.gateway_users),
                          "ca_created": result.ca_created, "server_issued": result.server_issued,
                          "new_credentials": list(result.new_credentials),
                          "removed_credentials": list(result.removed_credentials),
                          "changed_files": list(result.changed_files)}))
    return EXIT_OK
