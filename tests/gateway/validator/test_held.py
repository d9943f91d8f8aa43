"""held.py: proposals kept on disk before a precommit; what is above the durable head comes back
at load, the rest is deleted, and a write that finishes after its height was committed leaves
no file behind."""

from __future__ import annotations

import asyncio

from gateway.validator.held import HeldProposals


def test_keep_load_and_prune(tmp_path):
    async def main() -> None:
        held = HeldProposals(tmp_path / "held")
        await held.keep(5, 0, b"\xaa" * 32, b"five-zero")
        await held.keep(5, 1, b"\xbb" * 32, b"five-one")
        await held.keep(6, 0, b"\xcc" * 32, b"six")
        assert held.keep(6, 0, b"\xcc" * 32, b"six").done()          # idempotent
        assert len(list((tmp_path / "held").glob("*.prop"))) == 3
        held.prune(5)
        assert [p.name[:12] for p in (tmp_path / "held").glob("*.prop")] == ["000000000006"]

        slow = held.keep(7, 0, b"\xdd" * 32, b"x" * 4_000_000)      # still being written ...
        held.prune(7)                                                # ... when height 7 is committed
        await slow
        await asyncio.sleep(0)
        assert not list((tmp_path / "held").glob("000000000007-*"))
    asyncio.run(main())
    (tmp_path / "held" / ".torn.prop.1234.tmp").write_bytes(b"half")
    (tmp_path / "held" / f"{3:012d}-000000-{'ee' * 8}.prop").write_bytes(b"old")
    (tmp_path / "held" / f"{9:012d}-000002-{'ff' * 8}.prop").write_bytes(b"nine-two")
    (tmp_path / "held" / f"{9:012d}-000000-{'11' * 8}.prop").write_bytes(b"nine-zero")
    again = HeldProposals(tmp_path / "held")
    assert again.load(above=6) == {9: [b"nine-zero", b"nine-two"]}   # per height, in round order
    assert sorted(p.name[:12] for p in (tmp_path / "held").iterdir()) == ["000000000009", "000000000009"]
