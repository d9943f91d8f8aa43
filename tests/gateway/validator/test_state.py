"""The state root's element function, pinned, and its fast paths agreeing with the plain definition."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from blake3 import blake3

from gateway.validator import state
from gateway.validator.errors import StorageError
from gateway.validator.state import ACC_MASK, DictState, Overlay, accumulate, element, state_root, update_accumulator
from gateway.validator.storage import SqliteStore

from .kit import GENESIS


def test_an_element_is_the_blake3_xof_of_the_tagged_pair() -> None:
    k, v = b"A" + bytes(range(20)), bytes(range(40))
    want = blake3(b"metanoia/state/v2" + bytes([len(k)]) + k + v).digest(512)
    assert element(k, v) == int.from_bytes(want, "little")
    # a fixed vector, so that a change of the function (every root changes with it) is seen here first
    assert hashlib.sha256(want).hexdigest()[:16] == "d39d1df520f64c76"
    assert state_root(element(k, v)).hex()[:16] == "f579aa07256bff53"


def test_the_accumulator_update_with_known_old_values_equals_the_one_reading_them() -> None:
    base = DictState({b"A" + bytes([i]) * 20: bytes([i]) * 40 for i in range(5)})
    acc = accumulate(base.data.items())
    ov = Overlay(base)
    assert ov.get(b"A" + b"\x01" * 20) == b"\x01" * 40 and ov.get(b"E" + b"\x09" * 32) is None
    ov.put(b"A" + b"\x01" * 20, b"\x07" * 40)
    ov.delete(b"A" + b"\x02" * 20)
    ov.put(b"E" + b"\x09" * 32, b"e" * 144)
    ov.put(b"A" + b"\x03" * 20, b"\x03" * 40)          # unchanged
    before = dict(ov.read)
    new = update_accumulator(acc, base, ov.writes, before)
    assert new == update_accumulator(acc, base, ov.writes)
    assert before == {k: base.get(k) for k in ov.writes}   # the unknown ones were read and added
    after = dict(base.data)
    after.pop(b"A" + b"\x02" * 20)
    after.update({k: v for k, v in ov.writes.items() if v is not None})
    assert new == accumulate(after.items()) == (accumulate(after.items()) & ACC_MASK)


def test_a_database_written_with_another_state_root_function_is_refused(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def v1(key: bytes, value: bytes) -> int:
        msg = b"metanoia/state/v1" + bytes([len(key)]) + key + value
        return int.from_bytes(hashlib.shake_256(msg).digest(512), "little")

    with monkeypatch.context() as m:
        m.setattr(state, "element", v1)
        SqliteStore(tmp_path / "c.db", GENESIS).close()
        SqliteStore(tmp_path / "c.db", GENESIS).close()     # it reopens under the function it was written with
    with pytest.raises(StorageError) as ei:
        SqliteStore(tmp_path / "c.db", GENESIS)
    assert ei.value.reason == "genesis_mismatch" and "state-root function" in str(ei.value)
