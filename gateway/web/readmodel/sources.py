"""Where one complex's data lives, and the handles the read model opens on it.

The paths are the ones the gateway's commands take (``--db``, ``--wallet-dir``,
``--genesis``, ``--rpc``); ``Sources.demo_layout`` gives the layout ``metanoia demo``
and ``hil/market_rig.py`` write (``gateway.db`` at the top, the market's wallet,
fill outbox and chain under ``market/``).

``Complex`` holds what is expensive or secret to open, once per process: the
wallet (its master secret is stretched with scrypt, and policies are MAC-checked
with it) and the chain's EIP-712 domain. The gateway database is opened per call
(a SQLite open costs well under a millisecond); the read model's queries are
short and run on a normal WAL connection beside the ingest and the settler.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import db as gdb

if TYPE_CHECKING:
    from gateway.market.wallet import Wallet
    from gateway.validator.order import Domain

HOUSEHOLD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")   # the wallet's and the registry's rule
NOIA_UNITS = 10**18


class ReadModelError(Exception):
    """A request the read model refuses; ``reason`` is a stable code for the page and the counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def check_household(household: object) -> str:
    if not isinstance(household, str) or not HOUSEHOLD_RE.match(household):
        raise ReadModelError("bad_household", "a household id is 1-64 of [A-Za-z0-9._-]")
    return household


@dataclass(frozen=True)
class Sources:
    """Where a complex's data lives. Defaults match the demo (grid ``demo``, KEPCO low voltage)."""

    grid: str
    gateway_db: Path                              # readings, devices, intervals, trades, settlement, RECs, VPP
    wallet_dir: Path | None = None                # household keys (addresses), policies, homeowner orders
    outbox_dbs: tuple[Path, ...] = ()             # chain client outboxes besides the gateway db (fills)
    validators: tuple[str, ...] = ()              # JSON-RPC URLs of the bundled chain's validators
    genesis: Path | None = None                   # the chain's genesis: EIP-712 domain for manual orders
    tariff: str = "residential-low"               # KEPCO table the bills use (gateway/market/tariffs)
    interval_s: int = 900
    won_per_noia: int = 1                         # the Oracle's default: 1 NOIA = 1 won
    rpc_timeout_s: float = 1.0                    # per validator call: a down validator costs this, once
    stale_s: int = 600                            # no reading for this long: offline whatever the broker says

    def __post_init__(self) -> None:
        if not HOUSEHOLD_RE.match(self.grid):
            raise ReadModelError("bad_grid", "a grid id is 1-64 of [A-Za-z0-9._-]")
        if self.interval_s <= 0 or 86400 % self.interval_s:
            raise ReadModelError("bad_interval", "the interval divides a day")
        for url in self.validators:
            if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+(/\S*)?$", url):
                raise ReadModelError("bad_validator_url", f"not an http(s) URL: {str(url)[:80]!r}")
        if not 0 < self.rpc_timeout_s <= 30:
            raise ReadModelError("bad_timeout", "rpc_timeout_s in (0, 30]")

    @classmethod
    def demo_layout(cls, folder: str | Path, grid: str = "demo", *, validators: tuple[str, ...] = (),
                    **kw: Any) -> Sources:
        """The layout of ``metanoia demo`` / ``hil.market_rig.Market`` under ``folder``."""
        f = Path(folder)
        written = f / "settle" / "genesis.json"      # Market.settle_files
        genesis = kw.pop("genesis", None) or (written if written.exists() else None)
        return cls(grid=grid, gateway_db=f / "gateway.db", wallet_dir=f / "market" / "wallet",
                   outbox_dbs=(f / "market" / "market-outbox.db",), validators=validators, genesis=genesis, **kw)

    @property
    def all_outboxes(self) -> tuple[Path, ...]:
        """Every database with a ``chain_outbox`` table: the gateway's (settlements) first."""
        return (self.gateway_db, *(p for p in self.outbox_dbs if p != self.gateway_db))


@dataclass
class Complex:
    """A complex opened for the pages: its sources, the wallet (optional), the chain domain (optional).

    ``counters`` counts refused requests by reason (bad input, unknown household,
    spend refused, ...), for the operator and the logs."""

    sources: Sources
    wallet: Wallet | None = None
    domain: Domain | None = None
    counters: Counter[str] = field(default_factory=Counter)

    @classmethod
    def open(cls, sources: Sources, master_secret: bytes | None = None, **wallet_kw: Any) -> Complex:
        """Open the wallet with the operator's master secret (if given) and read the genesis (if any)."""
        wallet = domain = None
        if master_secret is not None and sources.wallet_dir is not None:
            from gateway.market.wallet import Wallet
            wallet = Wallet(sources.wallet_dir, master_secret, **wallet_kw)
        if sources.genesis is not None and sources.genesis.exists():
            from gateway.validator.genesis import load_genesis
            domain = load_genesis(sources.genesis).params().domain
        return cls(sources, wallet, domain)

    def refuse(self, reason: str, detail: str = "") -> ReadModelError:
        """Count a refusal and return the error to raise."""
        self.counters[reason] += 1
        return ReadModelError(reason, detail)

    @contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        """The gateway database (never created here: a wrong path is an error, not an empty complex)."""
        if not self.sources.gateway_db.exists():
            raise self.refuse("no_database", f"{self.sources.gateway_db} does not exist")
        conn = gdb.connect(self.sources.gateway_db)
        try:
            yield conn
        finally:
            conn.close()


def tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def household_address(sources: Sources, household: str) -> bytes | None:
    """The household's chain address from its keystore file (public: no secret needed)."""
    from gateway.market import keystore
    if sources.wallet_dir is None:
        return None
    path = sources.wallet_dir / "keys" / f"{check_household(household)}.json"
    try:
        return keystore.address_in(keystore.parse(path.read_bytes()))
    except (OSError, ValueError, keystore.KeystoreError):
        return None
