#!/usr/bin/env bash
# Wait until a provisioned device's signed readings are stored by the gateway.
#
#   hil/bench/check_readings.sh RECORD.json GATEWAY_DB [MINUTES]
#
# Polls `metanoia gateway status --json` (the gateway stores a reading only
# after verifying its signature under the key pinned from RECORD.json) until
# the device's last stored seq has moved twice, or MINUTES (default 5) pass.
# Exit 0 readings arrive, 1 none in time (the device line and the gateway's
# rejection counts are printed to help), 2 bad arguments. CHECK_EVERY (seconds
# between polls, default 5) and CHECK_TIMEOUT_S (instead of MINUTES) for tests.
set -euo pipefail

record=${1:?usage: check_readings.sh RECORD.json GATEWAY_DB [MINUTES]}
db=${2:?usage: check_readings.sh RECORD.json GATEWAY_DB [MINUTES]}
minutes=${3:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
metanoia=${METANOIA:-$root/.venv/bin/metanoia}
[ -x "$metanoia" ] || metanoia=metanoia
[ -f "$record" ] || { echo "check_readings: no record $record" >&2; exit 2; }
[ -f "$db" ] || { echo "check_readings: no gateway database $db" >&2; exit 2; }
read -r id grid < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["device_id"], r["grid"])' "$record")

seq_of() {
    "$metanoia" gateway status --db "$db" --grid "$grid" --json | tail -n 1 | python3 -c '
import json, sys
d = json.load(sys.stdin)["devices"].get(sys.argv[1]) or {}
print((d.get("last_reading") or {}).get("seq", 0))' "$id"
}

first=$(seq_of)
seen=0
last=$first
every=${CHECK_EVERY:-5}
deadline=$(( $(date +%s) + ${CHECK_TIMEOUT_S:-$((minutes * 60))} ))
echo "device $id, grid $grid: last stored seq $first; waiting for new signed readings (up to $minutes min)"
while [ "$(date +%s)" -lt "$deadline" ]; do
    now=$(seq_of)
    if [ "$now" != "$last" ]; then
        seen=$((seen + 1)); last=$now
        echo "stored seq $now"
        if [ "$seen" -ge 2 ]; then
            "$metanoia" gateway status --db "$db" --grid "$grid" | grep -E "^(device|$id)"
            echo "ok: signed readings from $id arrive and verify"
            exit 0
        fi
    fi
    sleep "$every"
done
echo "check_readings: no new readings from $id in $minutes min" >&2
"$metanoia" gateway status --db "$db" --grid "$grid" >&2
exit 1
