#!/usr/bin/env bash
# Provision the board on PORT (key in its ATECC608, grid and Wi-Fi in its config)
# and print its QR label.
#
#   hil/bench/provision.sh PORT GATEWAY_URL GRID FLAT [WIFI_SSID]
#
# The Wi-Fi password comes from $METANOIA_WIFI_PASSWORD or a prompt, never
# from the command line. Writes records/<device id>.json (give it to the
# utility: `metanoia gateway devices add`) and labels/<device id>.pdf.
# A thin wrapper over `metanoia device provision` and `metanoia device label`.
set -euo pipefail

port=${1:?usage: provision.sh PORT GATEWAY_URL GRID FLAT [WIFI_SSID]}
gateway=${2:?usage: provision.sh PORT GATEWAY_URL GRID FLAT [WIFI_SSID]}
grid=${3:?usage: provision.sh PORT GATEWAY_URL GRID FLAT [WIFI_SSID]}
flat=${4:?usage: provision.sh PORT GATEWAY_URL GRID FLAT [WIFI_SSID]}
ssid=${5:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
metanoia=${METANOIA:-$root/.venv/bin/metanoia}
[ -x "$metanoia" ] || metanoia=metanoia

args=(device provision --port "$port" --gateway "$gateway" --grid "$grid" --name "$flat" --out records --json)
[ -n "$ssid" ] && args+=(--wifi-ssid "$ssid")
# PORT=emulator rehearses on the bundle in $BUNDLE with an emulated chip.
[ -n "${BUNDLE:-}" ] && args+=(--bundle "$BUNDLE")
summary=$("$metanoia" "${args[@]}" | tee /dev/stderr | tail -n 1)
record=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["record"])' "$summary")
id=$(basename "$record" .json)
mkdir -p labels
"$metanoia" device label --record "$record" --gateway "$gateway" --out "labels/$id.pdf"
