"""The whole homeowner story on a simulated trading day, in headless Chromium:
scan the label, sign up, enrol TOTP, pair, place a manual sell order; the
neighbour's taker agent fills it on the bundled chain, the meter delivers, the
settler settles it; the page shows the order filled and its settlement final.

Real components: Mosquitto, the ingest service, signing meters, the market of
``hil/market_rig.py`` (one validator, agents, settlement) on its accelerated
clock, which the web app reads too (so "the next intervals" are the day's)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pyotp
import uvicorn
from playwright.sync_api import expect, sync_playwright

from bench.signed_readings import SigningDevice
from gateway import db as gdb
from gateway.aggregator.ingest import IngestConfig, IngestService, keys_for
from gateway.devices import DeviceRegistry
from gateway.market.orders import ManualOrders
from gateway.market.trades import TradeLog
from gateway.market.wallet import WalletKdf
from gateway.web.app import Web
from gateway.web.config import WebConfig
from gateway.web.readmodel import Complex, Sources
from hil.broker import Mosquitto, free_port, wait_port
from hil.market_rig import DayDriver, House, Market, SharedClock, default_policy
from hil.physics import Household
from tests.web.browser_kit import PHONE, publish_meter_step, screenshot_dir, wait_until

GRID = "oak"
L = 900
STEP = 300
INTERVALS = 4
PASSWORD = "amber-kettle-orbit-42"
CLAIM = "SUN1-CLAIM-7Q4X"
HOUSES = [("sun-1", 6.0, 350.0), ("dark-2", 0.0, 600.0)]


def test_a_manual_order_is_filled_and_settled(tmp_path: Path) -> None:
    kst_midnight = (int(time.time()) + 9 * 3600) // 86400 * 86400 - 9 * 3600
    start = kst_midnight - 2 * 86400 + 11 * 3600      # 11:00 KST two days ago: sun, and in the wall clock's past
    end = start + INTERVALS * L
    clock = SharedClock(start, tmp_path / "clock")
    db = tmp_path / "gateway.db"
    conn = gdb.open_gateway_db(db)
    reg = DeviceRegistry(conn)
    devices = {h: SigningDevice.generate(bytes([0xE1, 0, 0, 0, 0, 0, 0, 0, i])) for i, (h, *_x) in enumerate(HOUSES)}
    for h, sd in devices.items():
        reg.add({"device_id": sd.device_id.hex(), "public_key": sd.public_key.hex(), "grid": GRID,
                 "profile": "sdm630", "name": h}, claim_code=CLAIM if h == "sun-1" else f"claim-{h}")
    reg.pair(devices["dark-2"].device_id, "dark-2", "claim-dark-2")   # the neighbour paired long ago
    houses = [House(h, kwp, load, i + 1, default_policy(kwp)) for i, (h, kwp, load) in enumerate(HOUSES)]
    physics = {h.household: Household(h.household, kwp=h.kwp, base_load_w=h.base_load_w, seed=h.seed) for h in houses}
    shots = screenshot_dir(tmp_path)
    with Mosquitto() as broker:
        cfg = IngestConfig(str(db), GRID, broker.host, broker.port, workers=0, derive_every_s=0.2)
        service = IngestService(cfg, keys_for(cfg)).start()
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="oak-devices")
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        market = Market(tmp_path / "market", GRID, houses, clock.now, gateway_db=db, day_start=start,
                        kdf=WalletKdf.light(), history_days=14)
        driver = DayDriver(market, start, end - L)
        server = None
        try:
            driver.start()

            async def wire() -> ManualOrders:   # on the market's loop thread (its SQLite connection lives there)
                c = gdb.connect(db)
                orders = ManualOrders(c, market.wallet, GRID, market.domain, trades=TradeLog(c), clock=clock.now)
                for taker in market.takers.values():
                    taker.firm_asks = orders.firm_asks   # firm manual sells compete with the Peers' quotes
                return orders
            driver.lt.run(wire())
            sources = Sources(grid=GRID, gateway_db=db, wallet_dir=tmp_path / "market" / "wallet",
                              outbox_dbs=(tmp_path / "market" / "market-outbox.db",),
                              validators=(market.chain.url,), rpc_timeout_s=2.0)
            port = free_port()
            web = Web(WebConfig(db=db, grid=GRID, public_url=f"http://127.0.0.1:{port}", cookie_secure=False,
                                validators=sources.validators, outbox_dbs=sources.outbox_dbs, clock=clock.now,
                                session_idle_s=6 * 3600),   # the day passes in seconds of wall time
                      complex=Complex(sources, market.wallet, market.domain))
            server = uvicorn.Server(uvicorn.Config(web.app, host="127.0.0.1", port=port, log_level="warning",
                                                   access_log=False))
            threading.Thread(target=server.run, daemon=True).start()
            wait_port("127.0.0.1", port, timeout=30)

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
                page = browser.new_context(viewport=PHONE).new_page()
                page.goto(f"{web.config.public_url}/pair?d={devices['sun-1'].device_id.hex()}&c={CLAIM}")
                page.get_by_role("link", name="Create an account").click()
                page.get_by_label("Email or phone number").fill("010-7777-1111")
                page.get_by_label("Password", exact=False).first.fill(PASSWORD)
                page.get_by_label("Password again").fill(PASSWORD)
                page.get_by_role("button", name="Create account").click()
                totp = pyotp.TOTP(page.locator("#totp-secret").inner_text().replace(" ", ""))
                page.get_by_label("The 6-digit code").fill(totp.at(clock.now()))   # the app's clock is the day's
                page.get_by_role("button", name="Turn on").click()
                page.get_by_role("link", name="I have saved them, continue").click()   # past the recovery codes
                page.get_by_role("button", name="Add meter to my home").click()
                expect(page.locator("#household")).to_have_text("sun-1")
                page.goto(web.config.public_url + "/home")
                # sell 100 Wh for 11:30 at no less than 20 won/kWh (below the agents' quotes: the cheapest)
                page.locator("#orders summary").click()
                page.get_by_label("Side").select_option("sell")
                page.get_by_label("Delivery").select_option(str(start + 2 * L))
                page.get_by_label("Energy (Wh)").fill("100")
                page.get_by_label("Limit price (won/kWh)").fill("20")
                page.locator("#orders").get_by_label("Authenticator code").fill(totp.at(clock.now() + 30))
                page.get_by_role("button", name="Place order").click()
                expect(page.locator("#orders tr[data-order]")).to_contain_text("signed")

                # the day: meters publish every 5 simulated minutes, the agents trade, the settler settles
                seq = 0
                for _ in range(INTERVALS * L // STEP + 1):
                    driver.before_advance(clock.now(), STEP)
                    clock.advance(STEP)
                    now = int(clock.now())
                    seq += 1
                    publish_meter_step(pub, GRID, devices, physics, seq, now)
                    wait_until(lambda: conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == seq * 2,
                               timeout=60, what="readings stored")
                clock.advance(STEP)   # a reading past the last interval's end closes it
                audit = driver.finish(settle_timeout=120)
                assert audit["conservation_ok"], audit

                page.goto(web.config.public_url + "/home")
                row = page.locator("#orders tr[data-order]")
                expect(row).to_contain_text("filled")
                trade = page.locator(f'#trades tr[data-origin="manual:{row.get_attribute("data-order")}"]')
                expect(trade).to_contain_text("your order")
                expect(trade).to_contain_text("sell 100 Wh")
                expect(trade).to_contain_text("delivered")
                expect(trade.locator(".badge")).to_have_text("final")     # settled from metered delivery
                expect(trade).to_contain_text("settle 0x")
                trade.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "homeowner-9-order-settled.png"), full_page=True)
                browser.close()
        finally:
            if server is not None:
                server.should_exit = True
            pub.loop_stop()
            pub.disconnect()
            driver.close()
            service.stop()
            conn.close()
