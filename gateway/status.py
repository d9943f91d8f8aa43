"""The operator's view of one complex's gateway, read from its database.

Everything comes from tables the ingest and the deriver commit, so ``status``
works from another process (or a copy of the database) while the gateway
runs, and shows exactly what was durably stored.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.aggregator.checks import NOTES, REJECTION_REASONS
from gateway.aggregator.device_state import read_states
from gateway.aggregator.intervals import INTERVAL_S, IntervalEngine, registry_columns


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _db_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


def gateway_status(conn: sqlite3.Connection, db_path: str | Path, grid: str | None = None,
                   now: float | None = None, stale_s: int = 600) -> dict[str, Any]:
    """Devices (online, last reading, ack, gap), rejection counters by reason, the
    latest complex balance, database size. ``stale_s``: no reading for this long
    (gateway clock) marks a device ``stale`` even when its broker state is online."""
    now = time.time() if now is None else now
    tables = _tables(conn)
    registry = "devices" in tables and "grid" in registry_columns(conn)
    devices: dict[str, dict[str, Any]] = {}
    if registry:
        q = "SELECT device_id, name, grid, household, status, profile FROM devices"
        rows = conn.execute(q + (" WHERE grid = ?" if grid else ""), (grid,) if grid else ()).fetchall()
        for d, name, g, hh, st, prof in rows:
            devices[bytes(d).hex()] = {"name": name, "grid": g, "household": hh, "registry": st,
                                       "profile": prof}
    if "ingest_devices" in tables:
        for d, acked, highest, last_time, last_rx, state, state_at in conn.execute(
                "SELECT device_id, acked, highest, last_time, last_received_at, state, state_at FROM ingest_devices"):
            key = bytes(d).hex()
            if registry and key not in devices:
                continue  # another grid's device
            lag = None if last_rx is None else round(now - last_rx / 1000, 1)
            devices.setdefault(key, {}).update({
                "state": state or "unknown", "acked": acked, "highest": highest,
                "gap": highest - acked,  # readings stored beyond a hole, not yet acknowledged
                "last_time": last_time, "last_received_s_ago": lag,
                "stale": lag is None or lag > stale_s,
            })
    for d, st in read_states(conn).items():
        if d.hex() in devices:
            devices[d.hex()].update({"fw": st.fw, "state_since_ms": st.since_ms})
    for info in devices.values():
        info.setdefault("fw", None)
        info.setdefault("state", "never_seen")
        info.setdefault("stale", True)
        info["online"] = info["state"] == "online" and not info["stale"]
        if info.get("registry") == "revoked":
            info["online"] = False
    for key, info in devices.items():
        row = conn.execute("SELECT seq, time, import_wh, export_wh, pv_wh, power_w, flags FROM readings "
                           "WHERE device_id = ? ORDER BY seq DESC LIMIT 1", (bytes.fromhex(key),)).fetchone()
        info["last_reading"] = None if row is None else dict(zip(
            ("seq", "time", "import_wh", "export_wh", "pv_wh", "power_w", "flags"), row))
    rejections: dict[str, int] = {}
    notes: dict[str, int] = {}
    quarantined = 0
    if "ingest_counters" in tables:
        for name, count in conn.execute("SELECT name, SUM(count) FROM ingest_counters GROUP BY name"):
            (notes if name in NOTES else rejections)[name] = int(count)
    if "ingest_quarantine" in tables:
        quarantined = int(conn.execute("SELECT COUNT(*) FROM ingest_quarantine").fetchone()[0])
    readings = int(conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]) if "readings" in tables else 0
    balance = None
    if grid and registry and "interval_energy" in tables:
        rows = IntervalEngine(conn).balance(grid)
        closed = set()
        if "evidence_roots" in tables:  # a rooted interval is closed: its figures are final
            closed = {r[0] for r in conn.execute("SELECT DISTINCT start FROM evidence_roots WHERE grid = ?", (grid,))}
        done = [r for r in rows if r.start in closed]
        if done or rows:
            balance = (done or rows)[-1].to_json() | {"closed": bool(done)}
    roots = 0
    if "evidence_roots" in tables:
        roots = int(conn.execute("SELECT COUNT(*) FROM evidence_roots" + (" WHERE grid = ?" if grid else ""),
                                 (grid,) if grid else ()).fetchone()[0])
    return {
        "grid": grid,
        "devices_total": len(devices),
        "devices_online": sum(1 for i in devices.values() if i["online"]),
        "devices": devices,
        "readings_stored": readings,
        "quarantined": quarantined,
        "rejected": sum(rejections.values()),
        "rejections": {k: rejections[k] for k in sorted(rejections)},
        "notes": {k: notes[k] for k in sorted(notes)},
        "backlog_unacked": sum(i.get("gap", 0) for i in devices.values()),
        "latest_interval": balance,   # the latest closed (rooted) interval, else the open one
        "interval_s": INTERVAL_S,
        "evidence_roots": roots,
        "db_bytes": _db_bytes(Path(db_path)),
        "known_reasons": len(REJECTION_REASONS),
    }
