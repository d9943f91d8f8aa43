"""``OutboxChainClient``: exactly-once submission to any ``ChainBackend`` through the outbox.

``submit(intent)``:
  1. record the intent under its idempotency key (``pending``, fsynced) - the
     same key again returns the same id and never a second transaction;
  2. reserve the sender's next nonce in the outbox and store the signed bytes
     (``signed``, one fsynced transaction; signing is deterministic);
  3. send the stored bytes (``submitted`` once a node accepted them).
A failure to reach the node leaves the row where it is; the follower carries on.

The follower (``start()``, or ``run_once()`` step by step) loads the live rows
and drives each one on: signs ``pending`` rows, sends ``signed`` rows, polls
``submitted`` rows, resends those the node does not know (a restarted node
lost its mempool) or has left pending for ``resubmit_after`` seconds, and
records ``final`` or ``rejected``. Transport failures back off exponentially
(with jitter) up to ``backoff_max``.

Every send is the stored bytes, so every send of one row has the same tx
hash: the node applies a known hash at most once, and the chain applies at
most one tx per (sender, nonce). That is the exactly-once argument
(docs/chain-client.md); the nonce rules below keep it when the chain refuses:

- rejected for any reason but ``bad_nonce``: recorded with the reason, never
  resent. Where the rejection leaves the nonce unused, the freed nonce would
  stall every later tx of the account (already signed with higher nonces), so
  a ``NonceFill`` row takes the same nonce over, recorded in the same
  transaction as the rejection. Whichever of the two the chain applies, the
  other can never apply (one tx per (sender, nonce)). The nonce is unused
  after a tx dropped from a block build on a chain whose rejections do not
  consume nonces (the bundled chain), and after a refusal at intake on any
  chain (EVM: wrong chain id, a gas limit above the block's) once the client
  has checked it is certain: the node does not have the tx (status neither
  pending, included nor final; else this very tx is on its way or applied and
  is followed as such) and the chain's nonce has not passed the tx's (else
  the nonce is used already, so there is no gap). Re-signing the later
  intents one nonce down instead would leave their old bytes valid at the
  freed-up nonces: a double application.
- ``bad_nonce`` with the tx's nonce at or above the chain's: not yet (an
  earlier nonce is still on its way); kept and resent once the chain reaches it.
- ``bad_nonce`` with the nonce below the chain's (stale): the nonce was used.
  If by this very tx, it is applied (follow it to final). If by another row of
  the outbox with that nonce (a filler and the tx it replaced), that row wins
  and this one is ``rejected``/``superseded``. If by nothing the outbox made
  (the key was used elsewhere, or the database was restored from an old copy),
  the stale bytes can never apply any more, so the intent is re-signed with a
  fresh nonce and sent; the old bytes are kept in ``chain_outbox_attempts``.
  A stale filler is simply superseded: its nonce is used, which was its job.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.validator import errors as E

from .api import (PENDING, REJECTED, SIGNED, SUBMITTED, ChainBackend, EscrowInfo, Keyring, Receipt, SubmissionId,
                  SubmissionStatus)
from .errors import (SUPERSEDED, ChainClientError, ChainUnavailable, FinalityTimeout, NoKey, NonceError, RpcError,
                     TxInvalid, TxRejected)
from .intents import Intent, NonceFill
from .outbox import Outbox, OutboxRow

log = logging.getLogger(__name__)

Fault = Callable[[str], None]
FAULT_POINTS = ("recorded", "signed", "sent", "submitted", "final_seen")   # every submission passes these
REFUSAL_FAULT_POINTS = ("refused", "rejected")   # a refusal at intake: seen; recorded (with its filler)


@dataclass(frozen=True)
class ClientConfig:
    poll_interval: float = 0.2      # follower tick (s)
    resubmit_after: float = 5.0     # resend a submitted tx still pending after this long (s)
    backoff_initial: float = 0.1    # first wait after a transport failure (s)
    backoff_max: float = 5.0        # cap of the exponential backoff (s)
    status_concurrency: int = 16    # status queries in flight per tick
    send_batch: int = 256           # signed rows per chain_sendRawTransactions call


def filler_intent(sender: bytes, nonce: int) -> Intent:
    return Intent(f"nonce-fill:0x{sender.hex()}:{nonce}", sender, NonceFill())


class OutboxChainClient:
    """The ``ChainClient`` of the gateway: an outbox in front of one backend."""

    def __init__(self, backend: ChainBackend, outbox: Outbox, keys: Keyring, *,
                 config: ClientConfig = ClientConfig(), fault: Fault | None = None) -> None:
        if outbox.chain != backend.name:
            raise ValueError(f"outbox is for {outbox.chain}, backend is {backend.name}")
        self.backend = backend
        self.outbox = outbox
        self.keys = keys
        self.config = config
        self.fault = fault
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._not_before: dict[str, float] = {}
        self._inflight: set[str] = set()
        self.counters: dict[str, int] = {}

    # ---- lifecycle ----

    async def __aenter__(self) -> OutboxChainClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start the follower (it resumes every live row of the outbox, e.g. after a crash)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="chain-outbox-follower")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.backend.aclose()

    @property
    def follower(self) -> asyncio.Task[None] | None:
        return self._task

    # ---- the ChainClient interface ----

    async def submit(self, intent: Intent) -> SubmissionId:
        """Record, sign and send ``intent`` once; the same key returns the same id (same tx)."""
        self.keys.key_for(intent.sender)  # NoKey before anything is recorded
        row, new = self.outbox.record(intent)
        if new:
            self._count("recorded")
            log.info("outbox recorded %s (%s from 0x%s)", intent.key, intent.kind, intent.sender.hex())
        self._fault("recorded")
        if intent.key in self._inflight:
            return SubmissionId(intent.key)
        self._inflight.add(intent.key)  # the follower leaves it alone meanwhile
        try:
            if row.state == PENDING:
                row = await self._sign(row)
            if row.state == SIGNED:
                await self._send(row)
        except (ChainUnavailable, RpcError) as exc:
            log.warning("outbox %s: %s; the follower will retry", intent.key, exc)
            self._wake.set()
        finally:
            self._inflight.discard(intent.key)
        self._notify()
        return SubmissionId(intent.key)

    def status(self, id: SubmissionId) -> SubmissionStatus:
        return self.outbox.get(id).status()

    def receipt(self, id: SubmissionId) -> Receipt | None:
        row = self.outbox.get(id)
        return row.status().receipt(self.backend.fill_id(row.intent.action))

    async def wait_final(self, id: SubmissionId, timeout: float) -> Receipt:
        """The receipt once ``id`` is final or rejected (the follower must run, here or elsewhere)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.receipt(id)
            if r is not None:
                return r
            left = deadline - time.monotonic()
            if left <= 0:
                raise FinalityTimeout("timeout", f"{id} still {self.status(id).state} after {timeout} s")
            ev = self._changed
            try:
                await asyncio.wait_for(ev.wait(), min(left, self.config.poll_interval))
            except asyncio.TimeoutError:
                pass

    async def balance(self, address: bytes) -> int:
        return await self.backend.balance(address)

    async def nonce(self, address: bytes) -> int:
        return await self.backend.nonce(address)

    async def escrow(self, fill_id: bytes) -> EscrowInfo | None:
        return await self.backend.escrow(fill_id)

    async def block_number(self) -> int:
        return await self.backend.block_number()

    async def finalized_number(self) -> int:
        return await self.backend.finalized_number()

    # ---- the follower ----

    async def _follow(self) -> None:
        backoff = self.config.backoff_initial
        while True:
            try:
                await self.run_once()
                backoff = self.config.backoff_initial
                wait = self.config.poll_interval
            except Exception as exc:  # the follower must outlive any one failure
                self._count("backoff")
                wait = backoff * (0.5 + random.random())
                if isinstance(exc, ChainClientError):
                    log.warning("outbox follower: %s; retrying in %.2f s", exc, wait)
                else:
                    log.exception("outbox follower: unexpected error; retrying in %.2f s", wait)
                backoff = min(backoff * 2, self.config.backoff_max)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def run_once(self) -> int:
        """One pass over the live rows; returns how many are still live. Raises ChainUnavailable."""
        rows = [r for r in self.outbox.live() if r.key not in self._inflight]
        chain_nonces: dict[bytes, int] = {}
        to_send = []
        for row in rows:
            if row.state == PENDING:
                try:
                    row = await self._sign(row)
                except NoKey as exc:  # the wallet lost this key: the row waits, the others go on
                    self._count("no_key")
                    log.error("outbox %s cannot be signed: %s", row.key, exc)
                    continue
            if row.state == SIGNED and self._due(row.key):
                to_send.append(row)
        for i in range(0, len(to_send), self.config.send_batch):
            chunk = to_send[i:i + self.config.send_batch]
            if len(chunk) == 1:
                await self._send(chunk[0], chain_nonces)
            else:
                await self._send_many(chunk, chain_nonces)
        submitted = [r for r in self.outbox.live() if r.state == SUBMITTED and r.key not in self._inflight]
        sem = asyncio.Semaphore(self.config.status_concurrency)

        async def one(r: OutboxRow) -> None:
            async with sem:
                await self._poll(r, chain_nonces)

        results = await asyncio.gather(*(one(r) for r in submitted), return_exceptions=True)
        self._notify()
        for res in results:  # every poll has finished; now report the first failure
            if isinstance(res, BaseException):
                raise res
        return len(self.outbox.live())

    async def run_until_settled(self, timeout: float = 30.0) -> None:
        """Drive ``run_once`` until no row is live (tests, tools)."""
        deadline = time.monotonic() + timeout
        while await self.run_once():
            if time.monotonic() > deadline:
                raise FinalityTimeout("timeout", f"{len(self.outbox.live())} rows still live")
            await asyncio.sleep(self.config.poll_interval)

    # ---- steps ----

    async def _sign(self, row: OutboxRow) -> OutboxRow:
        if row.nonce is None and self.outbox.next_nonce(row.sender) is None:
            self.outbox.ensure_account(row.sender, await self.backend.nonce(row.sender))
        intent = row.intent
        key = self.keys.key_for(row.sender)
        signed = self.outbox.sign(row.key, lambda n: self.backend.build(intent, n, key))
        if signed.state == SIGNED and row.state == PENDING:
            self._count("signed")
            log.info("outbox signed %s nonce %d tx 0x%s", row.key, signed.nonce, (signed.tx_hash or b"").hex())
            self._fault("signed")
        return signed

    async def _send(self, row: OutboxRow, chain_nonces: dict[bytes, int] | None = None) -> None:
        assert row.raw is not None
        try:
            await self.backend.send(row.raw)
        except (TxInvalid, TxRejected) as exc:
            await self._sent(row, exc, chain_nonces if chain_nonces is not None else {})
            return
        except RpcError as exc:  # NodeBusy and other answers about the node, not the tx
            self._later(row, exc)
            return
        await self._sent(row, None, chain_nonces if chain_nonces is not None else {})

    async def _send_many(self, rows: list[OutboxRow], chain_nonces: dict[bytes, int]) -> None:
        """Send several signed rows in one ``send_many`` call (the follower after an outage)."""
        results = await self.backend.send_many([r.raw for r in rows if r.raw is not None])
        for row, res in zip(rows, results):
            if isinstance(res, bytes):
                await self._sent(row, None, chain_nonces)
            elif isinstance(res, (TxInvalid, TxRejected)):
                await self._sent(row, res, chain_nonces)
            else:
                self._later(row, res)

    def _later(self, row: OutboxRow, exc: ChainClientError) -> None:
        self._count("send_deferred")
        self._not_before[row.key] = time.monotonic() + self.config.resubmit_after
        log.warning("outbox %s: node says %s; sending again in %.1f s", row.key, exc, self.config.resubmit_after)

    async def _sent(self, row: OutboxRow, refused: TxInvalid | TxRejected | None, cache: dict[bytes, int]) -> None:
        """The node's answer to one send: accepted (``refused`` None), or refused with a reason."""
        if isinstance(refused, NonceError):
            await self._bad_nonce(row, refused.detail, cache)
            return
        if refused is not None:
            await self._refused(row, refused)
            return
        self._count("sent")
        self._fault("sent")
        self.outbox.mark_submitted(row.key)
        self._not_before.pop(row.key, None)
        self._fault("submitted")

    async def _poll(self, row: OutboxRow, chain_nonces: dict[bytes, int]) -> None:
        assert row.tx_hash is not None
        st = await self.backend.tx_status(row.tx_hash)
        if st.status == "final":
            self._fault("final_seen")
            self.outbox.mark_final(row.key, st.height, superseded=self._rivals(row))
            self._count("final")
            log.info("outbox final %s at height %s", row.key, st.height)
        elif st.status == "included":
            if st.height != row.height:
                self.outbox.mark_included(row.key, st.height)
        elif st.status == "rejected":
            if st.reason == E.BAD_NONCE:
                await self._bad_nonce(row, "status: bad_nonce", chain_nonces, dropped=True)
            else:   # dropped at block building (bundled) or reverted in a block (EVM)
                self._reject(row, st.reason or "rejected", "reported by the node's status",
                             fill=not self.backend.rejection_consumes_nonce)
        elif st.status == "unknown":
            self._count("resent_unknown")
            log.info("outbox %s unknown to the node: resending", row.key)
            await self._send(row, chain_nonces)
        else:  # pending in the node's mempool
            age = time.time() - (row.submitted_ms or 0) / 1000
            if age > self.config.resubmit_after:
                self._count("resent_late")
                await self._send(row, chain_nonces)

    def _rivals(self, row: OutboxRow) -> list[str]:
        """Live rows with the same (sender, nonce): they can never apply once ``row`` did."""
        if row.nonce is None:
            return []
        return [r.key for r in self.outbox.at_nonce(row.sender, row.nonce) if r.key != row.key and r.live]

    async def _refused(self, row: OutboxRow, exc: TxInvalid | TxRejected) -> None:
        """A node refused the tx at intake (not ``bad_nonce``): reject it, and fill its nonce only when the
        refusal is certain to leave that nonce unused (module docstring). A crash anywhere in here leaves
        the row as it was: the restart sends the same bytes and meets the same refusal, or their success."""
        assert row.tx_hash is not None and row.nonce is not None
        self._count(f"refused_{exc.reason}")
        self._fault("refused")
        st = await self.backend.tx_status(row.tx_hash)
        if st.status in ("included", "final"):  # this very tx is on chain: the refusal was of a resend
            self._count("refused_but_applied")
            log.warning("outbox %s: a resend was refused (%s) but the tx is %s at %s; following it",
                        row.key, exc, st.status, st.height)
            self.outbox.mark_submitted(row.key)
            if st.status == "final":
                self.outbox.mark_final(row.key, st.height, superseded=self._rivals(row))
            else:
                self.outbox.mark_included(row.key, st.height)
            return
        if st.status == "pending":  # the node holds it after all: not a verdict on this tx
            self._later(row, exc)
            return
        if st.status == "rejected" and st.height is not None:  # mined and reverted (EVM): the chain's verdict
            self._reject(row, st.reason or "rejected", "reported by the node's status",
                         fill=not self.backend.rejection_consumes_nonce)
            return
        chain_nonce = await self.backend.nonce(row.sender)  # fresh: the pass's cache may predate a block
        self._reject(row, exc.reason, exc.detail, fill=row.nonce >= chain_nonce)
        self._fault("rejected")

    def _reject(self, row: OutboxRow, reason: str, detail: str, *, fill: bool) -> None:
        """-> rejected; ``fill``: the rejection leaves the row's nonce unused, so a filler takes it over."""
        filler = None
        if fill and row.nonce is not None:
            if row.kind == "nonce_fill":  # the filler itself refused (e.g. the wrong chain id): nothing else can
                self._count("gap_unfilled")
                log.error("outbox %s refused (%s): nonce %d of 0x%s stays unused, later txs of the account wait",
                          row.key, reason, row.nonce, row.sender.hex())
            else:
                filler = filler_intent(row.sender, row.nonce)
        self.outbox.mark_rejected(row.key, reason, detail, filler=filler)
        self._count("rejected")
        log.warning("outbox rejected %s: %s %s%s", row.key, reason, detail,
                    f"; nonce {row.nonce} handed to {filler.key}" if filler else "")
        self._notify()

    async def _chain_nonce(self, sender: bytes, cache: dict[bytes, int]) -> int:
        if sender not in cache:
            cache[sender] = await self.backend.nonce(sender)
        return cache[sender]

    async def _bad_nonce(self, row: OutboxRow, detail: str, cache: dict[bytes, int], *,
                         dropped: bool = False) -> None:
        """``bad_nonce`` from a send, or (``dropped``) a node's status saying it dropped the tx for it."""
        assert row.nonce is not None and row.tx_hash is not None
        chain_nonce = await self._chain_nonce(row.sender, cache)
        if row.nonce >= chain_nonce:
            # not yet: an earlier nonce is on its way; resend once the chain has reached this one
            self._count("nonce_future")
            if dropped and row.nonce == chain_nonce and self._due(row.key):
                await self._send(row, cache)
            else:
                self._not_before[row.key] = time.monotonic() + self.config.poll_interval
                log.info("outbox %s: nonce %d, chain at %d (%s); waiting", row.key, row.nonce, chain_nonce, detail)
            return
        # stale: nonce row.nonce is used. By what?
        st = await self.backend.tx_status(row.tx_hash)
        if st.status in ("included", "final"):
            self.outbox.mark_submitted(row.key)
            if st.status == "final":
                self.outbox.mark_final(row.key, st.height, superseded=self._rivals(row))
            else:
                self.outbox.mark_included(row.key, st.height)
            return
        for other in self.outbox.at_nonce(row.sender, row.nonce):
            if other.key == row.key or other.tx_hash is None:
                continue
            ost = await self.backend.tx_status(other.tx_hash)
            if ost.status in ("included", "final"):
                log.warning("outbox %s superseded by %s at nonce %d", row.key, other.key, row.nonce)
                self.outbox.mark_rejected(row.key, SUPERSEDED, f"nonce {row.nonce} used by {other.key}")
                if other.state == REJECTED:  # the chain says it applied after all: believe the chain
                    log.warning("outbox %s was recorded rejected but applied: correcting", other.key)
                    if ost.status == "final":
                        self.outbox.mark_final(other.key, ost.height)
                    else:
                        self.outbox.mark_included(other.key, ost.height)
                self._notify()
                return
        if row.kind == "nonce_fill":
            self.outbox.mark_rejected(row.key, SUPERSEDED, f"nonce {row.nonce} used outside the outbox")
            self._notify()
            return
        # used by a tx the outbox did not make: these bytes can never apply; sign the intent afresh
        intent = row.intent
        key = self.keys.key_for(row.sender)
        new = self.outbox.resign_stale(row.key, chain_nonce, lambda n: self.backend.build(intent, n, key))
        self._count("resigned_stale")
        log.warning("outbox %s: nonce %d was used outside the outbox; re-signed with nonce %s",
                    row.key, row.nonce, new.nonce)
        await self._send(new, cache)

    # ---- helpers ----

    def _due(self, key: str) -> bool:
        nb = self._not_before.get(key)
        return nb is None or time.monotonic() >= nb

    def _fault(self, where: str) -> None:
        if self.fault is not None:
            self.fault(where)

    def _notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

