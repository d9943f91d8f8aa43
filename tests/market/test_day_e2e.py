"""Nothing lost, nothing invented: a trading day end to end on the real components.

- **Mosquitto** (the Debian package) carries every reading; the gateway's ingest service
  verifies, stores (fsync) and acknowledges them; the deriver makes interval energy and
  evidence roots.
- **Devices**: the first ``FIRMWARE`` households run the real firmware on CPython against the
  virtual rig (Eastron SDM630 and SDM120 on RS485 pseudo-terminals, a SunSpec meter and
  inverter over Modbus TCP: ``hil.device_sim``); the others are ``bench.signed_readings.
  SigningDevice`` identities that sign readings of the same physics model
  (``hil.physics.Household``) and publish them through Mosquitto on the firmware's topic.
- **Four validators**, each a real process (``metanoia validator run`` under
  ``python -m hil.market_rig validator``, which puts its block clock on the simulated time),
  over loopback TCP.
- **The market** (``hil.market_rig.Market``): the wallet, one aiohttp Peer per PV household,
  the Indexer, maker and taker agents trading by RFQ before every interval, fills through the
  outbox chain client.
- **Settlement** is ``metanoia settle run``, a separate process, killed with SIGKILL twice
  while a batch is planned but not yet recorded final, and once at a random moment; each
  time it is restarted.

The day: ``INTERVALS`` 15-minute intervals (96 = a day from 00:00 KST) for ``HOUSEHOLDS``
households (10), one reading per device per interval, on an accelerated clock that lies in
the past (so that ``settle run``, on the wall clock, finds every rooted interval closed).
Then, from the chain: NOIA paid to makers + refunds == NOIA escrowed, balances == genesis
- escrowed + refunds + received per household, Wh paid for <= Wh metered per household and
interval, one settle transaction per interval with fills and each fill in exactly one
settle entry, and every interval with fills settled. Environment: ``DAY_HOUSEHOLDS``,
``DAY_INTERVALS``, ``DAY_FIRMWARE``, ``DAY_SEED``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from bench.signed_readings import SigningDevice
from gateway.aggregator.ingest import IngestConfig, IngestService, keys_for
from gateway.db import connect, open_gateway_db
from gateway.devices import DeviceRegistry
from gateway.market.wallet import WalletKdf
from gateway.status import gateway_status
from hil.broker import Mosquitto, find_mosquitto
from hil.market_rig import L, DayDriver, House, Market, SharedClock, default_policy, unsettled_intervals
from hil.physics import Household

ROOT = Path(__file__).resolve().parents[2]
GRID = "day-complex"
HOUSEHOLDS = int(os.environ.get("DAY_HOUSEHOLDS", "10"))
INTERVALS = int(os.environ.get("DAY_INTERVALS", "96"))
FIRMWARE = int(os.environ.get("DAY_FIRMWARE", "3"))
METERS = ["sdm630", "sdm120", "sunspec"]
# (kWp, base load W): PV and no-PV households, sizes as in a real block of flats
SIZES = [(6.0, 420.0), (0.0, 380.0), (3.5, 300.0), (9.0, 520.0), (0.0, 250.0), (4.5, 460.0), (0.0, 500.0),
         (5.0, 350.0), (0.0, 330.0), (2.5, 400.0)]

pytestmark = pytest.mark.skipif(not find_mosquitto(), reason="needs Mosquitto (apt install mosquitto)")


class SettleProcess:
    """``metanoia settle run`` as the gateway runs it; kill -9 and restart."""

    def __init__(self, tmp: Path, db: Path, url: str, files: dict[str, Path]) -> None:
        self.args = [sys.executable, "-m", "gateway.cli", "settle", "run", "--db", str(db), "--grid", GRID,
                     "--rpc", url, "--authority-key", str(files["key"]), "--genesis", str(files["genesis"]),
                     "--households", str(files["households"]), "--grace", "120", "--every", "0.2"]
        self.log = open(tmp / "settle.log", "ab")
        self.p: subprocess.Popen[bytes] | None = None
        self.kills: list[str] = []

    def start(self) -> None:
        self.p = subprocess.Popen(self.args, cwd=ROOT, stdout=self.log, stderr=self.log,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def kill9(self, why: str) -> None:
        assert self.p is not None
        self.p.send_signal(signal.SIGKILL)
        assert self.p.wait(10) == -signal.SIGKILL
        self.kills.append(why)

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.kill()
            self.p.wait()


class Killer(threading.Thread):
    """Kills the settle process (-9) the moment a batch is planned and not yet final, ``mid`` times, and once at
    ``random_at`` (wall s from start); restarts it each time."""

    def __init__(self, proc: SettleProcess, db: Path, mid: int, random_at: float) -> None:
        super().__init__(daemon=True)
        self.proc, self.db, self.mid, self.random_at = proc, db, mid, random_at
        self.stop = threading.Event()
        self.seen_planned = 0
        self.done_random = threading.Event()

    def run(self) -> None:
        conn = connect(self.db, readonly=True)
        t0 = time.monotonic()
        while not self.stop.is_set():
            if self.mid > 0:
                try:
                    planned = conn.execute("SELECT COUNT(*) FROM settlement_batches WHERE state = 'planned'"
                                           ).fetchone()[0]
                except Exception:  # the settle schema may not exist yet
                    planned = 0
                if planned:
                    self.proc.kill9("planned, not final")
                    self.seen_planned += 1
                    self.mid -= 1
                    self.proc.start()
            if not self.done_random.is_set() and time.monotonic() - t0 > self.random_at:
                self.proc.kill9("random moment")
                self.proc.start()
                self.done_random.set()
            time.sleep(0.005)
        conn.close()


def test_a_day_of_trading_conserves_money_and_energy_and_settles_every_interval_once_across_kill_9(tmp_path):
    t_begin = time.monotonic()
    rnd = random.Random(os.environ.get("DAY_SEED", "5"))
    # the day: KST midnight two days ago, so that it is in the past of the wall clock
    kst_midnight = (int(time.time()) + 9 * 3600) // 86400 * 86400 - 9 * 3600
    start = kst_midnight - 2 * 86400
    end = start + INTERVALS * L
    clock = SharedClock(start, tmp_path / "clock")
    houses = [House(f"h{i:02d}", *SIZES[i % len(SIZES)], seed=i + 1, policy=default_policy(SIZES[i % len(SIZES)][0]))
              for i in range(HOUSEHOLDS)]
    db = tmp_path / "gateway.db"
    conn = open_gateway_db(db)
    reg = DeviceRegistry(conn)
    broker = Mosquitto()
    broker.start()
    service = None
    driver = None
    settle = None
    killer = None
    from hil.device_sim import build_device, wait_for
    from hil.modbus_rig import RigHousehold, VirtualRig
    fw = min(FIRMWARE, HOUSEHOLDS, 3)
    rig_specs = [RigHousehold(Household(h.household, kwp=h.kwp, base_load_w=h.base_load_w, seed=h.seed),
                              meter=METERS[i], pace=False) for i, h in enumerate(houses[:fw])]
    try:
        with VirtualRig(rig_specs, clock=clock) as rig:
            devices = [build_device(s.household.name, rig.endpoints[s.household.name], tmp_path / s.household.name,
                                    clock, grid=GRID, mqtt=(broker.host, broker.port), interval_s=L)
                       for s in rig_specs]
            for d in devices:
                reg.add(d.identity() | {"profile": d.config["grid_meter"]["profile"]}, claim_code=f"claim-{d.name}-0")
                reg.pair(d.device_id, d.name, f"claim-{d.name}-0")
            signers = []
            for i, h in enumerate(houses[fw:], fw):
                sd = SigningDevice.generate(bytes([0xD0, 0, 0, 0, 0, 0, 0, 0, i]))
                reg.add({"device_id": sd.device_id.hex(), "public_key": sd.public_key.hex(), "grid": GRID,
                         "profile": "sdm630"}, claim_code=f"claim-{h.household}-0")
                reg.pair(sd.device_id, h.household, f"claim-{h.household}-0")
                signers.append((sd, Household(h.household, kwp=h.kwp, base_load_w=h.base_load_w, seed=h.seed)))
            cfg = IngestConfig(str(db), GRID, broker.host, broker.port, workers=1, derive_every_s=0.3)
            service = IngestService(cfg, keys_for(cfg)).start()
            pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="signing-devices")
            pub.connect(broker.host, broker.port)
            pub.loop_start()

            market = Market(tmp_path / "market", GRID, houses, clock.now, gateway_db=db, day_start=start,
                            validators=4, processes=True, clock_file=clock.file.path, settle=False,
                            kdf=WalletKdf.light())
            driver = DayDriver(market, start, end - L - 120)
            driver.start()
            settle = SettleProcess(tmp_path, db, market.chain.urls[-1], market.settle_files(tmp_path / "settle"))
            settle.start()
            killer = Killer(settle, db, mid=2, random_at=rnd.uniform(5, 25))
            killer.start()
            t_day = time.monotonic()
            seqs = dict.fromkeys((sd.device_id for sd, _ in signers), 0)
            produced = 0
            for _step in range(INTERVALS):
                driver.before_advance(clock.now(), L)
                clock.advance(L)
                now = int(clock.now())
                for d in devices:
                    d.device.sample()
                    d.device.service()
                for sd, hh in signers:
                    hh.advance(now)
                    c = hh.snapshot()
                    seqs[sd.device_id] += 1
                    msg = sd.reading(seqs[sd.device_id], now, round(c["import_wh"]), round(c["export_wh"]),
                                     round(c["pv_wh"]), round(c["grid_w"]))
                    pub.publish(f"metanoia/{GRID}/{sd.device_id.hex()}/tele", msg, qos=1)
                produced += len(devices) + len(signers)
                assert wait_for(lambda: all(d.device.acked >= d.device.ring.next_seq - 1 for d in devices),
                                devices, timeout=20)
            t_day = time.monotonic() - t_day
            killer.random_at = 0          # a short day: the random kill happens now at the latest
            assert killer.done_random.wait(30)
            # every reading stored, once
            deadline = time.monotonic() + 30
            while conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] < produced:
                assert time.monotonic() < deadline, "readings missing"
                time.sleep(0.1)
            # every traded interval gets settled by the (restarted) settle process
            for s in sorted(driver.pending):
                driver.done.append(driver.pending.pop(s).result(timeout=120))
            deadline = time.monotonic() + 120
            while unsettled_intervals(conn, GRID):
                assert time.monotonic() < deadline, f"unsettled: {unsettled_intervals(conn, GRID)}"
                time.sleep(0.2)
            killer.stop.set()
            killer.join()
            settle.stop()
            audit = driver.lt.run(market.audit())
            pub.loop_stop()
            pub.disconnect()
            for d in devices:
                d.device.mqtt.disconnect()
    finally:
        if killer is not None:
            killer.stop.set()
        if settle is not None:
            settle.stop()
        if driver is not None:
            driver.close()
        if service is not None:
            service.stop()
        broker.close()

    # ---- what the day shows ----
    n_readings, = conn.execute("SELECT COUNT(*) FROM readings").fetchone()
    assert n_readings == produced == HOUSEHOLDS * INTERVALS
    assert gateway_status(conn, db, GRID)["rejected"] == 0
    trades = [t for it in driver.done for t in it.trades]
    assert trades, "the agents traded"
    assert all(t.state in ("final", "settled") for t in trades)
    # the settle process was killed mid-settling (a batch planned, not final) and at a random moment
    assert settle.kills.count("planned, not final") == 2 and "random moment" in settle.kills
    # money: paid + refunds == escrowed; balances == genesis - escrowed + refunds + received
    assert audit["unsettled_fills"] == 0
    assert audit["money_ok"] and audit["paid"] + audit["refunds"] == audit["escrowed"] > 0
    assert audit["balances_ok"], {h: v for h, v in audit["households"].items() if not v["balance_ok"]}
    # energy: Wh paid for <= Wh metered, per household, side and interval
    assert audit["energy_ok"]
    assert audit["delivered_wh"] <= audit["ordered_wh"]
    # exactly once: one settle tx per interval with fills, each fill in exactly one settle entry
    assert audit["exactly_once"]
    assert audit["settle_txs"] == audit["intervals_with_fills"] and audit["settle_txs_per_interval_max"] == 1
    rows = dict(conn.execute("SELECT start, state FROM settlement_intervals WHERE grid = ?", (GRID,)).fetchall())
    assert all(rows.get(s) == "settled" for s in {t.interval_start for t in trades})
    n_outbox, = conn.execute("SELECT COUNT(*) FROM chain_outbox WHERE key LIKE 'settle:%'").fetchone()
    assert n_outbox == audit["intervals_with_fills"]
    conn.close()
    print(f"\nday e2e: {HOUSEHOLDS} households ({fw} on firmware), {INTERVALS} intervals, {len(trades)} fills, "
          f"{audit['ordered_wh']} Wh ordered, {audit['delivered_wh']} Wh delivered, {audit['settle_txs']} settle txs; "
          f"kills {settle.kills}; day {t_day:.1f} s, total {time.monotonic() - t_begin:.1f} s")

