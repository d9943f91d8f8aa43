"""``metanoia chain verify --checkpoint`` against anchored checkpoints, through honest and lying side-chain RPCs.

The liar is a real HTTP proxy in front of a real validator that rewrites one answer: a changed header, a
forged tx, a proof from another block, a wrong sibling. Each must fail with its specific reason; the
honest path must pass for real transfers, from the library and from the CLI (``--json`` last line).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from typing import Any

import pytest

from gateway.anchor.evm import EvmRpc
from gateway.anchor.registry import Registry
from gateway.anchor.verify import Verdict, verify_checkpoint
from gateway.chain_client.rpc import JsonRpcClient
from gateway.cli import main as cli_main
from gateway.validator.block import HEADER_SIZE

from .rig import ROOT, AnchorRig, Rewrite, lying_proxy


def _flip(hexstr: str, byte: int) -> str:
    b = bytearray(bytes.fromhex(hexstr[2:]))
    b[byte] ^= 0x01
    return "0x" + b.hex()


async def _verify(rig: AnchorRig, height: int | None, tx: bytes | None,
                  lies: dict[str, Rewrite] | None = None) -> Verdict:
    """Verify through a proxy to validator 1 that applies ``lies`` ({method: rewrite}) to its answers."""
    async with lying_proxy(rig.urls[1], lies) as url:
        evm = EvmRpc(rig.anvil.url)
        side = JsonRpcClient(url)
        try:
            return await verify_checkpoint(side, Registry(evm, rig.registry), height, tx)
        finally:
            await side.aclose()
            await evm.aclose()


async def _anchored_tx(rig: AnchorRig) -> tuple[bytes, int, int]:
    """A transfer in a block strictly below an anchored checkpoint: (tx hash, its block, the checkpoint)."""
    if rig.relayer is None:
        rig.start_relayer()
    (tx,) = await rig.send_transfers(1)
    height = (await rig.call(0, "chain_getTxProof", "0x" + tx.hex()))["blockNumber"]
    for _ in range(2):
        rig.wait_anchored(height)
    reg = rig.registry_client()
    try:
        cp = await reg.covering(height)
    finally:
        await reg.evm.aclose()
    assert cp is not None
    if cp.height == height:            # the lowest covering checkpoint is the tx's own block: use a later tx
        return await _anchored_tx(rig)
    return tx, height, cp.height


def test_real_tx_verifies_and_every_lie_fails_with_its_reason(rig: AnchorRig) -> None:
    async def go() -> None:
        tx, h, c = await _anchored_tx(rig)
        ok = await _verify(rig, h, tx)
        assert ok.ok, ok
        assert ok.checkpoint and ok.checkpoint["height"] == c and ok.headers_checked == c - h + 1
        assert ok.tx and ok.tx["type"] == "transfer" and ok.tx["hash"] == "0x" + tx.hex()
        by_tx = await _verify(rig, None, tx)                     # the block named by the side chain
        assert by_tx.ok and by_tx.block == h and by_tx.block_hash == ok.block_hash
        assert (await _verify(rig, c, None)).ok                  # the checkpointed block itself
        assert (await _verify(rig, h + 1, None)).ok              # a block between

        def header_lie(at: int, byte: int) -> Rewrite:
            def lie(params: list[Any], headers: list[str]) -> list[str]:
                return [_flip(x, byte) if params[0] + i == at else x for i, x in enumerate(headers)]
            return lie
        tx_root, state_root = HEADER_SIZE - 64, HEADER_SIZE - 32
        cases: list[tuple[str, int | None, dict[str, Rewrite]]] = [
            ("parent_hash_mismatch", h, {"chain_getHeaders": header_lie(h, tx_root)}),       # a changed txRoot
            ("parent_hash_mismatch", h, {"chain_getHeaders": header_lie(c - 1, 30)}),      # any header between
            ("checkpoint_hash_mismatch", h, {"chain_getHeaders": header_lie(c, state_root)}),
            ("header_height_mismatch", h, {"chain_getHeaders": header_lie(h, 15)}),        # the height field
            ("header_missing", h, {"chain_getHeaders": lambda p, r: r[:-1] if p[0] + len(r) - 1 == c else r}),
            ("bad_header", h, {"chain_getHeaders": lambda p, r: [x[:-2] for x in r]}),
            ("tx_hash_mismatch", h, {"chain_getTxProof": lambda p, r: {**r, "tx": _flip(r["tx"], 60)}}),
            ("tx_proof_invalid", h, {"chain_getTxProof": lambda p, r: {
                **r, "proof": [[s[0], _flip(s[1], 0)] for s in r["proof"]] or [[True, "0x" + "00" * 32]]}}),
            # the proof of block h presented as a proof for block h - 1
            ("tx_proof_invalid", h - 1, {"chain_getTxProof": lambda p, r: {**r, "blockNumber": h - 1}}),
            ("tx_unknown", h, {"chain_getTxProof": lambda p, r: None}),
            # no --block: the side chain names another block for the tx
            ("tx_proof_invalid", None, {"chain_getTxProof": lambda p, r: {**r, "blockNumber": h - 1}}),
            ("bad_response", None, {"chain_getTxProof": lambda p, r: {**r, "blockNumber": 0}}),
        ]
        for reason, height, lies in cases:
            v = await _verify(rig, height, tx, lies)
            assert (v.ok, v.reason) == (False, reason), (reason, v)
        # an honest RPC asked about the wrong block
        v = await _verify(rig, h - 1, tx)
        assert (v.ok, v.reason) == (False, "tx_not_in_block")
        # a header chain re-linked all the way up still cannot end in the anchored hash
        assert (await _verify(rig, h, tx, {"chain_getHeaders": _relink(h, c)})).reason == "checkpoint_hash_mismatch"
    asyncio.run(go())


def _relink(h: int, c: int) -> Rewrite:
    """Change block h's txRoot and fix every parent hash above it: a consistent forged chain."""
    from dataclasses import replace

    from gateway.validator.block import Header

    def lie(params: list[Any], raws: list[str]) -> list[str]:
        out: list[str] = []
        prev: Header | None = None
        for x in raws:
            hd = Header.decode(bytes.fromhex(x[2:]))
            if hd.height == h:
                hd = replace(hd, tx_root=b"\x42" * 32)
            elif prev is not None and hd.height > h:
                hd = replace(hd, parent_hash=prev.hash)
            out.append("0x" + hd.encode().hex())
            prev = hd
        return out
    return lie


def test_block_above_the_last_checkpoint_is_not_covered_and_cli_json(rig: AnchorRig,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    async def go() -> tuple[bytes, int, int]:
        return await _anchored_tx(rig)
    tx, h, c = asyncio.run(go())
    base = [sys.executable, "-m", "gateway.cli", "chain", "verify", "--checkpoint", "--rpc", rig.urls[2],
            "--main-rpc", rig.anvil.url, "--registry", rig.contract.address, "--json"]
    # the console script as a process once; the rest in-process (same code, no interpreter start-up)
    p = subprocess.run(base + ["--block", str(h), "--tx", "0x" + tx.hex()], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["tx"]["hash"] == "0x" + tx.hex() and out["checkpoint"]["height"] == c
    assert out["block"] == h and f"is in block {h}" in p.stdout
    genesis = rig.tmp / "genesis.json"
    assert cli_main(base[3:] + ["--block", str(h), "--genesis", str(genesis)]) == 0
    other = rig.tmp / "other-genesis.json"
    other.write_text(genesis.read_text().replace('"net-test"', '"another-chain"'))
    assert cli_main(base[3:] + ["--block", str(h), "--genesis", str(other)]) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["ok"], out["reason"]) == (False, "wrong_chain")
    assert cli_main(base[3:] + ["--tx", tx.hex()]) == 0
    stdout = capsys.readouterr().out
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["ok"] and out["block"] == h and f"is in block {h}" in stdout
    # a final block above the latest checkpoint: pause the relayer so nothing covers it meanwhile
    assert rig.relayer is not None
    rig.relayer.send_signal(signal.SIGSTOP)
    try:
        # a submission already sent still lands: stay above every height the relayer has journalled
        latest = rig.latest()
        floor = max([latest] + [r[0] for r in rig.journal_rows()])

        async def final_above() -> int:
            while (f := await rig.call(2, "chain_finalizedNumber")) <= floor:
                await asyncio.sleep(0.1)
            return f
        f = asyncio.run(final_above())
        assert cli_main(base[3:] + ["--block", str(f)]) == 1
        stdout = capsys.readouterr().out
        out = json.loads(stdout.strip().splitlines()[-1])
        assert (out["ok"], out["reason"]) == (False, "no_checkpoint") and "latest anchored height" in out["detail"]
        assert "NOT VERIFIED: no_checkpoint" in stdout
    finally:
        rig.relayer.send_signal(signal.SIGCONT)
    for args, err in ((["--block", "0"], "genesis"), ([], "--block HEIGHT, --tx TXHASH or both"),
                      (["--tx", "0x1234"], "32-byte")):
        assert cli_main(base[3:] + args) == 2
        assert err in capsys.readouterr().err


def test_checkpoints_lists_what_is_anchored(rig: AnchorRig, capsys: pytest.CaptureFixture[str]) -> None:
    if rig.relayer is None:
        rig.start_relayer()
    rig.wait_anchored(rig.latest())
    args = ["chain", "checkpoints", "--main-rpc", rig.anvil.url, "--registry", rig.contract.address,
            "--rpc", rig.urls[0], "--last", "3", "--json"]
    assert cli_main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    events = [e for e in rig.events() if e["height"] <= out["checkpoints"][-1]["height"]]   # the relayer goes on
    assert [c["height"] for c in out["checkpoints"]] == [e["height"] for e in events][-3:]
    assert [c["block_hash"] for c in out["checkpoints"]] == ["0x" + e["blockHash"].hex() for e in events][-3:]
    assert out["genesis_hash"] == "0x" + rig.genesis.hash.hex() and out["authorities"] == 4
    assert out["side_final"] >= out["latest"] and out["unanchored_blocks"] == out["side_final"] - out["latest"]
    assert cli_main(["chain", "checkpoints", "--main-rpc", "http://127.0.0.1:9/", "--registry",
                     rig.contract.address]) == 1
    assert "main_unavailable" in capsys.readouterr().err


def test_headers_are_fetched_in_pages(rig: AnchorRig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.anchor.verify.MAX_HEADERS", 2)

    async def go() -> tuple[Verdict, int, int]:
        tx, h, c = await _anchored_tx(rig)
        return await _verify(rig, h, tx), h, c
    v, h, c = asyncio.run(go())
    assert v.ok and v.headers_checked == c - h + 1 >= 2, v
