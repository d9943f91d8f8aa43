"""The reclaim rule, differentially: one script on the bundled chain core and on Exchange.sol (anvil).

Both get three fills of one interval (same Wh and NOIA), then the same steps at the same times relative
to the reclaim deadline D = intervalStart + interval + settleTimeout (7 days on both): reclaims before,
at and after D, a second reclaim, a settlement naming a reclaimed fill (alone and beside a good one),
a settlement of an unreclaimed fill after D, a reclaim of a settled fill and of an unknown one. The
outcome of every step (``ok`` or the reason code) and the money each party ends with must be equal.
"""

from __future__ import annotations

from typing import Any

from gateway.validator.genesis import DEFAULT_SETTLE_TIMEOUT
from gateway.validator.state import get_account
from gateway.validator.tx import Reclaim
from tests.gateway.validator import kit

from .test_contracts import INTERVAL, SETTLE_TIMEOUT, Env
from .test_contracts import artefacts, env, node  # noqa: F401  (fixtures)
from .test_exchange_reclaim import reason_at_block, send_at

NOIA = (3000, 5000, 7000)
WH = 500
# (offset from D, action, fill index (None: an unknown fill) or the fills a settlement names, expected outcome)
SCRIPT: list[tuple[int, str, Any, str]] = [
    (-1, "reclaim", 0, "reclaim_too_early"),
    (0, "reclaim", 0, "ok"),
    (1, "reclaim", 0, "fill_reclaimed"),
    (2, "settle", [0], "fill_reclaimed"),
    (3, "settle", [0, 1], "fill_reclaimed"),       # all or nothing: fill 1 stays escrowed
    (4, "settle", [1], "ok"),                      # settling after D is still allowed
    (5, "reclaim", 1, "fill_already_settled"),
    (6, "reclaim", None, "unknown_fill"),
    (7, "reclaim", 2, "ok"),
]


def test_bundled_chain_and_exchange_agree_step_by_step(env: Env) -> None:  # noqa: F811
    assert SETTLE_TIMEOUT == DEFAULT_SETTLE_TIMEOUT and INTERVAL == kit.INTERVAL
    bundled = run_bundled()
    assert bundled == run_evm(env)
    assert bundled == ([want for *_, want in SCRIPT], {"maker": NOIA[1], "taker": NOIA[0] + NOIA[2]})


def run_bundled() -> tuple[list[str], dict[str, int]]:
    c = kit.Chain()
    maker, taker, authority = 2, 3, kit.COMPLEX
    fids = [c.send(taker, kit.fill(kit.order(maker, n + 1, noia=noia, wh=WH))).order_hash
            for n, noia in enumerate(NOIA)]
    start = kit.GENESIS_TIME
    deadline = kit.PARAMS.reclaim_deadline(start)
    bal0 = {k: kit_balance(c, i) for k, i in (("maker", maker), ("taker", taker))}
    out = []
    for dt, action, which, _ in SCRIPT:
        if action == "reclaim":
            sender, payload = taker, Reclaim(fids[which] if which is not None else b"\x42" * 32)
        else:
            sender, payload = authority, kit.settle([(fids[i], WH, NOIA[i], 0) for i in which], interval_start=start)
        c.time = deadline + dt - 1  # the block gets deadline + dt
        v = kit.vtx(sender, c.nonces.get(sender, 0), payload)
        _, _, rejected = c.block([v])
        if rejected:
            out.append(rejected[0][1].reason)
        else:
            c.nonces[sender] = c.nonces.get(sender, 0) + 1
            out.append("ok")
    delta = {k: kit_balance(c, i) - bal0[k] for k, i in (("maker", maker), ("taker", taker))}
    return out, delta


def kit_balance(c: kit.Chain, i: int) -> int:
    return get_account(c.store, kit.addr(i)).balance


def run_evm(env: Env) -> tuple[list[str], dict[str, int]]:  # noqa: F811
    orders = [env.filled(nonce=n + 1, noia=noia, wh=WH) for n, noia in enumerate(NOIA)]
    start = orders[0][0].interval_start
    fids = [f for _, f in orders]
    deadline = start + INTERVAL + SETTLE_TIMEOUT
    bal0 = {"maker": env.bal(env.maker), "taker": env.bal(env.taker)}
    out = []
    for dt, action, which, _ in SCRIPT:
        fn: Any
        if action == "reclaim":
            sender, fn = env.taker, env.exchange.functions.reclaim(fids[which] if which is not None else b"\x42" * 32)
        else:
            sender, fn = env.authority, env.settle_fn(sorted((fids[i], WH, NOIA[i], 0) for i in which), start)
        rcpt = send_at(env, fn, sender, deadline + dt)
        out.append("ok" if rcpt["status"] == 1 else str(reason_at_block(env, fn, sender, rcpt["blockNumber"])))
    return out, {"maker": env.bal(env.maker) - bal0["maker"], "taker": env.bal(env.taker) - bal0["taker"]}
