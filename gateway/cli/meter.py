"""`metanoia meter`: read a meter through the firmware's own driver, run the virtual rig.

``metanoia meter read --profile NAME (--serial PORT [--baud N] | --tcp HOST:PORT)
[--unit N] [--json]`` prints every value of the profile with its unit (with
``--json``: one JSON object on the last line). Exit status: 0 read, 3 timeout
(silent meter), 4 exception response, 5 CRC or frame error, 6 connection or
SunSpec discovery error, 2 bad arguments or profile.

``metanoia meter rig [--meter sdm630|sdm120|sunspec] [--kwp N] [--speed X] [--json]``
starts a one-household virtual rig and prints where to point ``meter read``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from hil import firmware_host

log = logging.getLogger(__name__)

EXIT_TIMEOUT, EXIT_EXCEPTION, EXIT_LINE, EXIT_OTHER, EXIT_USAGE = 3, 4, 5, 6, 2
_UART_ID = 1  # the host shim maps this UART id to --serial


def register(sub: argparse._SubParsersAction) -> None:
    meter = sub.add_parser("meter", help="read meters through the firmware driver; virtual rig")
    msub = meter.add_subparsers(dest="meter_command", metavar="SUBCOMMAND")
    meter.set_defaults(func=lambda _a: (meter.print_help(), EXIT_USAGE)[1])

    read = msub.add_parser("read", help="read every value of a profile and print it with units")
    read.add_argument("--profile", required=True, help="sdm630, sdm120, sunspec or a profile .json path")
    where = read.add_mutually_exclusive_group(required=True)
    where.add_argument("--serial", metavar="PORT", help="RS485 serial port, e.g. /dev/ttyUSB0")
    where.add_argument("--tcp", metavar="HOST:PORT", help="Modbus TCP device")
    read.add_argument("--baud", type=int, help="baud rate (default: the profile's)")
    read.add_argument("--parity", choices=("N", "E", "O"), help="parity (default: the profile's)")
    read.add_argument("--unit", type=int, help="slave id (default: the profile's)")
    read.add_argument("--timeout-ms", type=int, help="response timeout (default: the profile's)")
    read.add_argument("--json", action="store_true", help="one JSON object on the last line")
    read.set_defaults(func=cmd_read)

    rig = msub.add_parser("rig", help="run a one-household virtual rig until interrupted")
    rig.add_argument("--meter", default="sdm630", choices=("sdm630", "sdm120", "sunspec"))
    rig.add_argument("--kwp", type=float, default=5.0, help="PV size (0: no inverter)")
    rig.add_argument("--speed", type=float, default=60.0, help="simulated seconds per second")
    rig.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until Ctrl-C)")
    rig.add_argument("--json", action="store_true")
    rig.set_defaults(func=cmd_rig)


def _parse_tcp(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--tcp wants HOST:PORT, got {value!r}")
    return host, int(port)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def cmd_read(args: argparse.Namespace) -> int:
    firmware_host.install()
    import machine  # the host shim: UART over pyserial
    from meter_driver import errors
    from meter_driver.meter import Meter, open_rtu, open_tcp
    from meter_driver.profile import load_profile

    try:
        profile = load_profile(args.profile)
        if args.serial:
            machine.attach_uart(_UART_ID, args.serial)
            bus: Any = open_rtu(_UART_ID, profile, baudrate=args.baud, parity=args.parity,
                                timeout_ms=args.timeout_ms)
            where = f"{args.serial} @ {bus.baudrate} baud"
        else:
            host, port = _parse_tcp(args.tcp)
            bus = open_tcp(host, profile, port=port, timeout_ms=args.timeout_ms)
            where = f"tcp {host}:{port}"
    except (errors.ProfileError, ValueError) as e:
        print(f"metanoia meter read: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"metanoia meter read: cannot open {args.serial}: {e}", file=sys.stderr)
        return EXIT_OTHER
    meter = Meter(bus, profile, unit=args.unit)
    try:
        reading = meter.read()
        info = meter.info()
    except errors.ModbusTimeout as e:
        return _fail(f"timeout: {e} (is the meter powered, wired A/B right, at {where}, unit {meter.unit}?)",
                     EXIT_TIMEOUT, meter)
    except errors.ModbusExceptionResponse as e:
        return _fail(f"exception response {e.code} {e.name} from unit {meter.unit}", EXIT_EXCEPTION, meter)
    except (errors.ModbusCRCError, errors.ModbusFrameError) as e:
        return _fail(f"{'CRC error' if isinstance(e, errors.ModbusCRCError) else 'bad frame'}: {e} "
                     f"(check baud rate and parity: {where})", EXIT_LINE, meter)
    except errors.ModbusError as e:
        return _fail(f"{type(e).__name__}: {e}", EXIT_OTHER, meter)
    finally:
        close = getattr(bus, "close", None)
        if close:
            close()
        uart = getattr(bus, "uart", None)
        if uart is not None:
            uart.deinit()
    print(f"{profile['name']} unit {meter.unit} via {where}")
    for k, v in info.items():
        print(f"  {k:<20} {_fmt(v)}")
    width = max(len(k) for k in reading)
    for key, value in reading.items():
        unit = meter.units.get(key, "")
        print(f"  {key:<{width}}  {_fmt(value):>14} {unit}".rstrip())
    if args.json:
        print(json.dumps({"profile": profile["name"], "unit": meter.unit, "source": where, "info": info,
                          "values": reading, "units": {k: meter.units.get(k, "") for k in reading},
                          "counters": meter.counters()}))
    return 0


def _fail(message: str, code: int, meter: Any) -> int:
    print(f"metanoia meter read: {message}", file=sys.stderr)
    log.debug("counters: %s", meter.counters())
    return code


def cmd_rig(args: argparse.Namespace) -> int:
    from hil.modbus_rig import RigHousehold, VirtualRig
    from hil.physics import Household, SimClock

    spec = RigHousehold(Household("h1", kwp=args.kwp, seed=1), meter=args.meter)
    with VirtualRig([spec], clock=SimClock(speed=args.speed)) as rig:
        ep = rig.endpoints["h1"]
        meter_arg = (f"--serial {ep.meter_port}" if ep.meter_port
                     else f"--tcp {ep.meter_tcp[0]}:{ep.meter_tcp[1]}" if ep.meter_tcp else "")
        print(f"grid meter: metanoia meter read --profile {ep.meter_profile} {meter_arg} --unit {ep.meter_unit}")
        if ep.inverter_tcp:
            print(f"inverter:   metanoia meter read --profile sunspec --tcp {ep.inverter_tcp[0]}:{ep.inverter_tcp[1]}")
        if args.json:
            print(json.dumps({"meter_profile": ep.meter_profile, "meter_port": ep.meter_port,
                              "meter_tcp": ep.meter_tcp, "meter_unit": ep.meter_unit,
                              "inverter_tcp": ep.inverter_tcp}))
        sys.stdout.flush()
        try:
            deadline = time.monotonic() + args.seconds if args.seconds > 0 else None
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    return 0
