"""The genesis file: a JSON document that defines a chain, and its loader.

::

    {
      "chain_id": 31337,
      "name": "metanoia-dev",
      "verifying_contract": "0x...",     # EIP-712 domain of orders on this chain
      "block_time_ms": 1000,
      "interval_seconds": 900,           # delivery interval length (settle only after it ends)
      "settle_timeout": 604800,          # optional (default 7 days): reclaim once the interval
                                         # ended this long ago (docs/chain.md, "Reclaim")
      "timestamp": 1700000000,           # genesis time, unix s
      "authorities": ["0x...", ...],     # block signers, in proposer order
      "complex_authority": "0x...",      # the one address that may settle
      "balances": {"0x...": "1000000000000000000000", ...}   # NOIA smallest units, decimal strings
    }

The genesis hash (keccak256 of the canonical JSON: sorted keys, no spaces,
lower-case addresses) is the parent hash of block 0, so the whole
configuration is committed to by every block hash. ``settle_timeout`` came
later: a file without it means the default, and its canonical JSON (hence its
hash, hence every block hash of a running chain) stays what it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .block import EMPTY_ROOT, Header
from .crypto import ZERO_ADDRESS, keccak256, parse_address
from .errors import GenesisError
from .order import U64_MAX, U256_MAX, Domain
from .state import DictState, Overlay, accumulate, put_account, state_root

BAD_GENESIS = "bad_genesis"
_KEYS = {"chain_id", "name", "verifying_contract", "block_time_ms", "interval_seconds", "timestamp",
         "authorities", "complex_authority", "balances"}
_OPTIONAL_KEYS = {"settle_timeout"}
DEFAULT_SETTLE_TIMEOUT = 7 * 86_400
MAX_SETTLE_TIMEOUT = 10 * 365 * 86_400


@dataclass(frozen=True)
class ChainParams:
    """What execution needs to know about the chain (from the genesis)."""
    domain: Domain
    authorities: tuple[bytes, ...]
    complex_authority: bytes
    interval_seconds: int
    block_time_ms: int
    settle_timeout: int = DEFAULT_SETTLE_TIMEOUT  # seconds after an interval's end before its fills can be reclaimed

    @property
    def chain_id(self) -> int:
        return self.domain.chain_id

    def reclaim_deadline(self, interval_start: int) -> int:
        """The first block time at which a fill delivering in ``interval_start`` may be reclaimed:
        the interval's end plus the settle timeout (the one definition; execute.py and the wallet use it)."""
        return interval_start + self.interval_seconds + self.settle_timeout


@dataclass(frozen=True)
class Genesis:
    chain_id: int
    name: str
    verifying_contract: bytes
    block_time_ms: int
    interval_seconds: int
    timestamp: int
    authorities: tuple[bytes, ...]
    complex_authority: bytes
    balances: tuple[tuple[bytes, int], ...]
    settle_timeout: int | None = None  # None: not in the file (the default applies, the hash is unchanged)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"chain_id": self.chain_id, "name": self.name,
                "verifying_contract": "0x" + self.verifying_contract.hex(),
                "block_time_ms": self.block_time_ms, "interval_seconds": self.interval_seconds,
                "timestamp": self.timestamp, "authorities": ["0x" + a.hex() for a in self.authorities],
                "complex_authority": "0x" + self.complex_authority.hex(),
                "balances": {"0x" + a.hex(): str(v) for a, v in self.balances}}
        if self.settle_timeout is not None:
            doc["settle_timeout"] = self.settle_timeout
        return doc

    def canonical(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def hash(self) -> bytes:
        return keccak256(self.canonical())

    def params(self) -> ChainParams:
        return ChainParams(Domain(self.chain_id, self.verifying_contract), self.authorities,
                           self.complex_authority, self.interval_seconds, self.block_time_ms,
                           DEFAULT_SETTLE_TIMEOUT if self.settle_timeout is None else self.settle_timeout)

    def state(self) -> DictState:
        ov = Overlay(DictState())
        for addr, amount in self.balances:
            put_account(ov, addr, amount, 0)
        return DictState({k: v for k, v in ov.writes.items() if v is not None})

    def header(self) -> Header:
        """Block 0: no transactions, the initial state's root, parent = the genesis hash."""
        root = state_root(accumulate(self.state().data.items()))
        return Header(self.chain_id, 0, 0, self.hash, ZERO_ADDRESS, self.timestamp, EMPTY_ROOT, root)


def _int(doc: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = doc.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise GenesisError(BAD_GENESIS, f"{key} must be an integer in {lo}..{hi}")
    return v


def _addr(v: Any, what: str) -> bytes:
    try:
        a = parse_address(v)
    except ValueError as exc:
        raise GenesisError(BAD_GENESIS, f"{what}: {exc}") from None
    if a == ZERO_ADDRESS:
        raise GenesisError(BAD_GENESIS, f"{what} is the zero address")
    return a


def parse_genesis(doc: Any) -> Genesis:
    if not isinstance(doc, dict):
        raise GenesisError(BAD_GENESIS, "genesis must be a JSON object")
    unknown = set(doc) - _KEYS - _OPTIONAL_KEYS
    if unknown:
        raise GenesisError(BAD_GENESIS, f"unknown keys {sorted(unknown)}")
    missing = _KEYS - set(doc)
    if missing:
        raise GenesisError(BAD_GENESIS, f"missing keys {sorted(missing)}")
    if not isinstance(doc["name"], str):
        raise GenesisError(BAD_GENESIS, "name must be a string")
    auths = doc["authorities"]
    if not isinstance(auths, list) or not auths:
        raise GenesisError(BAD_GENESIS, "authorities must be a non-empty list")
    authorities = tuple(_addr(a, "authority") for a in auths)
    if len(set(authorities)) != len(authorities):
        raise GenesisError(BAD_GENESIS, "duplicate authority")
    bal = doc["balances"]
    if not isinstance(bal, dict):
        raise GenesisError(BAD_GENESIS, "balances must be an object")
    balances: dict[bytes, int] = {}
    for k, v in bal.items():
        a = _addr(k, "balance holder")
        if a in balances:
            raise GenesisError(BAD_GENESIS, f"duplicate balance holder {k}")
        if not isinstance(v, str) or not v.isdigit():
            raise GenesisError(BAD_GENESIS, f"balance of {k} must be a decimal string")
        balances[a] = int(v)
    if sum(balances.values()) > U256_MAX:
        raise GenesisError(BAD_GENESIS, "total supply exceeds uint256")
    try:
        vc = parse_address(doc["verifying_contract"])
    except ValueError as exc:
        raise GenesisError(BAD_GENESIS, f"verifying_contract: {exc}") from None
    return Genesis(
        chain_id=_int(doc, "chain_id", 1, U64_MAX), name=doc["name"], verifying_contract=vc,
        block_time_ms=_int(doc, "block_time_ms", 1, 3_600_000),
        interval_seconds=_int(doc, "interval_seconds", 1, 86_400),
        timestamp=_int(doc, "timestamp", 0, U64_MAX), authorities=authorities,
        complex_authority=_addr(doc["complex_authority"], "complex_authority"),
        balances=tuple(sorted(balances.items())),
        settle_timeout=_int(doc, "settle_timeout", 1, MAX_SETTLE_TIMEOUT) if "settle_timeout" in doc else None)


def load_genesis(path: str | Path) -> Genesis:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GenesisError(BAD_GENESIS, f"{path}: {exc}") from None
    return parse_genesis(doc)
