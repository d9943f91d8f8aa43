"""The homeowner's flow in headless Chromium against the real processes: scan the
QR link, sign up, enrol TOTP, pair, watch live readings arrive; and the operator's view."""

from __future__ import annotations

import re
import time

import pyotp
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from bench.signed_readings import SigningDevice
from gateway import db as gdb
from gateway.devices import DeviceRegistry
from gateway.market.wallet import Wallet, WalletKdf
from hil.broker import Mosquitto
from tests.web.browser_kit import DESKTOP, GRID, PHONE, Gateway, Meter, cli, screenshot_dir

CLAIM = "K7QX-42RM-9TZD"
PASSWORD = "amber-kettle-orbit-42"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    with Mosquitto() as broker:
        meter_dev = SigningDevice.generate()
        conn = gdb.connect(tmp / "gateway.db")
        DeviceRegistry(conn).add({"device_id": meter_dev.device_id.hex(), "public_key": meter_dev.public_key.hex(),
                                  "grid": GRID, "name": "101-A", "profile": "sdm630"}, claim_code=CLAIM)
        conn.close()
        # the market side the pages need: the wallet service and the chain's genesis (order domain)
        secret = tmp / "wallet.secret"
        secret.write_text("browser-test-master-secret\n")
        secret.chmod(0o600)
        Wallet(tmp / "wallet", secret.read_bytes().strip(), kdf=WalletKdf.light()).close()
        assert cli("validator", "init", "--authorities", "1", "--out", str(tmp / "chain")).returncode == 0
        gw = Gateway(tmp, broker, extra_web_args=("--wallet-dir", str(tmp / "wallet"), "--wallet-secret-file",
                                                  str(secret), "--genesis", str(tmp / "chain" / "genesis.json")))
        gw.start()
        meter = Meter(broker, meter_dev).start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            try:
                yield gw, meter, browser, screenshot_dir(tmp)
            finally:
                browser.close()
                meter.stop()
                gw.stop()


def _shot(page: Page, shots, name: str) -> None:  # type: ignore[no-untyped-def]
    """A full-page screenshot; TOTP secrets (text and QR), recovery codes and typed codes are masked: the pictures
    end up in docs/img and must not carry even a test account's secret."""
    secret = [page.locator(sel).filter(visible=True)
              for sel in (".qr", "#totp-secret", "input[name=code]", "#recovery-codes", "input[name=recovery]")]
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True, mask=secret, mask_color="#9aa5a0")


def test_homeowner_scans_signs_up_enrols_pairs_and_sees_live_power(rig) -> None:
    gw, meter, browser, shots = rig
    ctx = browser.new_context(viewport=PHONE, device_scale_factor=1)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    link = f"{gw.url}/pair?d={meter.device.device_id.hex()}&c={CLAIM}"   # what the label's QR holds
    page.goto(link)
    expect(page.get_by_role("heading", name="Add your meter")).to_be_visible()
    _shot(page, shots, "homeowner-1-scan")
    page.get_by_role("link", name="Create an account").click()
    page.get_by_label("Email or phone number").fill("010-2345-6789")
    page.get_by_label("Password", exact=False).first.fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    _shot(page, shots, "homeowner-2-signup")
    page.get_by_role("button", name="Create account").click()

    expect(page.get_by_role("heading", name="Two-factor authentication")).to_be_visible()
    expect(page.locator(".qr svg")).to_be_visible()
    _shot(page, shots, "homeowner-3-totp")
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    totp = pyotp.TOTP(secret)
    page.get_by_label("The 6-digit code").fill(totp.now())
    page.get_by_role("button", name="Turn on").click()

    # the recovery codes, shown once; one of them is used below to sign in without the phone
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    codes = page.locator("#recovery-codes li").all_inner_texts()
    assert len(codes) == 10 and all(re.fullmatch(r"[0-9A-Z]{4}(-[0-9A-Z]{4}){3}", c) for c in codes)
    _shot(page, shots, "homeowner-3b-recovery-codes")
    page.get_by_role("link", name="I have saved them, continue").click()

    expect(page.get_by_role("heading", name="Add this meter?")).to_be_visible()  # back to the QR link
    expect(page.locator("#joins")).to_have_text("101-A")
    _shot(page, shots, "homeowner-4-pair")
    page.get_by_role("button", name="Add meter to my home").click()
    expect(page.locator("#household")).to_have_text("101-A")
    page.get_by_role("link", name="Go to my home").click()

    expect(page.get_by_role("heading", name="Household 101-A")).to_be_visible()
    power = page.locator("#power")
    expect(power).to_have_text(re.compile(r"[+-][\d,]+ W"), timeout=30_000)
    first = power.inner_text()
    # live.js refreshes it without a reload: the meter publishes a new power every half second
    expect(power).not_to_have_text(first, timeout=30_000)
    _shot(page, shots, "homeowner-5-home")

    # a manual order: sell 500 Wh in the next-but-one interval at no less than 150 won/kWh
    page.locator("#orders summary").click()
    page.get_by_label("Side").select_option("sell")
    page.get_by_label("Delivery").select_option(index=1)
    page.get_by_label("Energy (Wh)").fill("500")
    page.get_by_label("Limit price (won/kWh)").fill("150")
    # the enrolment used the current code; a phone a step ahead shows the next (the window allows it)
    page.locator("#orders").get_by_label("Authenticator code").fill(totp.at(time.time() + 30))
    _shot(page, shots, "homeowner-6-order")
    page.get_by_role("button", name="Place order").click()
    expect(page.locator("#page-ok")).to_have_text("Order placed.")
    row = page.locator("#orders tr[data-order]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("sell")
    expect(row).to_contain_text("500")
    expect(row).to_contain_text("150.00")
    expect(row).to_contain_text("signed")   # an rfq sell is signed at once as a firm order
    page.locator("#orders").scroll_into_view_if_needed()
    _shot(page, shots, "homeowner-7-order-placed")
    assert not errors, errors  # no CSP violation or script error
    ctx.close()

    # a lost phone: another browser signs in with a recovery code and must set up the authenticator again
    ctx = browser.new_context(viewport=PHONE, device_scale_factor=1)
    page = ctx.new_page()
    page.goto(gw.url + "/signin")
    page.get_by_label("Email or phone number").fill("010-2345-6789")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Lost your phone? Use a recovery code").click()
    page.get_by_label("Recovery code").fill(codes[0].lower())
    _shot(page, shots, "homeowner-9-recovery-signin")
    page.get_by_role("button", name="Sign in with a recovery code").click()
    expect(page.locator("#reenrol")).to_be_visible()
    expect(page.locator("#totp-secret")).to_be_visible()   # a new key to scan
    ctx.close()


def test_operator_signs_in_with_totp_and_sees_the_complex(rig) -> None:
    gw, meter, browser, shots = rig
    r = cli("gateway", "web", "add-operator", "ops@utility.example", "--db", str(gw.db), "--password-stdin",
            stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    page.goto(gw.url + "/operator")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Email or phone number").fill("ops@utility.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Two-factor authentication")).to_be_visible()  # required first
    totp = pyotp.TOTP(page.locator("#totp-secret").inner_text().replace(" ", ""))
    page.get_by_label("The 6-digit code").fill(totp.now())
    page.get_by_role("button", name="Turn on").click()
    page.get_by_role("link", name="I have saved them, continue").click()
    expect(page.get_by_role("heading", name=f"Complex {GRID}")).to_be_visible()
    expect(page.get_by_text(meter.device.device_id.hex())).to_be_visible()
    _shot(page, shots, "operator-1-complex")
    # a homeowner's page is not for operators
    page.goto(gw.url + "/home")
    expect(page.get_by_text("This page is not for your account.")).to_be_visible()
    ctx.close()
