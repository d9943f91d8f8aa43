"""``metanoia device build|flash|provision|label``: argument parsing and output
only; the work is in ``gateway.installer``. docs/installer.md is the guide."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Callable

from gateway.installer import InstallerError

WIFI_PASSWORD_ENV = "METANOIA_WIFI_PASSWORD"
# Reasons where the board or device refused (exit 1); everything else is bad input (2).
DEVICE_REASONS = {"not_in_download_mode", "wrong_chip", "verify_mismatch", "verify_failed", "no_repl", "port_busy",
                  "esptool", "esptool_timeout", "mpremote", "no_chip", "chip_config", "chip_refused",
                  "device_error", "no_firmware"}


def register(dsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = dsub.add_parser("build", help="compile the firmware with mpy-cross into a bundle with its config")
    b.add_argument("--config", type=Path, help="site config (TOML; docs/installer.md); default: demo defaults")
    b.add_argument("--out", required=True, type=Path, help="bundle folder (replaced if it holds an older bundle)")
    b.add_argument("--json", action="store_true", help="one summary object on the last line")
    b.set_defaults(func=guarded(run_build))

    f = dsub.add_parser("flash", help="write MicroPython (esptool) and the bundle (mpremote), then verify")
    f.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    f.add_argument("--firmware", type=Path, help="MicroPython firmware.bin for the ESP32 (written at 0x1000)")
    f.add_argument("--bundle", type=Path, help="bundle folder from `metanoia device build`")
    f.add_argument("--erase", action="store_true", help="erase the whole flash first (new boards only)")
    f.add_argument("--keep-config", action="store_true",
                   help="leave the device's /config.json (a provisioned device being updated)")
    f.add_argument("--baud", type=int, default=460800)
    f.add_argument("--connect-attempts", type=int, help="esptool connection attempts (default: esptool's)")
    f.add_argument("--repl-timeout", type=float, default=30.0, help="seconds to wait for MicroPython's REPL")
    f.add_argument("--dry-run", action="store_true", help="print the exact commands, run nothing")
    f.set_defaults(func=guarded(run_flash))

    p = dsub.add_parser("provision", help="generate the key in the ATECC608, write settings, make the record")
    p.add_argument("--port", required=True,
                   help="serial port of the board; 'emulator' = a board flashed with --bundle and a blank ATECC608, "
                        "emulated behind a pty (MicroPython under Node; for training and CI)")
    p.add_argument("--gateway", required=True, help="the gateway's URL, e.g. https://gw.oak-court.example")
    p.add_argument("--grid", required=True, help="the complex's grid id")
    p.add_argument("--name", help="the flat (e.g. 101-A), printed on the label")
    p.add_argument("--profile", help="meter profile for the record (default: the device config's)")
    p.add_argument("--wifi-ssid", help=f"the flat's Wi-Fi; the password comes from ${WIFI_PASSWORD_ENV} or a prompt")
    p.add_argument("--out", type=Path, default=Path("records"), help="folder for <device_id>.json (mode 0600)")
    p.add_argument("--bundle", type=Path, help="with --port emulator: the bundle to run")
    p.add_argument("--json", action="store_true", help="one summary object on the last line (no claim code)")
    p.set_defaults(func=guarded(run_provision))

    c = dsub.add_parser("configure", help="put the broker credential (and CA) or a new Wi-Fi on a provisioned device")
    c.add_argument("--port", required=True, help="serial port of the board")
    c.add_argument("--credentials", type=Path, help="credentials/<device id>.json from `gateway broker-config`")
    c.add_argument("--ca", type=Path, help="ca.crt from `gateway broker-config` (needed for a TLS broker)")
    c.add_argument("--wifi-ssid", help=f"a new Wi-Fi; the password comes from ${WIFI_PASSWORD_ENV} or a prompt")
    c.set_defaults(func=guarded(run_configure))

    lab = dsub.add_parser("label", help="printable QR labels (PNG or PDF, 3 x 8 per A4 sheet)")
    lab.add_argument("--record", required=True, action="append", type=Path,
                     help="provisioning record, or a folder of them (repeatable)")
    lab.add_argument("--gateway", required=True, help="the gateway's URL (the QR opens GATEWAY/pair?d=..&c=..)")
    lab.add_argument("--out", required=True, type=Path, help="labels.pdf or labels.png")
    lab.add_argument("--skip", type=int, default=0, help="label positions already used on the first sheet")
    lab.set_defaults(func=guarded(run_label))


def guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Installer errors -> ``error [reason]: message`` and exit 1 (device) or 2 (input)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except InstallerError as e:
            print(f"error [{e.reason}]: {e}", file=sys.stderr)
            return 1 if e.reason in DEVICE_REASONS else 2
    return run


def run_build(args: argparse.Namespace) -> int:
    from gateway.installer import build, site

    b = build.build(site.load(args.config), args.out)
    n_mpy = sum(f.path.endswith(".mpy") for f in b.files)
    print(f"firmware {b.version}: {n_mpy} modules compiled, {len(b.files)} files, "
          f"{sum(f.size for f in b.files)} bytes -> {b.fs}")
    print(f"grid {b.grid}, meter {b.profile}, gateway {b.gateway_url}; manifest {b.root / build.MANIFEST}")
    if args.json:
        print(json.dumps({"firmware_version": b.version, "files": len(b.files), "modules": n_mpy,
                          "bytes": sum(f.size for f in b.files), "out": str(b.root)}))
    return 0


def run_flash(args: argparse.Namespace) -> int:
    from gateway.installer import build, flash

    if args.firmware is None and args.bundle is None:
        print("error [nothing_to_flash]: give --firmware, --bundle or both", file=sys.stderr)
        return 2
    bundle = build.load(args.bundle) if args.bundle is not None else None
    o = flash.Options(port=args.port, firmware=args.firmware, bundle=bundle, baud=args.baud, erase=args.erase,
                      keep_config=args.keep_config, connect_attempts=args.connect_attempts,
                      repl_timeout=args.repl_timeout)
    if args.dry_run:
        for step in flash.plan(o):
            print(step.shell())
        return 0
    flash.flash(o)
    return 0


def run_provision(args: argparse.Namespace) -> int:
    from gateway.installer import provision
    from gateway.installer.transport import MpremoteTransport, check_port

    password = wifi_password(args.wifi_ssid)
    kw: dict[str, Any] = dict(gateway_url=args.gateway, grid=args.grid, name=args.name, profile=args.profile, out_dir=args.out,
              wifi_ssid=args.wifi_ssid, wifi_password=password)
    if args.port == "emulator":
        from gateway.installer import build
        from hil.raw_repl_board import RawReplBoard

        if args.bundle is None:
            print("error [no_bundle]: --port emulator needs --bundle", file=sys.stderr)
            return 2
        # A flashed board with a new blank chip behind a pty: the same mpremote path as a real one.
        with RawReplBoard(build.load(args.bundle).fs, seed=secrets.token_bytes(16)) as board:
            p = provision.provision(MpremoteTransport(board.port), **kw)
    else:
        check_port(args.port)
        p = provision.provision(MpremoteTransport(args.port), **kw)
    dev, rec = p.device, p.record
    chip = ("configured and locked the ATECC608, " if dev["configured"] else "") + \
        ("generated its key" if dev["fresh_key"] else "the chip already had its key (kept)")
    print(f"device {dev['device_id']} (firmware {dev['firmware_version']}): {chip}")
    print(f"config: grid {dev['grid']}" + (f", Wi-Fi {args.wifi_ssid}" if args.wifi_ssid is not None else ""))
    print(f"record: {p.path} (holds the claim code: keep it private until the label is on the device)")
    print(f"next: metanoia device label --record {p.path} --gateway {args.gateway} --out labels.pdf")
    if args.json:
        print(json.dumps({"device_id": rec["device_id"], "public_key": rec["public_key"], "grid": rec["grid"],
                          "profile": rec["profile"], "name": rec.get("name"), "record": str(p.path),
                          "firmware_version": dev["firmware_version"], "configured": dev["configured"],
                          "fresh_key": dev["fresh_key"]}))
    return 0


def wifi_password(ssid: str | None) -> str | None:
    if ssid is None:
        return None
    password = os.environ.get(WIFI_PASSWORD_ENV)
    if password is None:
        password = getpass.getpass(f"Wi-Fi password for {ssid} (empty: open network): ")
    return password


def run_configure(args: argparse.Namespace) -> int:
    from gateway.installer import provision
    from gateway.installer.transport import MpremoteTransport, check_port

    check_port(args.port)
    ca = args.ca.read_bytes() if args.ca is not None else None
    dev = provision.configure(MpremoteTransport(args.port), credentials=args.credentials, ca=ca,
                              wifi_ssid=args.wifi_ssid, wifi_password=wifi_password(args.wifi_ssid))
    print(f"device {dev['device_id']}: broker {dev['mqtt_host']} as {dev['mqtt_user']} "
          f"({'TLS' if dev['ssl'] else 'plain'}), grid {dev['grid']}; reset it to apply")
    return 0


def run_label(args: argparse.Namespace) -> int:
    from gateway.installer import label
    from gateway.installer.site import check_gateway_url

    paths = [p for r in args.record for p in (sorted(r.glob("*.json")) if r.is_dir() else [r])]
    labels = [label.load_label(p, args.gateway) for p in paths]
    ids = [lab.device_id for lab in labels]
    if len(set(ids)) != len(ids):
        print("error [duplicate_record]: the same device is given twice", file=sys.stderr)
        return 2
    pages = label.render(labels, check_gateway_url(args.gateway), skip=args.skip)
    written = label.write(pages, args.out)
    print(f"{len(labels)} label(s) on {len(pages)} sheet(s): {', '.join(map(str, written))}")
    return 0
