"""``metanoia bench firmware``: bytes per signed reading and heap bytes per cycle on MicroPython.

The measuring happens on MicroPython 1.27 (WebAssembly under Node) in
``bench/firmware_cycle_mp.py``: the production ``Device.sample()`` (grid meter
SDM630 over Modbus RTU, PV inverter SunSpec over Modbus RTU, ATECC608 driver
over the emulated I2C bus, flash ring buffer on the NOR model), gc disabled,
``gc.mem_alloc()`` deltas minus what the hardware models allocate. This side
builds the SunSpec register image (from pysunspec2's model definitions, via
``hil.sunspec_sim``), runs the script, verifies every signed reading it produced
with the gateway's decoder (so the sizes are of real, valid messages), and
returns the result dict (the CLI prints it as the last line).

Budgets (docs/DESIGN.md): <= 140 bytes per signed reading, <= 8 KB allocated
per read-sign-buffer cycle with the ATECC608 signing. ``bound`` is the smallest
a signed reading of this format can be (fixed COSE/ES256 overhead + payload at
its minimum encoding), encoded by the firmware in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

NAME = "firmware"
BYTES_GOAL = 140
ALLOC_GOAL = 8192
RUNTIME = "MicroPython 1.27 (WebAssembly, Node)"
SCRIPT = Path(__file__).with_name("firmware_cycle_mp.py")
MP_PATH = "/bench/firmware_cycle_mp.py"
PV_WH = 5432100  # the inverter's lifetime counter at the start (Wh)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cycles", type=int, default=30,
                   help="measured read-sign-buffer cycles (default 30: one flash sector opens among them)")
    p.add_argument("--warmup", type=int, default=3, help="cycles before measuring (first use, sector open)")
    p.add_argument("--breakdown-cycles", type=int, default=5, help="cycles measured part by part")
    p.add_argument("--publish-cycles", type=int, default=5, help="publishes measured (recording MQTT client)")
    p.add_argument("--sw-sigs", type=int, default=10, help="software signatures per timing batch")
    p.add_argument("--no-pv", action="store_true", help="grid meter only (no SunSpec inverter)")
    p.add_argument("--heap-mb", type=int, default=8,
                   help="MicroPython heap at start in MB (this port grows it; a smaller one makes "
                        "gc.mem_alloc() cheaper)")


def sunspec_image() -> dict[str, Any]:
    """Holding registers of a SunSpec inverter (models 1 + 103) for the second RTU slave."""
    from hil.sunspec_sim import SunSpecImage, model_layout

    img = SunSpecImage([1, 103])
    img.set(1, "Mn", "Metanoia Bench")
    img.set(1, "Md", "PV-Inverter")
    img.set(1, "SN", "BENCH0001")
    img.set(1, "DA", 1)
    for name, value in (("A_SF", -2), ("V_SF", -1), ("W_SF", 0), ("Hz_SF", -2), ("WH_SF", 0),
                        ("DCW_SF", 0), ("A", 1248), ("PhVphA", 2301), ("W", 2870), ("Hz", 6001),
                        ("WH", PV_WH), ("DCW", 2958), ("St", 4)):
        img.set(103, name, value & 0xFFFF if name.endswith("_SF") else value)
    wh_reg = img.base + img.where[103] + model_layout(103)[1]["WH"][0]
    return {"base": img.base, "regs": img.regs, "pv_wh_reg": wh_reg, "pv_wh": PV_WH}


def mp_code(params: dict[str, Any], call: str = "main(P)") -> str:
    """MicroPython code that imports the bench script and runs ``call`` (P = params)."""
    return ("import sys\nsys.path.insert(0, '/bench')\nfrom firmware_cycle_mp import *\n"
            f"P = {json.dumps(params)}\n{call}\n")


def run_mp(code: str, heap_mb: int = 8, timeout: float = 300.0):
    from hil import micropython_node

    return micropython_node.run(code, heap=heap_mb * 1024 * 1024, files={MP_PATH: SCRIPT.read_text()},
                                timeout=timeout)


def _progress(msg: str) -> None:
    print(msg, flush=True)


def _verify(messages: list[bytes], public_key: bytes, device_id: bytes) -> list[Any]:
    from gateway.telemetry import decode_message, verify

    readings = []
    for m in messages:
        (s1,) = decode_message(m)
        readings.append(verify(s1, public_key, device_id=device_id))
    return readings


def _verify_raw(public_key: bytes, digest: bytes, signature: bytes) -> None:
    """Raise InvalidSignature unless r||s signs the digest under the 64-byte X||Y key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    key = ec.EllipticCurvePublicNumbers(int.from_bytes(public_key[:32], "big"), int.from_bytes(public_key[32:], "big"),
                                        ec.SECP256R1()).public_key()
    der = utils.encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    key.verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def run(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"cycles": args.cycles, "warmup": args.warmup,
                              "breakdown_cycles": args.breakdown_cycles,
                              "publish_cycles": args.publish_cycles, "sw_sigs": args.sw_sigs,
                              "t0": int(time.time())}
    if not args.no_pv:
        params["sunspec"] = sunspec_image()
    _progress(f"bench firmware: {RUNTIME}, heap {args.heap_mb} MB at start, "
              f"{args.warmup} warm-up + {args.cycles} measured cycles of Device.sample()")
    _progress("  grid: SDM630 over Modbus RTU (fake slave UART); PV: "
              + ("absent" if args.no_pv else "SunSpec inverter (models 1+103) over Modbus RTU (second fake slave UART)")
              + "; signer: ATECC608 driver over the emulated I2C bus; ring: NOR flash model")
    t = time.monotonic()
    res = run_mp(mp_code(params), args.heap_mb).last_json()
    assert isinstance(res, dict)
    wall = time.monotonic() - t
    _progress(f"  MicroPython run done in {wall:.1f} s")

    pub = bytes.fromhex(res["public_key"])
    dev_id = bytes.fromhex(res["device_id"])
    msgs = [bytes.fromhex(h) for h in res["messages"]]
    worst = bytes.fromhex(res["worst_case_message"])
    least = bytes.fromhex(res["least_message"])
    readings = _verify(msgs + [worst, least], pub, dev_id)
    seqs = [r.seq for r in readings[:len(msgs)]]
    if len(msgs) != args.cycles or seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        raise RuntimeError(f"expected {args.cycles} consecutive readings from the measured cycles, got seqs {seqs}")
    _progress(f"  {len(msgs) + 2} signed readings verified with the gateway decoder (ES256, kid {dev_id.hex()})")
    sw = res["software"]
    _verify_raw(*(bytes.fromhex(h) for h in sw["check"]))
    _progress("  a software signer signature verified with cryptography")

    from gateway.telemetry import decode_message

    value = max(len(m) for m in msgs)
    bound = len(least)
    least_payload = len(decode_message(least)[0].payload)
    parts = res["breakdown"]
    out: dict[str, Any] = {
        "bench": NAME,
        "value": value,
        "unit": "bytes",
        "goal": BYTES_GOAL,
        "bound": bound,
        "ratio": round(value / bound, 3),
        "bound_note": ("smallest signed reading of this format, encoded by the firmware in this run "
                       f"(all fields zero): {bound - least_payload} B fixed COSE_Sign1/ES256 overhead (tag, "
                       "protected {1: -7}, kid of 9 B, 64-byte r||s, bstr heads) + the payload at its "
                       f"minimum encoding ({least_payload} B)"),
        "bytes_per_reading": value,
        "bytes_per_reading_min": min(len(m) for m in msgs),
        "bytes_worst_case": len(worst),
        "alloc_per_cycle": res["alloc_per_cycle"],
        "alloc_per_cycle_max": res["alloc_per_cycle_max"],
        "alloc_per_cycle_min": res["alloc_per_cycle_min"],
        "alloc_goal": ALLOC_GOAL,
        "alloc_breakdown": parts,
        "alloc_per_publish": res["alloc_per_publish"],
        "alloc_per_publish_max": res["alloc_per_publish_max"],
        "alloc_per_ack": res["alloc_per_ack"],
        "software_sign_ms": sw["ms"],
        "software_sign_ms_max": sw["ms_max"],
        "software_sign_alloc": sw["alloc"],
        "software_sign_alloc_max": sw["alloc_max"],
        "software_sign_table_ms": sw["table_ms"],
        "software_sign_note": (f"median of {sw['rounds']} batches of {sw['n']} signatures after the comb table "
                               "is built (ticks_us moves in whole ms under Node); gc disabled, so no "
                               "collection time is included"),
        "valid": bool(res["valid"]),
        "within_budget": value <= BYTES_GOAL and res["alloc_per_cycle_max"] <= ALLOC_GOAL,
        "runtime": RUNTIME,
        "cycle": ("Device.sample(): SDM630 read over Modbus RTU"
                  + ("" if args.no_pv else " + SunSpec 103 read over Modbus RTU")
                  + ", COSE_Sign1 encode, ATECC608 Nonce+Sign via the driver, ring buffer append"),
        "pv": "absent" if args.no_pv else "SunSpec inverter (models 1+103) over Modbus RTU",
        "cycles": res["cycles"],
        "warmup": res["warmup"],
        "sector_opens_measured": res["sector_opens_measured"],
        "readings_verified": len(readings),
        "excluded": ("allocations inside the fake slave UARTs, the NOR flash model, the recording MQTT "
                     "client and the ATECC608 emulator (%d and %d bytes over the run)"
                     % (res["model_alloc_bytes"], res["emulator_alloc_bytes"])),
        "gc_during_handler": res["gc_during_handler"],
        "heap_mb": args.heap_mb,
        "mp_seconds": res["seconds"],
    }
    _progress(f"  bytes per signed reading: {value} (min {out['bytes_per_reading_min']}, worst case "
              f"{out['bytes_worst_case']}, bound {bound}; goal <= {BYTES_GOAL})")
    _progress(f"  allocated per cycle: median {out['alloc_per_cycle']} B, max {out['alloc_per_cycle_max']} B "
              f"(goal <= {ALLOC_GOAL}); " + ", ".join(f"{k} {v}" for k, v in parts.items() if k != "total"))
    _progress(f"  per publish {out['alloc_per_publish']} B (max {out['alloc_per_publish_max']}), "
              f"per ack {out['alloc_per_ack']} B")
    _progress(f"  software P-256 signer: {sw['ms']} ms and {sw['alloc']} B per signature, "
              f"comb table built in {sw['table_ms']} ms")
    if not out["valid"]:
        _progress("  WARNING: a garbage collection may have run during measurement: figures unreliable")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.firmware", description=__doc__.splitlines()[0])
    add_arguments(p)
    out = run(p.parse_args(argv))
    print(json.dumps(out))
    return 0 if out["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
