"""The deployment record: where a NoiaToken + Exchange deployment is, and the ABIs to call it with.

JSON, ``"format": "metanoia-evm-deployment/1"``, written durably (gateway/fsutil.py) by
``metanoia chain deploy`` (gateway/evm/deploy.py) and read by the chain client's EVM backend, which
imports only this module (no web3 at run time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.fsutil import replace_durably
from gateway.validator.crypto import parse_address, to_checksum

FORMAT = "metanoia-evm-deployment/1"


class DeployError(RuntimeError):
    pass


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    token: bytes
    exchange: bytes
    complex_authority: bytes
    interval_seconds: int
    settle_timeout: int | None     # None: an Exchange without reclaim
    block: int                     # the exchange's creation block
    token_abi: list[dict[str, Any]]
    exchange_abi: list[dict[str, Any]]
    solc: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "chain_id": self.chain_id, "token": to_checksum(self.token),
                "exchange": to_checksum(self.exchange), "complex_authority": to_checksum(self.complex_authority),
                "interval_seconds": self.interval_seconds, "settle_timeout": self.settle_timeout,
                "block": self.block, "solc": self.solc,
                "abi": {"NoiaToken": self.token_abi, "Exchange": self.exchange_abi}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Deployment:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DeployError(f"not a {FORMAT} record")
        try:
            st = d.get("settle_timeout")
            return cls(int(d["chain_id"]), parse_address(d["token"]), parse_address(d["exchange"]),
                       parse_address(d["complex_authority"]), int(d["interval_seconds"]),
                       None if st is None else int(st), int(d["block"]), list(d["abi"]["NoiaToken"]),
                       list(d["abi"]["Exchange"]), str(d.get("solc", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise DeployError(f"bad deployment record: {exc}") from None


def write_record(path: str | Path, dep: Deployment) -> None:
    replace_durably(path, (json.dumps(dep.to_json(), indent=1) + "\n").encode())


def read_record(path: str | Path) -> Deployment:
    return Deployment.from_json(json.loads(Path(path).read_text()))
