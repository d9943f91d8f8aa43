#!/usr/bin/env bash
# Update the firmware of a provisioned device, keeping its /config.json.
#
#   hil/bench/deploy.sh SITE.toml [PORT]      (PORT defaults to /dev/ttyUSB0)
#
# `metanoia device build` then `metanoia device flash --bundle --keep-config`:
# the compiled bundle replaces the firmware packages, every file is read back
# and checked against the manifest, then the board resets. DRY_RUN=1 prints
# the commands. For a new board use flash.sh (MicroPython + bundle + config).
set -euo pipefail

site=${1:?usage: deploy.sh SITE.toml [PORT]}
port=${2:-/dev/ttyUSB0}
root=$(cd "$(dirname "$0")/../.." && pwd)
metanoia=${METANOIA:-$root/.venv/bin/metanoia}
[ -x "$metanoia" ] || metanoia=metanoia
bundle=${BUNDLE:-bundle-$(basename "$site" .toml)}

"$metanoia" device build --config "$site" --out "$bundle"
args=(device flash --port "$port" --bundle "$bundle" --keep-config)
[ -n "${DRY_RUN:-}" ] && args+=(--dry-run)
exec "$metanoia" "${args[@]}"
