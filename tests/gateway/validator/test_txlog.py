"""The intake log: what it acknowledged is on disk, a torn tail is dropped, compaction keeps later appends."""

from __future__ import annotations

import asyncio

from gateway.validator.txlog import TxLog, encode_records


def test_appends_survive_reopen_and_a_torn_tail_is_dropped(tmp_path):
    async def main() -> None:
        lg = TxLog(tmp_path / "intake.log")
        await asyncio.gather(lg.append([b"a" * 120, b"b" * 130]), lg.append([b"c" * 140]))
        assert lg.fsyncs == 1                       # concurrent appends share one fsync
        lg.close()
    asyncio.run(main())
    with open(tmp_path / "intake.log", "ab") as f:   # a crash in the middle of the next record
        f.write(encode_records([b"d" * 150])[:60])
    lg = TxLog(tmp_path / "intake.log")
    assert lg.load() == [b"a" * 120, b"b" * 130, b"c" * 140]
    assert (tmp_path / "intake.log").stat().st_size == len(encode_records([b"a" * 120, b"b" * 130, b"c" * 140]))
    lg.close()


def test_compaction_keeps_the_pending_set_and_appends_queued_after_it(tmp_path):
    async def main() -> None:
        lg = TxLog(tmp_path / "intake.log")
        await lg.append([b"x" * 200, b"y" * 200])
        await asyncio.gather(lg.compact([b"y" * 200]), lg.append([b"z" * 200]))
        lg.close()
    asyncio.run(main())
    lg = TxLog(tmp_path / "intake.log")
    assert lg.load() == [b"y" * 200, b"z" * 200]
    lg.close()
