"""``metanoia settle ... --deployment`` on a real anvil: the settle commands attach to an EVM deployment (the
record ``metanoia chain deploy`` writes), find the interval's fills from the exchange's ``Filled`` events alone
(no trades table, no bundled node), settle them with the amounts read back from the exchange, reclaim an
expired unsettled fill for its taker, and do nothing more on a second run; a missing or bad record, an
unreachable node or another chain is one line on stderr and exit 2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.cli.peer import write_key_file
from gateway.db import open_gateway_db
from gateway.evm.record import read_record, write_record
from gateway.validator.crypto import to_checksum
from tests.evm.evm_kit import EvmChain, evm_chain
from tests.evm.test_evm_fill_index import fill_all
from tests.gateway.validator import kit
from tests.market.test_settlement_e2e import ENERGY, EXPECTED, FILLS, HOUSES, S, setup_db

ROOT = Path(__file__).resolve().parents[2]
GRID = "test-complex"


def cli(*argv: str) -> tuple[int, str, str]:
    """``python -m gateway.cli`` in a subprocess: the command as an operator runs it."""
    p = subprocess.run([sys.executable, "-m", "gateway.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return p.returncode, p.stdout, p.stderr


def last_json(out: str) -> Any:
    return json.loads(out.strip().splitlines()[-1])


def key_file(path: Path, i: int) -> Path:
    write_key_file(path, kit.key(i).secret)
    os.chmod(path, 0o600)
    return path


def nonce(ev: EvmChain, i: int) -> int:
    return int(ev.node.rpc("eth_getTransactionCount", [to_checksum(kit.addr(i)), "latest"]), 16)


def fill_record(ev: EvmChain, fid: bytes) -> Any:
    async def go() -> Any:
        b = ev.backend()
        try:
            return await b.fill_record(fid)
        finally:
            await b.aclose()
    return asyncio.run(go())


def noia(ev: EvmChain, i: int) -> int:
    async def go() -> int:
        b = ev.backend()
        try:
            return await b.balance(kit.addr(i))
        finally:
            await b.aclose()
    return asyncio.run(go())


def test_settle_interval_and_run_on_anvil_from_the_event_index_settle_once(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    setup_db(db, {s: ENERGY[s] for s in (S[0], S[3])})
    households = tmp_path / "households.json"
    households.write_text(json.dumps({h: to_checksum(kit.addr(i)) for i, h in HOUSES.items()}))
    authority = key_file(tmp_path / "authority.key", kit.COMPLEX)
    with evm_chain(tmp_path) as ev:
        picked = [0, 3, 4, 5]                                     # S[0]: one fill; S[3]: three, two households each
        fids = asyncio.run(fill_all(ev, tmp_path / "takers.db", [FILLS[k] for k in picked]))
        conn = open_gateway_db(db)
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'trades'").fetchall()  # events: the source
        conn.close()
        common = ["--db", str(db), "--grid", GRID, "--rpc", ev.url, "--authority-key", str(authority),
                  "--deployment", str(ev.record), "--households", str(households), "--grace", "60", "--json"]
        sent = nonce(ev, kit.COMPLEX)

        rc, out, err = cli("settle", "interval", str(S[3]), *common)
        assert rc == 0, err
        r = last_json(out)
        assert (r["state"], r["fills"]) == ("settled", 3)
        for k, fid in zip(picked[1:], fids[1:]):
            rec = fill_record(ev, fid)                             # read back from the exchange
            assert rec is not None and rec.status == "settled"
            assert (rec.delivered_wh, rec.payment, rec.refund) == EXPECTED[k]
        assert fill_record(ev, fids[0]).status == "escrowed"      # another interval: untouched
        assert nonce(ev, kit.COMPLEX) == sent + 1                 # one settleBatch

        rc, out, err = cli("settle", "run", "--once", *common)   # every closed interval: S[0] is left
        assert rc == 0, err
        states = {d["start"]: d["state"] for d in last_json(out)["intervals"]}
        assert states.get(S[0]) == "settled"
        rec = fill_record(ev, fids[0])
        assert rec.status == "settled" and (rec.delivered_wh, rec.payment, rec.refund) == EXPECTED[0]
        assert nonce(ev, kit.COMPLEX) == sent + 2

        # exactly once: a second run of both commands sends nothing and changes nothing on the exchange
        rc, out, err = cli("settle", "interval", str(S[3]), *common)
        assert rc == 0 and last_json(out)["state"] == "settled", err
        rc, out, err = cli("settle", "run", "--once", *common)
        assert rc == 0, err
        assert all(d["state"] == "settled" for d in last_json(out)["intervals"])
        assert nonce(ev, kit.COMPLEX) == sent + 2
        for k, fid in zip(picked, fids):
            rec = fill_record(ev, fid)
            assert rec.status == "settled" and (rec.delivered_wh, rec.payment, rec.refund) == EXPECTED[k]


def test_reclaim_expired_on_anvil_refunds_the_taker_once(tmp_path: Path) -> None:
    L = kit.INTERVAL
    old = (int(time.time()) // L) * L - 4 * L                      # ended 3 intervals ago: past a 60 s timeout
    future = (int(time.time()) // L) * L + 10 * L                  # not reclaimable for hours
    with evm_chain(tmp_path, settle_timeout=60) as ev:
        expired, later = asyncio.run(fill_all(ev, tmp_path / "takers.db", [(old, 2, 3, 11, 500, 5000),
                                                                         (future, 4, 5, 12, 100, 1000)]))
        watcher = key_file(tmp_path / "watcher.key", 7)           # a neighbour: any account with gas ether
        args = ["settle", "reclaim-expired", "--once", "--json", "--db", str(tmp_path / "tower.db"),
                "--rpc", ev.url, "--deployment", str(ev.record), "--key", str(watcher)]
        before, sent = noia(ev, 3), nonce(ev, 7)
        rc, out, err = cli(*args)
        assert rc == 0, err
        assert last_json(out)["outcomes"] == [{"fill_id": "0x" + expired.hex(), "outcome": "reclaimed",
                                               "reason": None, "refund": "5000"}]
        rec = fill_record(ev, expired)
        assert rec.status == "reclaimed" and rec.refund == 5000
        assert noia(ev, 3) == before + 5000                       # the taker, not the sender, got the escrow
        assert fill_record(ev, later).status == "escrowed"
        assert nonce(ev, 7) == sent + 1

        rc, out, err = cli(*args)                                 # again: nothing more
        assert rc == 0, err
        assert last_json(out)["outcomes"] == [] and "nothing to reclaim" in out
        assert noia(ev, 3) == before + 5000 and nonce(ev, 7) == sent + 1


def test_bad_deployment_or_node_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "gw.db"
    authority = key_file(tmp_path / "authority.key", kit.COMPLEX)
    other = key_file(tmp_path / "other.key", 7)

    def run(argv: list[str]) -> str:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        return err

    with evm_chain(tmp_path) as ev:
        def settle(dep: Path, url: str = ev.url, key: Path = authority, *extra: str) -> list[str]:
            return ["settle", "interval", str(S[0]), "--db", str(db), "--grid", GRID, "--rpc", url,
                    "--authority-key", str(key), "--deployment", str(dep), *extra]

        def reclaim(dep: Path, url: str = ev.url) -> list[str]:
            return ["settle", "reclaim-expired", "--once", "--db", str(db), "--rpc", url, "--deployment", str(dep),
                    "--key", str(other)]

        missing = tmp_path / "missing.json"
        notjson = tmp_path / "notjson.json"
        notjson.write_text("{ this is not")
        wrongfmt = tmp_path / "wrongfmt.json"
        wrongfmt.write_text(json.dumps({"format": "something-else/1"}))
        broken = tmp_path / "broken.json"
        doc = json.loads(ev.record.read_text())
        del doc["exchange"]
        broken.write_text(json.dumps(doc))
        elsewhere = tmp_path / "elsewhere.json"
        doc = json.loads(ev.record.read_text())
        doc["chain_id"] = 4242
        elsewhere.write_text(json.dumps(doc))
        nocode = tmp_path / "nocode.json"
        doc = json.loads(ev.record.read_text())
        doc["exchange"] = "0x" + "77" * 20
        nocode.write_text(json.dumps(doc))

        for argv in (settle, reclaim):
            assert "no such file" in run(argv(missing))
            assert "not JSON" in run(argv(notjson))
            assert "not a metanoia-evm-deployment/1 record" in run(argv(wrongfmt))
            assert "bad deployment record" in run(argv(broken))
            err = run(argv(ev.record, "http://127.0.0.1:9/"))
            assert "cannot reach the EVM node" in err and "127.0.0.1:9" in err
            assert "node is chain 31337, deployment is 4242" in run(argv(elsewhere))
            assert "no exchange code" in run(argv(nocode))
        assert "not the deployment's complex authority" in run(settle(ev.record, ev.url, other))
        assert "not the deployment's 900" in run(settle(ev.record, ev.url, authority, "--interval-seconds", "60"))
        assert "--contract is for the bundled chain" in run(settle(ev.record, ev.url, authority, "--contract",
                                                                   "0x" + "11" * 20))
        notimeout = tmp_path / "notimeout.json"
        write_record(notimeout, dataclasses.replace(read_record(ev.record), settle_timeout=None))
        assert "no settle timeout" in run(reclaim(notimeout))
    with pytest.raises(SystemExit) as exc:                        # one chain or the other, never both
        main(settle(ev.record, ev.url, authority, "--genesis", str(tmp_path / "g.json")))
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:                        # reclaim-expired needs one of them
        main(["settle", "reclaim-expired", "--once", "--db", str(db), "--rpc", ev.url, "--key", str(other)])
    assert exc.value.code == 2
