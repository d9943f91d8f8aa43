"""The genesis file: loader, canonical hash, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.validator.errors import GenesisError
from gateway.validator.genesis import load_genesis, parse_genesis
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
