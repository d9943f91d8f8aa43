"""The pages on a real market day (the read model's fixture: Mosquitto, ingest, one
validator, agents, settlement): a homeowner's trades with their chain transactions
and settlements, and the operator's complex. Screenshots for the guides."""

from __future__ import annotations

import re
import threading

import pyotp
import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright

from gateway.cli import main as cli_main
from gateway.web.app import Web
from gateway.web.accounts import OPERATOR
from gateway.web.config import WebConfig
from hil.broker import free_port, wait_port
from tests.web.browser_kit import DESKTOP, PHONE, screenshot_dir
from tests.web.readmodel.conftest import GRID, Day, day  # noqa: F401  (the market day fixture)

PASSWORD = "amber-kettle-orbit-42"


@pytest.fixture(scope="module")
def served(day: Day, tmp_path_factory):  # noqa: F811
    """The web app on the day's databases, on the day's clock (its charts show that day)."""
    cfg = WebConfig(db=day.db, grid=GRID, public_url=f"http://127.0.0.1:{free_port()}", cookie_secure=False,
                    validators=day.cx.sources.validators, genesis=day.cx.sources.genesis,
                    outbox_dbs=day.cx.sources.outbox_dbs, clock=lambda: float(day.now))
    web = Web(cfg, complex=day.cx)
    port = int(cfg.public_url.rsplit(":", 1)[1])
    server = uvicorn.Server(uvicorn.Config(web.app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_port("127.0.0.1", port, timeout=30)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            try:
                yield web, browser, screenshot_dir(tmp_path_factory.mktemp("market-shots"))
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(10)


def test_homeowner_sees_trades_settlements_and_the_bill(served, day: Day) -> None:  # noqa: F811
    web, browser, shots = served
    page = browser.new_context(viewport=PHONE).new_page()
    page.goto(web.config.public_url + "/signup")
    page.get_by_label("Email or phone number").fill("sun1@example.com")
    page.get_by_label("Password", exact=False).first.fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    # the household's meter was paired by the market day's set-up: the operator links the account
    assert cli_main(["gateway", "web", "link-household", "sun1@example.com", "sun-1", "--db", str(day.db)]) == 0
    page.goto(web.config.public_url + "/home")
    expect(page.get_by_role("heading", name="Household sun-1")).to_be_visible()
    trades = page.locator("#trades")
    expect(trades.locator("tr")).not_to_have_count(0)
    expect(trades).to_contain_text("sell")
    expect(trades.locator(".badge.good").first).to_have_text("final")   # settled on the chain
    expect(trades.locator("code").first).to_contain_text("0x")          # the fill transaction
    expect(page.locator("#savings")).to_contain_text("₩")
    expect(page.locator("#balance")).to_contain_text("NOIA")
    expect(page.locator("svg[role=img] rect").first).to_be_visible()      # the interval chart
    page.screenshot(path=str(shots / "homeowner-8-market-day.png"), full_page=True)
    page.context.close()


def test_operator_sees_chain_settlements_and_devices(served, day: Day) -> None:  # noqa: F811
    web, browser, shots = served
    web.store().accounts.create("ops@utility.example", PASSWORD, OPERATOR, web.now())
    page = browser.new_context(viewport=DESKTOP).new_page()
    page.goto(web.config.public_url + "/operator")
    page.get_by_label("Email or phone number").fill("ops@utility.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    page.get_by_label("The 6-digit code").fill(pyotp.TOTP(secret).at(day.now))   # the app's clock is the day's
    page.get_by_role("button", name="Turn on").click()
    page.get_by_role("link", name="I have saved them, continue").click()   # past the recovery codes (shown once)
    expect(page.get_by_role("heading", name=f"Complex {GRID}")).to_be_visible()
    for sd in day.devices.values():
        expect(page.locator("#devices")).to_contain_text(sd.device_id.hex())
    expect(page.locator("#devices")).to_contain_text("1.2.3")              # firmware from the state message
    expect(page.locator("#chain .badge.good").first).to_have_text("up")
    expect(page.locator("#height")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#settlements .badge.good").first).to_have_text("settled")
    expect(page.locator("#resources")).to_contain_text("Rooftop PV")
    page.screenshot(path=str(shots / "operator-2-market-day.png"), full_page=True)
    page.context.close()
