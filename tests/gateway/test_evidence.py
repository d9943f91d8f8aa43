"""Evidence: RFC 6962 Merkle roots over an interval's signed readings, proofs, the CLI.

Small trees are written out by hand with hashlib; the RFC 6962 reference vectors
(Certificate Transparency's merkle_tree_test) pin the shape for sizes 0..8.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.db import open_gateway_db
from gateway.devices import DeviceRegistry
from gateway.evidence import (EMPTY_ROOT, EvidenceError, EvidenceStore, Proof, inclusion_path, leaf_hash, root_of,
                              verify, verify_inclusion)
from gateway.telemetry import decode_message
from gateway.telemetry import verify as verify_signature


def H(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def leaf(b: bytes) -> bytes:
    return H(b"\x00" + b)


def node(a: bytes, b: bytes) -> bytes:
    return H(b"\x01" + a + b)


# -- the tree, by hand ------------------------------------------------------------------------

A, B, C, D, E = (bytes([i]) * 5 for i in range(1, 6))


def test_known_small_trees_by_hand():
    la, lb, lc, ld, le = map(leaf, (A, B, C, D, E))
    assert leaf_hash(A) == la
    assert root_of([]) == EMPTY_ROOT == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert root_of([la]) == la
    assert root_of([la, lb]) == node(la, lb)
    # 3 leaves: split at 2; the third is the right subtree on its own (not duplicated).
    assert root_of([la, lb, lc]) == node(node(la, lb), lc)
    # 5 leaves: split at 4.
    assert root_of([la, lb, lc, ld, le]) == node(node(node(la, lb), node(lc, ld)), le)
    # proofs: sibling path from the leaf up
    assert inclusion_path(0, [la]) == []
    assert inclusion_path(1, [la, lb]) == [la]
    assert inclusion_path(2, [la, lb, lc]) == [node(la, lb)]
    assert inclusion_path(0, [la, lb, lc]) == [lb, lc]
    assert inclusion_path(4, [la, lb, lc, ld, le]) == [node(node(la, lb), node(lc, ld))]
    assert inclusion_path(2, [la, lb, lc, ld, le]) == [ld, node(la, lb), le]


RFC6962_LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                              "606162636465666768696a6b6c6d6e6f")]
RFC6962_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
RFC6962_PATHS = [  # (leaf index, tree size, path)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]


def test_rfc6962_reference_roots_and_paths():
    hashes_ = [leaf_hash(x) for x in RFC6962_LEAVES]
    for n, want in enumerate(RFC6962_ROOTS):
        assert root_of(hashes_[:n]).hex() == want, n
    for i, n, path in RFC6962_PATHS:
        got = inclusion_path(i, hashes_[:n])
        assert [p.hex() for p in got] == path
        assert verify_inclusion(hashes_[i], i, n, got, bytes.fromhex(RFC6962_ROOTS[n]))


def _check_all_proofs_and_tampering(data: list[bytes]) -> None:
    hs = [leaf_hash(x) for x in data]
    root = root_of(hs)
    n = len(hs)
    for i in range(n):
        path = inclusion_path(i, hs)
        assert verify_inclusion(hs[i], i, n, path, root)
        # another leaf, any flipped sibling bit, another index, a shortened or
        # lengthened path: all fail
        assert not verify_inclusion(leaf_hash(data[i] + b"\x00"), i, n, path, root)
        for j in range(len(path)):
            bad = list(path)
            bad[j] = bytes([bad[j][0] ^ 0x01]) + bad[j][1:]
            assert not verify_inclusion(hs[i], i, n, bad, root)
        for k in range(n):
            if k != i and hs[k] != hs[i]:
                assert not verify_inclusion(hs[i], k, n, path, root)
        if path:
            assert not verify_inclusion(hs[i], i, n, path[:-1], root)
        assert not verify_inclusion(hs[i], i, n, path + [root], root)
        # (A wrong tree size is not always caught: leaf 0 of 3 and of 4 climb the same
        # way. The leaf is in the root all the same; the stored leaf count is cited with it.)
        assert not verify_inclusion(hs[i], n, n, path, root)


def test_every_leaf_proves_and_every_tampering_fails_for_sizes_1_to_20():
    for n in range(1, 21):
        _check_all_proofs_and_tampering([b"reading %d" % i for i in range(n)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=40, unique=True))
def test_random_leaf_sets(data):
    _check_all_proofs_and_tampering(data)


def test_a_leaf_cannot_pose_as_a_node():
    la, lb = leaf(A), leaf(B)
    root = root_of([la, lb])
    # The 64 bytes under the root, offered as one leaf's data, hash differently (0x00 vs 0x01).
    assert leaf_hash(la + lb) != root
    assert not verify_inclusion(leaf_hash(la + lb), 0, 1, [], root)


# -- signed readings in a gateway database ----------------------------------------------------

T0 = 1_767_225_600  # a multiple of 900: 2026-01-01T00:00Z
GRID = "hanbit-apt"


class Dev:
    """A software-keyed device that signs readings the way the firmware does (docs/telemetry.md)."""

    def __init__(self, n: int) -> None:
        self.id = bytes.fromhex("0123%012xee" % n)
        self.key = ec.derive_private_key(int.from_bytes(H(b"evidence test %d" % n), "big") % (2**255), ec.SECP256R1())
        pub = self.key.public_key().public_numbers()
        self.xy = pub.x.to_bytes(32, "big") + pub.y.to_bytes(32, "big")

    def sign(self, seq: int, t: int, imp: int, exp: int = 0, pv: int = 0, power: int = 0, flags: int = 0x08) -> bytes:
        if t == 0:
            flags |= 0x04
        payload = cbor2.dumps({1: self.id, 2: seq, 3: t, 4: imp, 5: exp, 6: pv, 7: power, 8: flags}, canonical=True)
        prot = b"\xa1\x01\x26"
        der = self.key.sign(cbor2.dumps(["Signature1", prot, b"", payload]), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return cbor2.dumps(cbor2.CBORTag(18, [prot, {4: self.id}, payload, r.to_bytes(32, "big") + s.to_bytes(32, "big")]))

    def device_json(self, path: Path) -> Path:
        pem = self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        path.write_text(json.dumps({"device_id": self.id.hex(), "public_key_pem": pem}))
        return path


def store(conn: sqlite3.Connection, raw: bytes) -> None:
    """Insert a verified reading as the ingest does (decoded columns + raw bytes)."""
    (s,) = decode_message(raw)
    r = s.reading
    conn.execute("INSERT INTO readings (device_id, seq, time, import_wh, export_wh, pv_wh, power_w, flags, raw, "
                 "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                 (r.device_id, r.seq, r.time, r.import_wh, r.export_wh, r.pv_wh, r.power_w, r.flags, raw))


@pytest.fixture
def complex_db(tmp_path):
    """Grid with devices 2 and 1 (registered in that order), device 3 on another grid."""
    conn = open_gateway_db(tmp_path / "gw.db")
    reg = DeviceRegistry(conn)
    devs = {n: Dev(n) for n in (1, 2, 3)}
    for n, grid in ((2, GRID), (1, GRID), (3, "other-grid")):
        reg.add({"device_id": devs[n].id.hex(), "public_key": devs[n].xy.hex(), "claim_code": "claim-code-%d" % n,
                 "profile": "sdm630", "grid": grid})
    raws: dict[tuple[int, int], bytes] = {}
    for n in (2, 1, 3):
        for seq, t in ((1, T0 + 10), (2, T0 + 70), (3, 0), (4, T0 + 890), (5, T0 + 900)):
            raws[n, seq] = devs[n].sign(seq, t, 100 * seq)
            store(conn, raws[n, seq])
    return tmp_path / "gw.db", conn, devs, raws


def test_interval_leaves_are_timed_readings_in_the_interval_by_device_then_seq(complex_db):
    _path, conn, devs, raws = complex_db
    ev = EvidenceStore(conn)
    got = ev.leaves(GRID, T0)
    # device 1 before device 2 (id bytes), seq order; seq 3 has no time, seq 5 is in the next interval;
    # device 3 is another grid's.
    assert [(d, s) for d, s, _r in got] == [(devs[1].id, 1), (devs[1].id, 2), (devs[1].id, 4),
                                           (devs[2].id, 1), (devs[2].id, 2), (devs[2].id, 4)]
    root = ev.root(GRID, T0 + 123)  # any time inside names the interval
    want = [leaf(raws[n, s]) for n in (1, 2) for s in (1, 2, 4)]
    # 6 leaves: split at 4.
    assert root.root == node(node(node(want[0], want[1]), node(want[2], want[3])), node(want[4], want[5]))
    assert (root.start, root.leaf_count, root.version) == (T0, 6, 1)
    assert ev.root(GRID, T0).version == 1       # unchanged readings: same version
    empty = ev.root(GRID, T0 + 1800)
    assert (empty.leaf_count, empty.root) == (0, EMPTY_ROOT)


def test_a_late_reading_makes_a_new_version_and_keeps_the_old(complex_db):
    _path, conn, devs, raws = complex_db
    ev = EvidenceStore(conn)
    v1 = ev.root(GRID, T0)
    late = devs[1].sign(6, T0 + 30, 600)  # from the backlog, for the closed interval
    store(conn, late)
    (v2,) = ev.update_stored([(devs[1].id, 6), (devs[2].id, 5)])  # the next interval has no root: left alone
    assert (v2.version, v2.leaf_count) == (2, 7) and v2.root != v1.root
    assert [(v.version, v.leaf_count, v.root) for v in ev.versions(GRID, T0)] == [(1, 6, v1.root), (2, 7, v2.root)]
    assert ev.latest(GRID, T0 + 900) is None
    # the late reading is leaf 3 (device 1: seqs 1, 2, 4, 6)
    p = ev.prove(GRID, T0, devs[1].id, 6)
    assert (p.leaf_index, p.leaf_count, p.root, p.root_version) == (3, 7, v2.root, 2)
    assert verify(v2.root, late, p)
    assert not verify(v1.root, late, p)


def test_proofs_for_every_reading_verify_with_nothing_but_the_proof(complex_db):
    _path, conn, devs, raws = complex_db
    ev = EvidenceStore(conn)
    for (n, seq), raw in raws.items():
        if n == 3 or seq == 3:
            continue
        p = ev.prove(GRID, None, devs[n].id, seq)
        again = Proof.from_json(json.loads(json.dumps(p.to_json())))
        assert again == p
        assert verify(p.root, raw, again)
        assert not verify(p.root, raws[n, 1 if seq != 1 else 2], again)   # another reading, same path


def test_a_proof_that_lies_about_the_reading_fails(complex_db):
    _path, conn, devs, raws = complex_db
    ev = EvidenceStore(conn)
    p = ev.prove(GRID, None, devs[1].id, 2)
    raw = raws[1, 2]
    from dataclasses import replace
    assert verify(p.root, raw, p)
    assert not verify(p.root, raw, replace(p, seq=4))
    assert not verify(p.root, raw, replace(p, device_id=devs[2].id))
    assert not verify(p.root, raw, replace(p, interval_start=T0 + 900))
    assert not verify(p.root, raw, replace(p, leaf_index=0))
    assert not verify(p.root, raw, replace(p, leaf_count=2))   # a path too long for the size
    assert not verify(p.root, raw, replace(p, leaf_index=6))   # outside the tree
    for i in range(len(raw)):  # any byte of the reading
        bad = bytearray(raw)
        bad[i] ^= 0x20
        assert not verify(p.root, bytes(bad), p)


def test_what_cannot_be_proven(complex_db):
    _path, conn, devs, _raws = complex_db
    ev = EvidenceStore(conn)
    with pytest.raises(EvidenceError) as e:
        ev.prove(GRID, None, devs[1].id, 3)
    assert e.value.reason == "untimed_reading"
    with pytest.raises(EvidenceError) as e:
        ev.prove(GRID, None, devs[3].id, 1)
    assert e.value.reason == "wrong_grid"
    with pytest.raises(EvidenceError) as e:
        ev.prove(GRID, None, devs[1].id, 99)
    assert e.value.reason == "unknown_reading"
    with pytest.raises(EvidenceError) as e:
        ev.prove(GRID, T0 + 900, devs[1].id, 1)
    assert e.value.reason == "wrong_interval"


# -- the CLI, end to end ----------------------------------------------------------------------

def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_root_prove_verify(complex_db, capsys, tmp_path):
    path, conn, devs, raws = complex_db
    conn.close()
    code, out, _ = run(capsys, "evidence", "root", "--db", str(path), "--grid", GRID,
                       "--interval", "2026-01-01T09:05:00+09:00", "--json")
    assert code == 0
    doc = json.loads(out.strip().splitlines()[-1])
    la = [leaf(raws[n, s]) for n in (1, 2) for s in (1, 2, 4)]
    want = node(node(node(la[0], la[1]), node(la[2], la[3])), node(la[4], la[5]))
    assert doc == {"grid": GRID, "interval_start": T0, "interval_s": 900, "interval_iso": "2026-01-01T00:00:00Z",
                   "version": 1, "leaf_count": 6, "root": want.hex()}
    code, out2, _ = run(capsys, "evidence", "root", "--db", str(path), "--grid", GRID, "--interval", str(T0 + 899),
                        "--json")
    assert json.loads(out2.strip().splitlines()[-1]) == doc

    proof_path = tmp_path / "proof.json"
    code, _, _ = run(capsys, "evidence", "prove", "--db", str(path), "--grid", GRID, "--device", devs[2].id.hex(),
                     "--seq", "4", "--out", str(proof_path))
    assert code == 0
    proof = json.loads(proof_path.read_text())
    assert (proof["reading_hex"], proof["root"], proof["leaf_index"], proof["interval_start"]) == (
        raws[2, 4].hex(), want.hex(), 5, T0)
    assert proof["path"] == [la[4].hex(), node(node(la[0], la[1]), node(la[2], la[3])).hex()]

    key = devs[2].device_json(tmp_path / "device.json")
    other_key = devs[1].device_json(tmp_path / "other.json")
    assert run(capsys, "evidence", "verify", str(proof_path))[0] == 0
    assert run(capsys, "evidence", "verify", str(proof_path), "--root", want.hex(), "--key", str(key))[0] == 0
    code, out, err = run(capsys, "evidence", "verify", str(proof_path), "--root", want.hex(), "--key", str(other_key),
                         "--json")
    assert code == 1 and json.loads(out.strip().splitlines()[-1])["reasons"] == ["bad_signature"]
    assert run(capsys, "evidence", "verify", str(proof_path), "--root", "00" * 32)[0] == 1
    assert run(capsys, "evidence", "verify", str(proof_path), "--root", want.hex(), "--leaf-count", "6")[0] == 0
    assert run(capsys, "evidence", "verify", str(proof_path), "--root", want.hex(), "--leaf-count", "7")[0] == 1

    for field, value in (("leaf_index", 4), ("seq", 2),
                         ("path", [la[3].hex(), proof["path"][1]]),
                         ("reading_hex", raws[2, 2].hex())):
        bad = tmp_path / f"bad-{field}.json"
        bad.write_text(json.dumps(dict(proof, **{field: value})))
        assert run(capsys, "evidence", "verify", str(bad))[0] == 1, field
    # A verifier with its own root rejects a proof whose root was swapped to match a forgery.
    forged = dict(proof, reading_hex=raws[2, 2].hex())
    forged["root"] = root_of([leaf(raws[2, 2])]).hex()
    forged.update(leaf_index=0, leaf_count=1, path=[])
    bad = tmp_path / "forged.json"
    bad.write_text(json.dumps(forged))
    assert run(capsys, "evidence", "verify", str(bad), "--root", want.hex())[0] == 1

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    assert run(capsys, "evidence", "verify", str(garbage))[0] == 2
    assert run(capsys, "evidence", "verify", str(tmp_path / "missing.json"))[0] == 2
    assert run(capsys, "evidence", "root", "--db", str(tmp_path / "none.db"), "--grid", GRID,
               "--interval", str(T0))[0] == 2
    code, _, err = run(capsys, "evidence", "prove", "--db", str(path), "--grid", GRID, "--device", devs[1].id.hex(),
                       "--seq", "3")
    assert code == 1 and "no time" in err


def test_the_readings_in_the_tree_verify_against_the_pinned_keys(complex_db):
    _path, conn, devs, raws = complex_db
    for d, _s, raw in EvidenceStore(conn).leaves(GRID, T0):
        key = next(dev.xy for dev in devs.values() if dev.id == d)
        (s,) = decode_message(raw)
        assert verify_signature(s, key, device_id=d).device_id == d


def test_firmware_readings_from_device_sim_end_to_end(tmp_path, capsys):
    """The firmware's own signed readings (``metanoia device sim``): stored, interval energy,
    root, proof, and a verification with the device's key file."""
    from gateway.aggregator.intervals import IntervalEngine

    out = tmp_path / "sim"
    # readings every 300 s from T0 - 300 + 300: times T0, T0+300, ..., T0+1500
    assert run(capsys, "device", "sim", "--readings", "6", "--interval", "300", "--start", str(T0 - 300),
               "--out", str(out))[0] == 0
    ident = json.loads((out / "device.json").read_text())
    conn = open_gateway_db(tmp_path / "gw.db")
    DeviceRegistry(conn).add(dict(ident, claim_code="sim-claim-code", profile="sdm630", grid=GRID))
    raws = [(out / f"{seq}.cose").read_bytes() for seq in sorted(int(p.stem) for p in out.glob("*.cose"))]
    for raw in raws:
        store(conn, raw)
    readings = [decode_message(r)[0].reading for r in raws]
    assert [r.time for r in readings] == [T0 + 300 * i for i in range(6)]
    eng = IntervalEngine(conn)
    eng.update([readings[0].device_id])
    got = eng.device_intervals(readings[0].device_id)
    assert [e.start for e in got] == [T0, T0 + 900]
    # Readings at T0+900 sit exactly on the boundary: cum(T0+900) is the counter there.
    assert got[0].import_wh == readings[3].import_wh - readings[0].import_wh
    assert got[0].pv_wh == readings[3].pv_wh - readings[0].pv_wh
    assert sum(e.import_wh for e in got) == readings[-1].import_wh - readings[0].import_wh
    assert sum(e.export_wh for e in got) == readings[-1].export_wh - readings[0].export_wh
    assert [e.readings for e in got] == [3, 3] and not any(e.estimated for e in got)
    conn.close()

    proof_path = tmp_path / "proof.json"
    assert run(capsys, "evidence", "prove", "--db", str(tmp_path / "gw.db"), "--grid", GRID,
               "--device", ident["device_id"], "--seq", str(readings[4].seq), "--out", str(proof_path))[0] == 0
    proof = json.loads(proof_path.read_text())
    la = [leaf(r) for r in raws[3:]]
    assert proof["root"] == node(node(la[0], la[1]), la[2]).hex() and proof["leaf_index"] == 1
    assert run(capsys, "evidence", "verify", str(proof_path), "--root", proof["root"],
               "--key", str(out / "device.json"))[0] == 0
