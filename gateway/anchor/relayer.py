"""The anchoring relayer: side-chain checkpoints, signed by > 2/3 of the authorities, into the registry.

Each round (``step``):

1. follow any journalled submission still ``signed`` (send its bytes again, wait for the receipt);
   nothing new starts while one is open;
2. put anchored checkpoints not yet recorded on the side chain into the chain client's outbox as a
   ``checkpoint`` transaction (only with an authority key: the side chain's rule for that type);
3. read the registry's latest height L and the highest height F final on >= threshold validators;
   when F >= L + every (or, with ``max_age``, F's block time is that much past L's): collect the
   signatures for F, check the submission with ``eth_estimateGas`` (the registry's own reason on
   refusal), sign it, journal it (fsync), send it, follow it.

Exactly-once and crash safety come from the journal (journal.py) and the registry's monotonic height.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.chain_client import BundledBackend, ClientConfig, Intent, Outbox, OutboxChainClient, StaticKeyring
from gateway.chain_client.errors import ChainClientError
from gateway.chain_client.evm_codec import sign_call
from gateway.chain_client.rpc import JsonRpcClient
from gateway.validator.crypto import address_of, private_key
from gateway.validator.tx import Checkpoint as CheckpointTx

from .collect import Validators
from .errors import WRONG_CHAIN, AnchorError
from .evm import GAS_MARGIN, EvmReceipt, EvmRpc, Reverted
from .journal import ANCHORED, REVERTED, SIDE_SUBMITTED, SIGNED, SUPERSEDED, Entry, Journal
from .registry import Registry, submit_calldata

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayerConfig:
    side_urls: tuple[str, ...]
    main_url: str
    registry: bytes
    key: bytes                         # main-chain account secret (pays the gas; any account will do)
    journal: Path
    every: int = 10                    # anchor when this many more blocks are final than the last checkpoint
    poll: float = 1.0                  # seconds between rounds
    side_key: bytes | None = None      # an authority's secret: also record anchored checkpoints on the side chain
    receipt_wait: float = 30.0         # follow a submission this long per round before starting the next round
    resend_every: float = 10.0         # send the journalled bytes again while no receipt
    rpc_timeout: float = 5.0
    confirmations: int = 1             # main-chain blocks (the receipt's included) before a checkpoint counts
    max_age: float | None = None       # also anchor once the last checkpoint is this many seconds of side-chain
                                       # block time old, even with fewer than ``every`` new blocks


@dataclass
class Relayer:
    cfg: RelayerConfig
    counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sender = address_of(private_key(self.cfg.key))
        self.evm = EvmRpc(self.cfg.main_url, timeout=self.cfg.rpc_timeout)
        self.registry = Registry(self.evm, self.cfg.registry)
        self.validators = Validators(list(self.cfg.side_urls), timeout=self.cfg.rpc_timeout)
        self.journal = Journal(self.cfg.journal)
        self.side: OutboxChainClient | None = None
        self.side_outbox: Outbox | None = None
        self.side_url = ""
        self.side_key = private_key(self.cfg.side_key) if self.cfg.side_key is not None else None
        self.started = False

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    async def start(self) -> None:
        """Read the registry's fixed facts: the side chain it anchors (genesis hash) and its authorities."""
        self.chain_id = await self.evm.chain_id()
        self.domain = await self.registry.domain()
        self.genesis_hash = await self.registry.genesis_hash()
        self.authorities = await self.registry.authorities()
        if not self.authorities:
            raise AnchorError(WRONG_CHAIN, f"0x{self.cfg.registry.hex()} lists no authorities: not a registry")
        self.started = True
        log.info("anchoring to registry 0x%s on chain %d: side genesis 0x%s, %d authorities, every %d blocks",
                 self.cfg.registry.hex(), self.chain_id, self.genesis_hash.hex(), len(self.authorities),
                 self.cfg.every)

    async def aclose(self) -> None:
        if self.side is not None:
            await self.side.aclose()
        if self.side_outbox is not None:
            self.side_outbox.close()
        await self.validators.aclose()
        await self.evm.aclose()
        self.journal.close()

    # ---- one round -------------------------------------------------------------------------

    async def step(self) -> str:
        """One round; returns what it did (``pending``, ``waiting``, ``anchored:H``, ``refused:REASON``...)."""
        if not self.started:
            await self.start()
        for e in self.journal.pending(self.cfg.registry):
            if not await self._follow(e):
                return "pending"
        await self._record_on_side()
        latest = await self.registry.latest()
        target = await self.validators.anchorable_height(len(self.authorities))
        if target <= latest.height or (target < latest.height + self.cfg.every
                                       and not await self._old_enough(latest.height, target)):
            return "waiting"
        try:
            entry = await self.prepare(target)
        except Reverted as exc:   # e.g. another relayer anchored this height or a higher one meanwhile
            self.count(f"refused_{exc.reason}")
            log.warning("checkpoint %d refused by the registry: %s", target, exc)
            return f"refused:{exc.reason}"
        if not await self._follow(entry):
            return "pending"
        await self._record_on_side()
        return f"anchored:{entry.height}"

    async def prepare(self, height: int) -> Entry:
        """Signatures for ``height``, the registry's dry run (``Reverted`` with its reason), the signed main-chain
        tx, journalled durably. Nothing is sent: ``_follow`` sends the journalled bytes."""
        try:
            col = await self.validators.collect(height, self.domain, self.genesis_hash, self.authorities)
        finally:
            for reason in self.validators.last_refused.values():
                self.count(f"signature_refused_{reason}")
        data = submit_calldata(col.checkpoint, list(col.signatures))
        gas = await self.evm.estimate_gas(self.sender, self.cfg.registry, data)
        nonce = await self.evm.nonce(self.sender, "pending")
        raw, tx_hash = sign_call(self.cfg.key, chain_id=self.chain_id, nonce=nonce, to=self.cfg.registry, data=data,
                                 gas=int(gas * GAS_MARGIN), fees=await self.evm.fees())
        cp = col.checkpoint
        entry = Entry(self.cfg.registry, cp.height, cp.block_hash, cp.state_root, len(col.signatures), self.chain_id,
                      self.sender, nonce, tx_hash, raw, SIGNED, None, None, None)
        self.journal.record(entry)          # on disk before the bytes leave: a restart sends these same bytes
        self.count("submitted")
        log.info("checkpoint %d (0x%s) with %d signatures: main tx 0x%s nonce %d", cp.height, cp.block_hash.hex(),
                 len(col.signatures), tx_hash.hex(), nonce)
        return entry

    async def _old_enough(self, anchored: int, target: int) -> bool:
        if self.cfg.max_age is None:
            return False
        t0, t1 = await self.validators.block_time(anchored), await self.validators.block_time(target)
        return t0 is not None and t1 is not None and t1 - t0 >= self.cfg.max_age

    async def _follow(self, e: Entry) -> bool:
        """Drive a journalled submission to a receipt; False if it is still open after ``receipt_wait``."""
        deadline = time.monotonic() + self.cfg.receipt_wait
        next_send = 0.0
        while True:
            r = await self.evm.receipt(e.tx_hash)
            now = time.monotonic()
            if r is not None:
                if await self.evm.block_number() - r.block_number + 1 >= self.cfg.confirmations:
                    await self._settle(e, r)
                    return True
                # not deep enough yet; if a reorg drops it, it has no receipt again and is sent again
            elif await self.evm.nonce(e.sender, "latest") > e.nonce and await self.evm.receipt(e.tx_hash) is None:
                self.journal.settle(e.registry, e.height, SUPERSEDED, reason="nonce_used_elsewhere")
                self.count("superseded")
                log.error("checkpoint %d: nonce %d was used by another transaction of 0x%s", e.height, e.nonce,
                          e.sender.hex())
                return True
            elif now >= next_send:
                try:
                    await self.evm.send_raw(e.raw_tx)
                except ChainClientError as exc:   # a refusal other than "already known": keep following
                    self.count("send_refused")       # e.g. the account cannot pay: fund it, the bytes go again
                    log.warning("checkpoint %d: main chain refused the tx (it stays journalled): %s", e.height, exc)
                next_send = now + self.cfg.resend_every
            if now >= deadline:
                return False
            await asyncio.sleep(0.2)

    async def _settle(self, e: Entry, r: EvmReceipt) -> None:
        if r.status == 1:
            self.journal.settle(e.registry, e.height, ANCHORED, main_block=r.block_number)
            self.count("anchored")
            log.info("checkpoint %d anchored in main block %d", e.height, r.block_number)
        else:
            latest = await self.registry.latest()
            reason = "checkpoint_not_monotonic" if latest.height >= e.height else "reverted"
            self.journal.settle(e.registry, e.height, REVERTED, reason=reason, main_block=r.block_number)
            self.count(f"reverted_{reason}")
            log.warning("checkpoint %d reverted on the main chain: %s", e.height, reason)

    # ---- the side-chain record ---------------------------------------------------------------

    async def _side_client(self) -> OutboxChainClient | None:
        """The chain client (outbox in the journal's file) on a live validator; moved to another live one when
        its validator stops answering while the outbox still has checkpoint txs to see final."""
        key = self.side_key
        if key is None:
            return None
        if address_of(key) not in self.authorities:
            log.warning("--side-key 0x%s is not an authority: anchored checkpoints are not recorded on the "
                        "side chain", address_of(key).hex())
            self.count("side_key_not_authority")
            self.side_key = None
            return None
        if self.side is not None and await self._answers(self.side_url):
            return self.side
        url, chain_id = await self._live_side()
        if self.side is not None:
            log.warning("side chain record: %s does not answer, moving to %s", self.side_url, url)
            self.count("side_failover")
            await self.side.aclose()      # the outbox (rows, nonces, signed bytes) stays; the new client resumes it
        # Only fills use the domain's contract; a checkpoint tx is signed over its body alone.
        backend = BundledBackend(url, chain_id=chain_id, verifying_contract=b"\x00" * 20)
        if self.side_outbox is None:
            self.side_outbox = Outbox(self.cfg.journal, backend.name)
        self.side = OutboxChainClient(backend, self.side_outbox, StaticKeyring([key]),
                                      config=ClientConfig(poll_interval=0.5))
        self.side_url = url
        self.side.start()
        return self.side

    async def _answers(self, url: str) -> bool:
        try:
            async with JsonRpcClient(url, timeout=self.cfg.rpc_timeout) as c:
                await c.call("chain_blockNumber")
            return True
        except ChainClientError:
            return False

    async def _live_side(self) -> tuple[str, int]:
        last: Exception | None = None
        for url in self.cfg.side_urls:
            try:
                async with JsonRpcClient(url, timeout=self.cfg.rpc_timeout) as c:
                    st: dict[str, Any] = await c.call("chain_status")
                    return url, int(st["chainId"])
            except (ChainClientError, KeyError, TypeError, ValueError) as exc:
                last = exc
        raise AnchorError("side_unavailable", f"no side-chain validator answered chain_status: {last}")

    async def _record_on_side(self) -> None:
        due = self.journal.side_due(self.cfg.registry)
        if not due and (self.side is None or self.side_outbox is None or not self.side_outbox.live()):
            return
        client = await self._side_client()
        if client is None or self.side_key is None:
            return
        sender = address_of(self.side_key)
        for e in due:
            intent = Intent(f"anchor-checkpoint:0x{e.registry.hex()}:{e.height}", sender,
                            CheckpointTx(e.height, e.block_hash, e.state_root))
            await client.submit(intent)   # recorded in the outbox first: idempotent by key across restarts
            self.journal.mark_side(e.registry, e.height, SIDE_SUBMITTED)
            self.count("side_submitted")

    # ---- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, rounds: int | None = None) -> None:
        """Rounds every ``poll`` seconds until ``stop`` (or ``rounds`` rounds); errors are counted, not fatal."""
        done = 0
        while not stop.is_set() and (rounds is None or done < rounds):
            try:
                what = await self.step()
                self.count(f"round_{what.split(':')[0]}")
            except AnchorError as exc:
                self.count(f"error_{exc.reason}")
                log.warning("anchor round: %s", exc)
            except ChainClientError as exc:
                self.count(f"error_{exc.reason}")
                log.warning("anchor round: %s", exc)
            except (KeyError, TypeError, ValueError) as exc:   # a malformed answer from either chain's RPC
                self.count("error_bad_response")
                log.warning("anchor round: malformed answer: %r", exc)
            done += 1
            try:
                await asyncio.wait_for(stop.wait(), self.cfg.poll)
            except asyncio.TimeoutError:
                pass
