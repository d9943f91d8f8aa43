"""The verifier's pure checks (gateway/anchor/verify.py) under hypothesis: on a synthetic chain of real
headers and Merkle trees, the honest data passes, and any one changed byte of any header, of a tx or of
its proof, and any proof shown for another block, fails with one of the verifier's reasons, never passes
and never raises anything else."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.anchor.errors import AnchorError
from gateway.anchor.registry import Anchored
from gateway.anchor.verify import check_header_chain, check_tx
from gateway.validator.block import HEADER_SIZE, Header, merkle_proof, merkle_root
from gateway.validator.crypto import keccak256
from tests.gateway.validator import kit

HEADER_REASONS = {"bad_header", "header_missing", "header_height_mismatch", "chain_id_mismatch",
                  "parent_hash_mismatch", "checkpoint_hash_mismatch", "state_root_mismatch"}
TX_REASONS = {"tx_hash_mismatch", "tx_not_in_block", "tx_proof_invalid", "bad_tx", "bad_response"}


def _chain(blocks: int, seed: int) -> tuple[list[Header], list[list[bytes]]]:
    rnd = __import__("random").Random(seed)
    headers, txs = [], []
    parent = keccak256(b"genesis %d" % seed)
    nonces = {u: 0 for u in kit.USERS}
    for h in range(blocks):
        raws = []
        for _ in range(rnd.randint(0, 9)):
            u = rnd.choice(list(kit.USERS))
            raws.append(kit.raw_tx(u, nonces[u], kit.transfer(rnd.choice([x for x in kit.USERS if x != u]), 1)))
            nonces[u] += 1
        hd = Header(31337, h, 0, parent, os.urandom(20), 1_700_000_000 + h,
                    merkle_root([keccak256(r) for r in raws]), keccak256(b"state %d" % h))
        headers.append(hd)
        txs.append(raws)
        parent = hd.hash
    return headers, txs


def _proof(raws: list[bytes], i: int, height: int) -> dict:
    leaves = [keccak256(r) for r in raws]
    return {"blockNumber": height, "index": i, "tx": "0x" + raws[i].hex(),
            "proof": [[right, "0x" + sib.hex()] for right, sib in merkle_proof(leaves, i)]}


HEADERS, TXS = _chain(12, 7)
TOP = HEADERS[-1]
ANCHOR = Anchored(TOP.height, TOP.hash, TOP.state_root)
WITH_TXS = [h for h in range(1, 12) if TXS[h]]


def test_honest_chain_and_every_tx_pass() -> None:
    for start in range(12):
        check_header_chain(HEADERS[start:], start, ANCHOR)
    for h in WITH_TXS:
        for i, raw in enumerate(TXS[h]):
            out = check_tx(_proof(TXS[h], i, h), keccak256(raw), HEADERS[h])
            assert (out["type"], out["index"], out["hash"]) == ("transfer", i, "0x" + keccak256(raw).hex())


@settings(max_examples=300, deadline=None)
@given(start=st.integers(0, 11), which=st.integers(0, 11), byte=st.integers(0, HEADER_SIZE - 1),
       bit=st.integers(0, 7))
def test_any_changed_header_byte_fails(start: int, which: int, byte: int, bit: int) -> None:
    which = max(which, start)
    enc = bytearray(HEADERS[which].encode())
    enc[byte] ^= 1 << bit
    forged = HEADERS[start:]
    forged[which - start] = Header.decode(bytes(enc))
    with pytest.raises(AnchorError) as e:
        check_header_chain(forged, start, ANCHOR)
    assert e.value.reason in HEADER_REASONS


@settings(max_examples=300, deadline=None)
@given(block=st.sampled_from(WITH_TXS), data=st.data())
def test_any_changed_tx_or_proof_fails(block: int, data: st.DataObject) -> None:
    raws = TXS[block]
    i = data.draw(st.integers(0, len(raws) - 1))
    tx_hash = keccak256(raws[i])
    p = _proof(raws, i, block)
    kind = data.draw(st.sampled_from(["tx", "sibling", "direction", "drop", "add", "other_block"]))
    if kind == "tx":
        b = bytearray(raws[i])
        b[data.draw(st.integers(0, len(b) - 1))] ^= 1
        p["tx"] = "0x" + b.hex()
    elif kind in ("sibling", "direction", "drop") and p["proof"]:
        k = data.draw(st.integers(0, len(p["proof"]) - 1))
        if kind == "sibling":
            sib = bytearray(bytes.fromhex(p["proof"][k][1][2:]))
            sib[data.draw(st.integers(0, 31))] ^= 1
            p["proof"][k][1] = "0x" + sib.hex()
        elif kind == "direction":
            p["proof"][k][0] = not p["proof"][k][0]
        else:
            del p["proof"][k]
    elif kind == "other_block":
        other = data.draw(st.sampled_from([h for h in range(12) if h != block]))
        p["blockNumber"] = other
        with pytest.raises(AnchorError) as e:
            check_tx(p, tx_hash, HEADERS[other])
        assert e.value.reason == "tx_proof_invalid"
        return
    else:   # "add", or a one-tx block's empty proof: an extra step
        p["proof"].append([data.draw(st.booleans()), "0x" + os.urandom(32).hex()])
    with pytest.raises(AnchorError) as e:
        check_tx(p, tx_hash, HEADERS[block])
    assert e.value.reason in TX_REASONS
