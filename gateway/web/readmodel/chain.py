"""What the pages show of the bundled chain: each validator asked over JSON-RPC with a short timeout.

A page must render while a validator is down, so every call has its own
timeout (``Sources.rpc_timeout_s``) and all validators are asked at once: a
dead one costs one timeout, not one per question. A failure is reported as
the chain client's reason code (``unavailable``, ``timeout``, ``bad_response``),
never raised to the page.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gateway.chain_client.errors import ChainClientError
from gateway.chain_client.rpc import JsonRpcClient


@dataclass(frozen=True)
class ValidatorStatus:
    url: str
    up: bool
    address: str | None = None
    height: int | None = None          # its head: every block it stores is final (certificate + commit)
    peers: int | None = None           # authorities it is connected to
    validators_up: int | None = None   # its own count: itself + connected authorities
    validators: int | None = None      # authorities in its genesis
    error: str | None = None           # reason code when down


@dataclass(frozen=True)
class ChainView:
    validators: tuple[ValidatorStatus, ...]
    height: int | None                 # highest head among the validators that answered
    final_height: int | None           # = height: a block is stored only once final (docs/chain.md)
    final_hash: str | None
    final_time: int | None             # the final block's timestamp (unix s, the chain's clock)
    authorities: int | None
    up: int
    down: tuple[str, ...]              # URLs that did not answer

    @property
    def quorum(self) -> bool | None:
        """More than two thirds of the authorities answer (the chain can finalise), if known."""
        return None if self.authorities is None else 3 * self.up > 2 * self.authorities


async def _status(url: str, timeout: float) -> ValidatorStatus:
    rpc = JsonRpcClient(url, timeout=timeout)
    try:
        s = await rpc.call("chain_status")
        if not isinstance(s, dict) or not isinstance(s.get("height"), int):
            return ValidatorStatus(url, False, error="bad_response")
        peers = s.get("peers")
        return ValidatorStatus(url, True, address=str(s.get("address")), height=s["height"],
                               peers=len(peers) if isinstance(peers, list) else None,
                               validators_up=_int(s.get("validatorsUp")), validators=_int(s.get("validators")))
    except ChainClientError as e:
        return ValidatorStatus(url, False, error=e.reason)
    except (asyncio.TimeoutError, OSError) as e:  # belt and braces: the client maps these itself
        return ValidatorStatus(url, False, error=type(e).__name__)
    finally:
        await rpc.aclose()


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


async def chain_view(urls: tuple[str, ...], timeout: float = 1.0) -> ChainView:
    """Ask every validator at once; the final block's hash and time from the highest one that answered."""
    got = tuple(await asyncio.gather(*(_status(u, timeout) for u in urls)))
    up = [v for v in got if v.up]
    best = max(up, key=lambda v: v.height or 0, default=None)
    fhash = ftime = None
    if best is not None and best.height:
        rpc = JsonRpcClient(best.url, timeout=timeout)
        try:
            blk = await rpc.call("chain_getBlockByNumber", best.height, False)
            if isinstance(blk, dict):
                fhash, ftime = blk.get("hash"), _int(blk.get("timestamp"))
        except ChainClientError:
            pass
        finally:
            await rpc.aclose()
    auth = max((v.validators for v in up if v.validators is not None), default=None)
    return ChainView(got, None if best is None else best.height, None if best is None else best.height,
                     fhash, ftime, auth, len(up), tuple(v.url for v in got if not v.up))


async def balance_of(urls: tuple[str, ...], address: bytes, timeout: float = 1.0) -> tuple[int | None, str | None]:
    """(NOIA units, None) from the first validator that answers, else (None, the last reason)."""
    reason = "no_validator"
    for url in urls:
        rpc = JsonRpcClient(url, timeout=timeout)
        try:
            v = await rpc.call("chain_getBalance", "0x" + address.hex())
            return int(v), None
        except ChainClientError as e:
            reason = e.reason
        except (TypeError, ValueError):
            reason = "bad_response"
        finally:
            await rpc.aclose()
    return None, reason
