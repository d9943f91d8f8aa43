"""Withdrawal on a real validator: TOTP, the wallet's approval and ledger, exactly one transfer."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from gateway.cli import main as cli_main
from gateway.chain_client.rpc import JsonRpcClient
from gateway.market.wallet import Wallet, WalletKdf
from hil.broker import free_port, wait_port
from tests.web.browser_kit import ROOT
from tests.web.kit import ORIGIN, Clock, csrf_of, make_web, add_device, enrol, pair, signup

FUND = 5 * 10 ** 18
DEST = "0x" + "ab" * 20


@pytest.fixture()
def chain_web(tmp_path):  # type: ignore[no-untyped-def]
    secret = tmp_path / "wallet.secret"
    secret.write_text("withdraw-test-master-secret\n")
    secret.chmod(0o600)
    wallet = Wallet(tmp_path / "wallet", secret.read_bytes().strip(), kdf=WalletKdf.light())
    address = wallet.create("101-A")   # the household's key exists before the genesis funds it
    wallet.close()
    out = tmp_path / "chain"
    assert cli_main(["validator", "init", "--authorities", "1", "--out", str(out), "--block-time", "0.25",
                     "--fund", f"0x{address.hex()}={FUND}"]) == 0
    p2p, rpc = free_port(), free_port()
    node = subprocess.Popen([sys.executable, "-m", "gateway.cli", "validator", "run", "--genesis", str(out / "genesis.json"),
                             "--key", str(out / "keys" / "authority-0.key"), "--data", str(out / "node0"),
                             "--p2p", f"127.0.0.1:{p2p}", "--peers", f"127.0.0.1:{p2p}", "--rpc", f"127.0.0.1:{rpc}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "node.log", "wb"))
    try:
        wait_port("127.0.0.1", rpc, timeout=60)
        clock = Clock()
        web = make_web(tmp_path, clock=clock, wallet_dir=tmp_path / "wallet", wallet_secret_file=secret,
                       genesis=out / "genesis.json", validators=(f"http://127.0.0.1:{rpc}",))
        yield web, clock, f"http://127.0.0.1:{rpc}", address
    finally:
        node.terminate()
        node.wait(10)


def _balance(url: str, address: str) -> int:
    async def go() -> int:
        rpc = JsonRpcClient(url, timeout=5)
        try:
            return int(await rpc.call("chain_getBalance", address))
        finally:
            await rpc.aclose()
    return asyncio.run(go())


def test_a_withdrawal_needs_a_code_and_moves_the_noia_once(chain_web) -> None:
    web, clock, url, address = chain_web
    kim = signup(web, "kim@example.com")
    enrol(web, kim, clock)
    device, claim = add_device(web, "101-A")
    assert pair(kim, device, claim).status_code == 200
    page = kim.c.get("/home").text
    assert "Withdraw NOIA" in page

    def post(data):  # type: ignore[no-untyped-def]
        return kim.c.post("/home/withdraw", data={"csrf": csrf_of(kim.c.get("/home").text), **data},
                          headers={"origin": ORIGIN})

    r = post({"to": DEST, "amount": "1.5"})
    assert r.status_code == 403 and "6-digit code" in r.text
    r = post({"to": "0x1234", "amount": "1.5", "code": kim.code(clock, ahead=1)})
    assert r.status_code == 400 and "40 hex digits" in r.text
    r = post({"to": DEST, "amount": "1.5", "code": kim.code(clock, ahead=1)})
    assert r.status_code == 303 and r.headers["location"] == "/home?done=withdraw#meters", r.text
    assert _balance(url, DEST) == 15 * 10 ** 17
    assert _balance(url, "0x" + address.hex()) == FUND - 15 * 10 ** 17
    assert web.complex().wallet.spent_today("101-A") == 15 * 10 ** 17   # in the wallet's ledger
    r = post({"to": DEST, "amount": "1.5", "code": kim.code(clock, ahead=1)})   # the same code again
    assert r.status_code == 403 and "already used" in r.text
    assert _balance(url, DEST) == 15 * 10 ** 17
    clock.t += 60
    r = post({"to": DEST, "amount": "100", "code": kim.code(clock)})   # more than the household has
    assert r.status_code == 400 and "balance is smaller" in r.text
    assert _balance(url, DEST) == 15 * 10 ** 17
    assert web.complex().wallet.spent_today("101-A") == 15 * 10 ** 17   # nothing approved or recorded for it
