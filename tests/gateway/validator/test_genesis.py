"""The genesis file: loader, canonical hash, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.validator.errors import GenesisError
from gateway.validator.crypto import keccak256
from gateway.validator.genesis import DEFAULT_SETTLE_TIMEOUT, load_genesis, parse_genesis
from gateway.validator.state import get_account, total_money

from .kit import START_BALANCE, USERS, addr, genesis_doc


def test_load_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "genesis.json"
    p.write_text(json.dumps(genesis_doc(), indent=2))
    g = load_genesis(p)
    assert parse_genesis(g.to_json()) == g
    assert g.hash == parse_genesis(json.loads(json.dumps(genesis_doc()))).hash
    st = g.state()
    assert get_account(st, addr(2)).balance == START_BALANCE
    assert total_money(st.data.items()) == len(USERS) * START_BALANCE
    assert g.params().domain.chain_id == g.chain_id


@pytest.mark.parametrize("edit", [
    lambda d: d.pop("chain_id"),
    lambda d: d.update(chain_id=0),
    lambda d: d.update(chain_id="1"),
    lambda d: d.update(extra=1),
    lambda d: d.update(authorities=[]),
    lambda d: d.update(authorities=[d["authorities"][0]] * 2),
    lambda d: d.update(authorities=["0x" + "00" * 20]),
    lambda d: d.update(complex_authority="0x1234"),
    lambda d: d.update(balances={"0x" + "11" * 20: 5}),
    lambda d: d.update(balances={"0x" + "11" * 20: "-5"}),
    lambda d: d.update(balances={"0x" + "11" * 20: str(2**256)}),
    lambda d: d.update(verifying_contract="nope"),
    lambda d: d.update(interval_seconds=0),
    lambda d: d.update(settle_timeout=0),
    lambda d: d.update(settle_timeout=-1),
    lambda d: d.update(settle_timeout=True),
    lambda d: d.update(settle_timeout="604800"),
    lambda d: d.update(settle_timeout=10**12),
])
def test_bad_genesis_is_refused(edit) -> None:
    d = genesis_doc()
    edit(d)
    with pytest.raises(GenesisError) as ei:
        parse_genesis(d)
    assert ei.value.reason == "bad_genesis"


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text("{nope")
    with pytest.raises(GenesisError):
        load_genesis(tmp_path / "g.json")
    with pytest.raises(GenesisError):
        load_genesis(tmp_path / "missing.json")


def test_settle_timeout_is_optional_and_an_old_file_keeps_its_hash() -> None:
    """A genesis written before reclaim existed loads with the default timeout, and its hash (the parent
    of block 0, hence every block hash of a running chain) is the hash of its canonical JSON as it was."""
    old = genesis_doc()
    assert "settle_timeout" not in old
    g = parse_genesis(old)
    assert g.settle_timeout is None and g.params().settle_timeout == DEFAULT_SETTLE_TIMEOUT == 604_800
    assert g.hash == keccak256(json.dumps(old, sort_keys=True, separators=(",", ":")).encode())
    assert "settle_timeout" not in g.to_json()
    new = parse_genesis({**old, "settle_timeout": 3600})
    assert new.params().settle_timeout == 3600 and new.to_json()["settle_timeout"] == 3600
    assert parse_genesis(new.to_json()) == new and new.hash != g.hash  # a chain parameter: in the hash
    explicit = parse_genesis({**old, "settle_timeout": DEFAULT_SETTLE_TIMEOUT})
    assert explicit.params() == g.params()
