#!/usr/bin/env bash
# Put the firmware on an ESP32 running MicroPython, with an installer's config.
#
#   hil/bench/deploy.sh CONFIG.json [PORT]      (PORT defaults to /dev/ttyUSB0)
#
# Copies firmware/ without host/ (CPython shims) and board/ (build inputs),
# installs umqtt.simple if the image lacks it, writes CONFIG.json as
# /config.json and main.py last, then resets the board. main.py is removed and
# the board reset first: without it the board boots to the REPL, so the
# watchdog (armed by the device loop, unstoppable on the ESP32) is off while
# files are copied. MPREMOTE overrides the mpremote command. docs/esp32-bench.md.
set -euo pipefail

config=${1:?usage: deploy.sh CONFIG.json [PORT]}
port=${2:-/dev/ttyUSB0}
mp=${MPREMOTE:-mpremote}
root=$(cd "$(dirname "$0")/../.." && pwd)

python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); assert isinstance(c, dict), "not an object"' "$config"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
tar -C "$root/firmware" --exclude=./host --exclude=./board --exclude=__pycache__ -cf - . | tar -C "$stage" -xf -
cp "$config" "$stage/config.json"
cd "$stage"

$mp connect "$port" exec "import os
try:
    os.remove('main.py')
except OSError:
    pass"
$mp connect "$port" reset
sleep 3
$mp connect "$port" exec "import umqtt.simple" 2>/dev/null || $mp connect "$port" mip install umqtt.simple
$mp connect "$port" cp -r device meter_driver secure_sign storage telemetry : \
    + cp config.json :config.json + cp main.py :main.py + reset
echo "deployed $(basename "$config") to $port; watch it with: $mp connect $port repl"
