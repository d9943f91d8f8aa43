#!/usr/bin/env bash
# Read a Modbus RTU meter from a PC through a USB-RS485 adapter, with the
# firmware's own driver (`metanoia meter read`).
#
#   hil/bench/read_meter.sh [PROFILE] [PORT] [UNIT] [more meter-read options]
#   hil/bench/read_meter.sh sdm120 /dev/ttyUSB0 1 --baud 2400 --json
#
# Defaults: sdm630, /dev/ttyUSB0, unit 1. Exit status is metanoia's: 0 read,
# 2 bad arguments, 3 timeout, 4 exception response, 5 CRC/frame error,
# 6 connection error. docs/esp32-bench.md explains the output.
set -euo pipefail

profile=${1:-sdm630}
port=${2:-/dev/ttyUSB0}
unit=${3:-1}
shift $(($# < 3 ? $# : 3))
root=$(cd "$(dirname "$0")/../.." && pwd)
metanoia=${METANOIA:-$root/.venv/bin/metanoia}
[ -x "$metanoia" ] || metanoia=metanoia

if [ ! -e "$port" ]; then
    echo "read_meter: no $port (adapter plugged in? see: ls /dev/ttyUSB* /dev/serial/by-id/)" >&2
    exit 2
fi
if [ ! -r "$port" ] || [ ! -w "$port" ]; then
    echo "read_meter: no access to $port (add yourself to the dialout group, log in again)" >&2
    exit 2
fi
exec "$metanoia" meter read --profile "$profile" --serial "$port" --unit "$unit" "$@"
