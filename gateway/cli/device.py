"""``metanoia device``: the installer's tools (build, flash, provision, label; the
logic is in ``gateway.installer``) and simulated devices (the firmware on CPython
with the virtual rig). Exit status: 0 done, 1 refused by the device or board,
2 bad input; every refusal prints ``error [reason]: what to do``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    device = sub.add_parser("device", help="meter devices: build, flash, provision, label; simulate")
    dsub = device.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    from gateway.cli import device_install

    device_install.register(dsub)
    sim = dsub.add_parser("sim", help="run the firmware on CPython against the virtual rig (software key)")
    sim.add_argument("--profile", default="sdm630", choices=["sdm630", "sdm120", "sunspec"],
                     help="grid meter profile (Eastron over RTU on a pty, or a SunSpec meter over TCP)")
    sim.add_argument("--readings", type=int, default=10, help="signed readings to produce")
    sim.add_argument("--out", required=True, type=Path, help="folder for device.json and <seq>.cose files")
    sim.add_argument("--kwp", type=float, default=5.0, help="rooftop PV size (0: no inverter)")
    sim.add_argument("--interval", type=int, default=60, help="simulated seconds between readings")
    sim.add_argument("--start", type=float, default=1_780_000_000.0, help="simulated unix start time")
    sim.add_argument("--seed", type=int, default=1)
    sim.set_defaults(func=run_sim)


def run_sim(args: argparse.Namespace) -> int:
    from hil.device_sim import build_device
    from hil.modbus_rig import RigHousehold, VirtualRig
    from hil.physics import Household, ManualClock

    if args.readings < 1:
        print("error: --readings must be >= 1", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    clock = ManualClock(args.start)
    household = Household("sim", kwp=args.kwp, seed=args.seed)
    spec = RigHousehold(household, meter=args.profile, pace=False)
    # The device's flash and dev-board key live beside the output, not in it:
    # device.json and the .cose files are what a third party gets.
    state = Path(tempfile.mkdtemp(prefix="metanoia-sim-"))
    with VirtualRig([spec], clock=clock) as rig:
        sim = build_device("sim", rig.endpoints["sim"], state, clock, interval_s=args.interval)
        sim.write_identity(out / "device.json")
        dev = sim.device
        written = []
        for _ in range(args.readings):
            clock.advance(args.interval)
            seq = dev.sample()
            (msg,) = [p for s, p in dev.ring.pending(64, 1 << 20) if s == seq]
            path = out / f"{seq}.cose"
            path.write_bytes(msg)
            written.append(path.name)
        # The simulation has no gateway: its ack is this export.
        dev.ring.ack(seq)
    print(f"device {sim.device_id.hex()} ({args.profile}, software key): {len(written)} readings -> {out}")
    print(json.dumps({"device_id": sim.device_id.hex(), "files": written, "out": str(out)}))
    return 0
