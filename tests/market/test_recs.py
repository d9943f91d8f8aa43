"""RECs (gateway/market/recs.py): issuance by hand from signed readings, the carried remainder,
no Wh counted twice across runs and late readings, every state change and refusal, the CLI."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from bench.signed_readings import SigningDevice
from gateway.aggregator.derive import Deriver
from gateway.cli import main as cli
from gateway.db import open_gateway_db
from gateway.devices import DeviceRegistry
from gateway.market.recs import (ISSUED, MWH, OFFERED, RETIRED, TRANSFERRED, BadRequest, InsufficientGeneration,
                                 RecRegistry, Refused, UnknownSerial)

START = 1_780_000_200 // 900 * 900
G = "g1"


class World:
    def __init__(self, tmp_path: Path, households: dict[bytes, str]) -> None:
        self.path = tmp_path / "g.db"
        self.conn = open_gateway_db(self.path)
        reg = DeviceRegistry(self.conn)
        self.devs: dict[str, SigningDevice] = {}
        for i, (did, hh) in enumerate(households.items()):
            d = SigningDevice.generate(did)
            code = f"claim-code-{i:04d}"
            reg.add({"device_id": did.hex(), "public_key": d.public_key.hex(), "grid": G, "profile": "sdm630"},
                    claim_code=code)
            reg.pair(did, hh, code)
            self.devs[did.hex()] = d
        self.deriver = Deriver(self.conn, G)
        self.received = 0
        self.recs = RecRegistry(self.conn, issuer="gw-test", clock=lambda: 1_800_000_000)

    def store(self, did: bytes, seq: int, t: int, pv: int) -> None:
        self.received += 1
        raw = self.devs[did.hex()].reading(seq, t, 0, 0, pv, 0, 0)
        self.conn.execute("INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?,?)",
                          (did, seq, t, 0, 0, pv, 0, 0, raw, self.received))

    def derive(self) -> None:
        self.deriver.pass_once()

    def pv(self, did: bytes) -> dict[int, int]:
        return {s: w for s, w in self.conn.execute(
            "SELECT start, pv_wh FROM interval_energy WHERE device_id = ? ORDER BY start", (did,))}

    def rooted(self) -> set[int]:
        return {s for (s,) in self.conn.execute("SELECT DISTINCT start FROM evidence_roots WHERE grid = ?", (G,))}


A, B = b"\x0a" * 9, b"\x0b" * 9


def test_one_rec_per_mwh_by_hand_with_the_remainder_carried(tmp_path: Path) -> None:
    w = World(tmp_path, {A: "h1", B: "h2"})
    # A: PV +100,000 Wh every 5 minutes = 300,000 Wh per interval; 17 readings to START+4800
    for i in range(17):
        w.store(A, i + 1, START + 300 * i, 100_000 * i)
    w.derive()
    # newest reading START+4800, grace 60 s: intervals ending by START+4740 are rooted (0..4)
    assert sorted(w.rooted()) == [START + 900 * k for k in range(5)]
    assert all(w.pv(A)[START + 900 * k] == 300_000 for k in range(5))
    r = w.recs.issue(G)
    # 5 x 300,000 = 1,500,000 Wh: one certificate, 500,000 carried
    assert [c.serial for c in r.certificates] == ["g1/h1/1"]
    assert r.claims == 5 and r.counted_delta_wh == 1_500_000
    c = r.certificates[0]
    assert (c.household, c.owner, c.state, c.mwh, c.issuer) == ("h1", "h1", ISSUED, 1, "gw-test")
    # backing, oldest first: 300k + 300k + 300k + 100k of the 4th interval
    assert [(b.start - START, b.wh) for b in c.evidence] == [(0, 300_000), (900, 300_000), (1800, 300_000),
                                                             (2700, 100_000)]
    assert (c.vintage_start, c.vintage_end) == (START, START + 3600)
    roots = {s: bytes(r_) for s, r_ in w.conn.execute("SELECT start, root FROM evidence_roots WHERE version = 1")}
    assert all(b.root == roots[b.start] and b.root_version == 1 and b.leaf_count == 3 for b in c.evidence)
    assert w.recs.balance(G, "h1").to_json() == {"grid": G, "household": "h1", "counted_wh": 1_500_000,
                                                 "certificates": 1, "available_wh": 500_000, "debt_wh": 0}
    assert w.recs.audit("g1/h1/1") == []
    # a second run finds nothing new: no claim, no certificate
    again = w.recs.issue(G)
    assert (again.claims, again.certificates) == (0, ())
    # 8 more readings (to START+7200): intervals 5 and 6 rooted, +600,000 -> 1,100,000: one more, 100,000 carried
    for i in range(17, 25):
        w.store(A, i + 1, START + 300 * i, 100_000 * i)
    w.derive()
    r2 = w.recs.issue(G)
    assert [c.serial for c in r2.certificates] == ["g1/h1/2"]
    assert [(b.start - START, b.wh) for b in r2.certificates[0].evidence] == [(2700, 200_000), (3600, 300_000),
                                                                              (4500, 300_000), (5400, 200_000)]
    assert w.recs.balance(G, "h1").available_wh == 100_000
    # h2 produced nothing: asking for its certificate is refused with what it has
    with pytest.raises(InsufficientGeneration) as e:
        w.recs.issue(G, household="h2")
    assert e.value.reason == "insufficient_generation"
    with pytest.raises(InsufficientGeneration):
        w.recs.issue(G, household="h1")       # 100,000 Wh carried is not a MWh


def test_late_readings_move_wh_between_intervals_without_counting_them_twice(tmp_path: Path) -> None:
    w = World(tmp_path, {B: "h2"})
    # B: flat until START+600, then 3,000,000 Wh by START+1500 (the reading at START+1000 is held back)
    for seq, t, pv in ((1, 0, 0), (2, 300, 0), (3, 600, 0), (5, 1500, 3_000_000)):
        w.store(B, seq, START + t, pv)
    w.derive()
    # interval 0 (rooted, ends before pv_until START+1500): 3,000,000 x 300/900 = 1,000,000 by interpolation
    assert w.pv(B)[START] == 1_000_000 and w.rooted() == {START}
    r = w.recs.issue(G)
    assert [c.serial for c in r.certificates] == ["g1/h2/1"]
    assert w.recs.balance(G, "h2").available_wh == 0
    # the held-back reading: still 0 Wh at START+1000, so interval 0 had none of it; it all moves to interval 1
    w.store(B, 4, START + 1000, 0)
    w.derive()
    assert w.pv(B)[START] == 0
    r2 = w.recs.issue(G)
    assert (r2.claims, r2.counted_delta_wh, r2.certificates) == (1, -1_000_000, ())
    b = w.recs.balance(G, "h2")
    assert (b.counted_wh, b.certificates, b.available_wh, b.debt_wh) == (0, 1, 0, 1_000_000)   # owed, not lost
    # more readings: intervals 1 and 2 rooted. cum(START+1800) = 3,000,000 + 100,000 = 3,100,000; interval 2 300,000
    for seq, t, pv in ((6, 1800, 3_100_000), (7, 2100, 3_200_000), (8, 2400, 3_300_000), (9, 2700, 3_400_000),
                       (10, 3000, 3_500_000)):
        w.store(B, seq, START + t, pv)
    w.derive()
    assert (w.pv(B)[START + 900], w.pv(B)[START + 1800]) == (3_100_000, 300_000)
    r3 = w.recs.issue(G)
    # 3,400,000 new Wh: 1,000,000 repays the debt, 2,400,000 -> two certificates, 400,000 carried
    assert [c.serial for c in r3.certificates] == ["g1/h2/2", "g1/h2/3"]
    b = w.recs.balance(G, "h2")
    assert (b.counted_wh, b.certificates, b.available_wh, b.debt_wh) == (3_400_000, 3, 400_000, 0)
    assert b.certificates * MWH + b.available_wh - b.debt_wh == b.counted_wh
    # the repaying claim records it
    assert w.conn.execute("SELECT debt_paid_wh FROM rec_claims WHERE start = ? AND delta_wh > 0",
                          (START + 900,)).fetchone() == (1_000_000,)


def _counted_total(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(SUM(counted_wh), 0) FROM rec_counted").fetchone()[0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_wh_backs_two_certificates_across_random_runs_and_late_readings(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    w = World(tmp_path, {A: "h1", B: "h1"})            # one household, two devices
    n = 60
    plan = {}
    for did in (A, B):
        pv, rows = 0, []
        for i in range(n):
            pv += rnd.choice((0, 0, 50_000, 120_000, 400_000))
            rows.append((i + 1, START + 300 * i + rnd.randrange(0, 40), pv))
        plan[did] = rows
    held: list[tuple[bytes, tuple[int, int, int]]] = []
    for k in range(0, n, 6):                           # batches of 6 readings per device, ~1/4 held back
        for did in (A, B):
            for row in plan[did][k:k + 6]:
                if rnd.random() < 0.25 and row[0] > 1:
                    held.append((did, row))
                else:
                    w.store(did, *row)
        if held and rnd.random() < 0.5:                # some held readings arrive late
            for did, row in held[:rnd.randrange(1, len(held) + 1)]:
                w.store(did, *row)
            held = [h for h in held if not w.conn.execute("SELECT 1 FROM readings WHERE device_id = ? AND seq = ?",
                                                          (h[0], h[1][0])).fetchone()]
        w.derive()
        w.recs.issue(G)
        w.recs.issue(G)                                # a repeated run changes nothing
        b = w.recs.balance(G, "h1")
        assert b.certificates * MWH + b.available_wh - b.debt_wh == b.counted_wh == _counted_total(w.conn)
        assert b.debt_wh == 0 or b.available_wh == 0
    for did, row in held:
        w.store(did, *row)
    # a final stretch past every reading so far: every interval with energy that was ever counted is final
    for did in (A, B):
        last = plan[did][-1]
        for j in range(1, 8):
            w.store(did, n + j, START + 300 * (n + j - 1), last[2])
    w.derive()
    w.recs.issue(G)
    b = w.recs.balance(G, "h1")
    total = _counted_total(w.conn)
    # every MWh counted is certified once, the rest carried, nothing owed
    assert (b.debt_wh, b.certificates, b.available_wh) == (0, total // MWH, total % MWH)
    # what was counted is what the meters show for those intervals now
    cur = dict(((bytes(d), s), wh) for d, s, wh in w.conn.execute(
        "SELECT device_id, start, pv_wh FROM interval_energy"))
    for d, s, counted in w.conn.execute("SELECT device_id, start, counted_wh FROM rec_counted"):
        assert cur[(bytes(d), s)] == counted
    # each backing's Wh sums to 1 MWh per certificate and no claim lends more than its positive delta
    for c in w.recs.list(grid=G):
        assert sum(x.wh for x in c.evidence) == MWH
    used = dict(w.conn.execute("SELECT claim_id, SUM(wh) FROM rec_backing GROUP BY claim_id").fetchall())
    for cid, delta, paid in w.conn.execute("SELECT id, delta_wh, debt_paid_wh FROM rec_claims"):
        assert used.get(cid, 0) <= max(0, delta) - paid


def _one_cert(tmp_path: Path) -> World:
    w = World(tmp_path, {A: "h1", B: "h2"})
    for i in range(17):
        w.store(A, i + 1, START + 300 * i, 100_000 * i)
    w.derive()
    w.recs.issue(G)
    return w


def test_offer_sell_transfer_retire_and_every_refusal(tmp_path: Path) -> None:
    w = _one_cert(tmp_path)
    s = "g1/h1/1"
    r = w.recs
    with pytest.raises(UnknownSerial) as e0:
        r.get("g1/h1/9")
    assert e0.value.reason == "unknown_serial"
    with pytest.raises(Refused) as e:
        r.offer(s, by="h2", price_noia=5)
    assert e.value.reason == "not_owner"
    with pytest.raises(BadRequest):
        r.offer(s, by="h1", price_noia=0)
    o = r.offer(s, by="h1", price_noia=7 * 10**18)
    assert r.get(s).state == OFFERED and r.offers() == [o]
    for fn in (lambda: r.transfer(s, "h2", by="h1"), lambda: r.retire(s, by="h1", reason="x"),
               lambda: r.offer(s, by="h1", price_noia=1)):
        with pytest.raises(Refused) as e:
            fn()
        assert e.value.reason == "offered"
    with pytest.raises(Refused) as e:
        r.sell(o.id, "h1", payment_ref="tx1")
    assert e.value.reason == "same_owner"
    c = r.sell(o.id, "h2", payment_ref="noia-transfer-0x01")
    assert (c.state, c.owner) == (TRANSFERRED, "h2")
    with pytest.raises(Refused) as e:
        r.sell(o.id, "h3", payment_ref="again")
    assert e.value.reason == "not_offered"
    with pytest.raises(Refused) as e:
        r.get_offer("nope")
    assert e.value.reason == "unknown_offer"
    with pytest.raises(Refused) as e:
        r.transfer(s, "h3", by="h1")                   # h1 sold it
    assert e.value.reason == "not_owner"
    # h2 lists it, changes its mind
    r.offer(s, by="h2", price_noia=1)
    assert r.withdraw(s, by="h2").state == TRANSFERRED
    with pytest.raises(Refused) as e:
        r.withdraw(s, by="h2")
    assert e.value.reason == "not_offered"
    # to an address, then retired by it
    addr = "0x" + "Ab" * 20
    with pytest.raises(BadRequest) as eb:
        r.transfer(s, "not an owner!", by="h2")
    assert eb.value.reason == "bad_owner"
    c = r.transfer(s, addr, by="h2", note="gift")
    assert c.owner == addr.lower()
    with pytest.raises(BadRequest):
        r.retire(s, by=addr, reason="  ")
    c = r.retire(s, by=addr, reason="2026 RPS obligation", beneficiary="Hanbit Apartments")
    assert (c.state, c.retire_reason, c.beneficiary, c.retired_at) == (RETIRED, "2026 RPS obligation",
                                                                      "Hanbit Apartments", 1_800_000_000)
    for fn in (lambda: r.retire(s, by=addr, reason="again"), lambda: r.transfer(s, "h1", by=addr),
               lambda: r.offer(s, by=addr, price_noia=1)):
        with pytest.raises(Refused) as e:
            fn()
        assert e.value.reason == "already_retired"
    hist = [(e.action, e.actor, e.from_owner, e.to_owner, e.state_before, e.state_after) for e in r.history(s)]
    assert hist == [
        ("issue", "operator", None, "h1", None, ISSUED),
        ("offer", "h1", "h1", None, ISSUED, OFFERED),
        ("sell", "operator", "h1", "h2", OFFERED, TRANSFERRED),
        ("offer", "h2", "h2", None, TRANSFERRED, OFFERED),
        ("withdraw", "h2", "h2", None, OFFERED, TRANSFERRED),
        ("transfer", "h2", "h2", addr.lower(), TRANSFERRED, TRANSFERRED),
        ("retire", addr.lower(), addr.lower(), None, TRANSFERRED, RETIRED),
    ]
    assert all(e.at == 1_800_000_000 for e in r.history(s))


def test_a_certificate_given_back_to_its_producer_is_issued_again_and_durable(tmp_path: Path) -> None:
    w = _one_cert(tmp_path)
    w.recs.transfer("g1/h1/1", "h2", by="h1")
    assert w.recs.transfer("g1/h1/1", "h1", by="h2").state == ISSUED
    w.conn.close()
    again = RecRegistry(open_gateway_db(w.path))
    assert [e.action for e in again.history("g1/h1/1")] == ["issue", "transfer", "transfer"]
    assert again.audit("g1/h1/1") == []


def test_cli_issue_list_show_transfer_retire(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = World(tmp_path, {A: "h1"})
    for i in range(17):
        w.store(A, i + 1, START + 300 * i, 100_000 * i)
    w.derive()
    db = str(w.path)

    def run(*argv: str) -> tuple[int, dict]:
        code = cli(["recs", *argv, "--db", db, "--json"])
        out = capsys.readouterr().out.strip().splitlines()
        return code, json.loads(out[-1])

    code, doc = run("issue", "--grid", G)
    assert code == 0 and doc["issued"] == ["g1/h1/1"] and doc["balances"][0]["available_wh"] == 500_000
    code, doc = run("issue", "--grid", G, "--household", "h1")
    assert code == 1 and doc["error"] == "insufficient_generation"
    code, doc = run("list", "--owner", "h1")
    assert [c["serial"] for c in doc["certificates"]] == ["g1/h1/1"]
    assert doc["certificates"][0]["evidence"][0]["root_version"] == 1
    code, doc = run("show", "g1/h1/1")
    assert code == 0 and doc["audit"] == [] and doc["issuer"] == "metanoia-gateway/g1"
    code, doc = run("transfer", "g1/h1/1", "--to", "h9", "--as", "h2")
    assert code == 1 and doc["error"] == "not_owner"
    code, doc = run("transfer", "g1/h1/1", "--to", "h9", "--as", "h1")
    assert code == 0 and doc["owner"] == "h9" and doc["state"] == "transferred"
    code, doc = run("retire", "g1/h1/1", "--as", "h9", "--reason", "green claim 2026")
    assert code == 0 and doc["state"] == "retired" and doc["beneficiary"] == "h9"
    code, doc = run("retire", "g1/h1/1", "--as", "h9", "--reason", "again")
    assert code == 1 and doc["error"] == "already_retired"
    code, doc = run("show", "g1/h1/404")
    assert code == 1 and doc["error"] == "unknown_serial"
