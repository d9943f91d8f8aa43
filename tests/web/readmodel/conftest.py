"""One short market day on the real components, for the read-model tests: one per module that changes it
(``day``), one shared by the modules that only read it (``shared_day``, package scope).

Three households (two with PV, one without) with signing devices (the firmware's
reading format, P-256 signatures) publish through a real Mosquitto to the real
ingest service (verify, store, intervals, evidence roots); the market of
``hil/market_rig.py`` trades on one in-process validator and settles every
interval in the gateway database. Then device states (the JSON contract, the
old plain format, none), a garbage reading, REC issuance and an aggregated
resource's bid. The chain stays up while the tests run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from bench.signed_readings import SigningDevice
from gateway.aggregator.ingest import IngestConfig, IngestService, keys_for
from gateway.db import open_gateway_db
from gateway.devices import DeviceRegistry
from gateway.market.aggregation import Aggregator, BidConfig
from gateway.market.bill import KST
from gateway.market.recs import RecRegistry
from gateway.market.wallet import WalletKdf
from gateway.web.readmodel import Complex, Sources
from hil.broker import Mosquitto
from hil.market_rig import DayDriver, House, Market, SharedClock, default_policy
from hil.physics import Household
from tests.web.browser_kit import publish_meter_step

GRID = "rm"
L = 900
STEP = 300
INTERVALS = 8
HOUSES = [("sun-1", 6.0, 350.0), ("dark-2", 0.0, 600.0), ("sun-3", 4.0, 300.0)]


@dataclass
class Day:
    folder: Path
    db: Path
    start: int
    end: int
    now: int
    market: Market
    driver: DayDriver
    cx: Complex
    devices: dict[str, SigningDevice]
    audit: dict[str, Any]
    trading_day: str


def _wait(cond: Any, timeout: float = 90.0) -> None:  # an upper bound for a loaded machine, not a budget
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Day]:
    """A day of the module's own, for a module that changes it (orders, policies, a revoked meter)."""
    yield from _market_day(tmp_path_factory)


@pytest.fixture(scope="package")
def shared_day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Day]:
    """One day for the modules that only read it (they ask for ``day`` and get this one)."""
    yield from _market_day(tmp_path_factory)


def _market_day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Day]:
    folder = tmp_path_factory.mktemp("complex")
    kst_midnight = (int(time.time()) + 9 * 3600) // 86400 * 86400 - 9 * 3600
    start = kst_midnight - 2 * 86400 + 11 * 3600          # 11:00 KST two days ago: PV, and in the wall clock's past
    end = start + INTERVALS * L
    clock = SharedClock(start, folder / "clock")
    db = folder / "gateway.db"
    conn = open_gateway_db(db)
    reg = DeviceRegistry(conn)
    devices: dict[str, SigningDevice] = {}
    for i, (h, _kwp, _load) in enumerate(HOUSES):
        sd = SigningDevice.generate(bytes([0xE0, 0, 0, 0, 0, 0, 0, 0, i]))
        reg.add({"device_id": sd.device_id.hex(), "public_key": sd.public_key.hex(), "grid": GRID,
                 "profile": "sdm630", "name": f"meter {h}"}, claim_code=f"claim-{h}")
        reg.pair(sd.device_id, h, f"claim-{h}")
        devices[h] = sd
    houses = [House(h, kwp, load, i + 1, default_policy(kwp)) for i, (h, kwp, load) in enumerate(HOUSES)]
    physics = {h.household: Household(h.household, kwp=h.kwp, base_load_w=h.base_load_w, seed=h.seed) for h in houses}
    broker = Mosquitto()
    broker.start()
    cfg = IngestConfig(str(db), GRID, broker.host, broker.port, workers=0, derive_every_s=0.2)
    service = IngestService(cfg, keys_for(cfg)).start()
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="rm-devices")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    market = Market(folder / "market", GRID, houses, clock.now, gateway_db=db, day_start=start,
                    kdf=WalletKdf.light(), history_days=14)
    driver = DayDriver(market, start, end - L)
    try:
        driver.start()
        seq = 0
        for _ in range(INTERVALS * L // STEP + 1):
            driver.before_advance(clock.now(), STEP)
            clock.advance(STEP)
            now = int(clock.now())
            seq += 1
            publish_meter_step(pub, GRID, devices, physics, seq, now)
            _wait(lambda: conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == seq * len(devices))
        # the last interval closes once a reading past its end + grace exists: one more step beyond
        clock.advance(STEP)
        audit = driver.finish(settle_timeout=120)
        # device states: the JSON contract, the old plain format, and a device that never said anything
        sun1, dark2 = devices["sun-1"].device_id.hex(), devices["dark-2"].device_id.hex()
        pub.publish(f"metanoia/{GRID}/{sun1}/state", b'{"state":"online","fw":"1.2.3"}', qos=1,
                    retain=True).wait_for_publish(10)
        pub.publish(f"metanoia/{GRID}/{dark2}/state", b"offline", qos=1, retain=True).wait_for_publish(10)
        pub.publish(f"metanoia/{GRID}/{dark2}/tele", b"\xd2\x84garbage", qos=1).wait_for_publish(10)
        pub.publish(f"metanoia/{GRID}/{dark2}/state", b'{"state":"online"}', qos=1).wait_for_publish(10)
        _wait(lambda: conn.execute("SELECT COUNT(*) FROM device_state").fetchone()[0] == 2
              and conn.execute("SELECT COUNT(*) FROM ingest_counters WHERE name = 'bad_state'").fetchone()[0] == 1)
        # RECs: count the day's PV (far below 1 MWh: no certificate, but counted Wh)
        RecRegistry(conn).issue(GRID)
        # an aggregated resource of the PV households and its bid for the day, settled where rooted
        trading_day = datetime.fromtimestamp(start, KST).date().isoformat()
        agg = Aggregator(conn, forecaster=market.forecaster, clock=clock.now)
        agg.create("vpp-1", GRID, name="Rooftop PV")
        agg.add("vpp-1", ["sun-1", "sun-3"])
        agg.submit_bid(agg.make_bid("vpp-1", trading_day, BidConfig(resolution_s=3600)))
        agg.settle("vpp-1", trading_day)
        files = market.settle_files(folder / "settle")
        sources = Sources.demo_layout(folder, GRID, validators=(market.chain.url,), rpc_timeout_s=2.0)
        assert sources.genesis == files["genesis"]
        cx = Complex(sources, market.wallet, market.domain)
        yield Day(folder, db, start, end, int(clock.now()), market, driver, cx, devices, audit, trading_day)
    finally:
        pub.loop_stop()
        pub.disconnect()
        driver.close()
        service.stop()
        broker.close()
        conn.close()
