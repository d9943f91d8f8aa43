#!/usr/bin/env bash
# Build the firmware bundle for a site and put it, with MicroPython, on an ESP32.
#
#   hil/bench/flash.sh SITE.toml PORT [FIRMWARE.bin]
#
# Without FIRMWARE.bin only the bundle is copied (MicroPython already on the
# board). A thin wrapper: `metanoia device build` then `metanoia device flash`
# (tested in tests/installer); DRY_RUN=1 prints the commands instead.
# Exit status is metanoia's: 0 done, 1 the board refused (download mode, wrong
# chip, verify mismatch), 2 bad input (no such port, bad site config).
set -euo pipefail

site=${1:?usage: flash.sh SITE.toml PORT [FIRMWARE.bin]}
port=${2:?usage: flash.sh SITE.toml PORT [FIRMWARE.bin]}
firmware=${3:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
metanoia=${METANOIA:-$root/.venv/bin/metanoia}
[ -x "$metanoia" ] || metanoia=metanoia
bundle=${BUNDLE:-bundle-$(basename "$site" .toml)}

"$metanoia" device build --config "$site" --out "$bundle"
args=(device flash --port "$port" --bundle "$bundle")
[ -n "$firmware" ] && args+=(--firmware "$firmware")
[ -n "${DRY_RUN:-}" ] && args+=(--dry-run)
exec "$metanoia" "${args[@]}"
