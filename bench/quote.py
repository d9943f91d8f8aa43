"""``metanoia bench quote``: p99 latency of a signed quote from a maker's Peer at 500 requests/s.

Set-up (not timed): a fresh maker key (0600) and the Peer as its own process
(``python -m gateway.cli peer run`` on a loopback port, as a test maker runs
it) with an inventory large enough that no request is refused and the rate
limits off (one load generator on one IP would trip them). The raw signing
cost is measured in this process first: ``Order.digest`` (the core's EIP-712
digest) + coincurve ``sign_recoverable``, per quote.

Timed: an open-loop load generator (aiohttp, keep-alive connections) sends
``getSenderSideOrder`` requests at ``--rate`` per second for ``--seconds``:
request i is *scheduled* at t0 + i/rate and sent then whether or not earlier
answers came back; its latency runs from the scheduled time to the end of its
answer, so a stall of the Peer (or of the generator) shows up in full instead
of being hidden by fewer sends (no coordinated omission). Each request asks a
different (interval, Wh, taker) among the next intervals.

Afterwards every answer is checked with ``peer_client.check_quote``: the
signature recovers to the maker, and grid, interval, taker and Wh are what
was asked, NOIA = Wh x price; nonces are all distinct. ``errors`` counts
transport failures, timeouts, JSON-RPC errors and answers that fail a check.
``value`` = p99 latency (ms); ``bound`` = the raw signing time per quote
(ms); ``rps`` = answers received per second of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "quote"
GOAL = 10.0  # ms, p99
GRID = "bench-grid"
PRICE = 10**15
INTERVAL_S = 900


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=20.0, help="length of the timed run (default %(default)s)")
    p.add_argument("--rate", type=float, default=500.0, help="requests per second, open loop (default %(default)s)")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections at most (default %(default)s)")
    p.add_argument("--timeout", type=float, default=5.0, help="a request not answered by then is an error")


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def raw_sign_ms(n: int = 3000) -> float:
    """Digest (core order.py) + coincurve signing of one order, ms (best of 3 rounds)."""
    from coincurve import PrivateKey

    from gateway.validator.crypto import address_of, sign_digest
    from gateway.validator.order import Domain, Order, grid_id

    key = PrivateKey(os.urandom(32))
    maker, grid = address_of(key), grid_id(GRID)
    domain = Domain(31337, bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"))
    orders = [Order(i, 1_800_000_000, maker, b"\x00" * 20, 1 + i % 1000, 1_800_000_000, (1 + i % 1000) * PRICE, grid)
              for i in range(n)]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for o in orders:
            sign_digest(key, o.digest(domain))
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1000.0


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _start_peer(tmp: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    from gateway.cli.peer import write_key_file

    key = tmp / "maker.key"
    write_key_file(key, os.urandom(32))
    cmd = [sys.executable, "-m", "gateway.cli", "peer", "run", "--listen", "127.0.0.1:0", "--key", str(key),
           "--grid", GRID, "--price", str(PRICE), "--inventory-wh", str(10**15), "--ip-rate", "0",
           "--taker-rate", "0", "--interval-s", str(INTERVAL_S)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise RuntimeError(f"peer did not start (exit {proc.returncode})")
    return proc, json.loads(line)


async def _load(url: str, bodies: list[bytes], warm: bytes, rate: float, connections: int,
                timeout: float) -> tuple[list[float], list[float], list[bytes | None], float, float]:
    """Open loop: body i is sent at t0 + i/rate. Returns per-request latency (s, from the scheduled
    time; nan if failed), answers (None if failed), t0 and the time the last answer came back."""
    import aiohttp

    n = len(bodies)
    lat = [float("nan")] * n
    lag = [0.0] * n
    answers: list[bytes | None] = [None] * n
    conn = aiohttp.TCPConnector(limit=connections, force_close=False)
    headers = {"Content-Type": "application/json"}
    tmo = aiohttp.ClientTimeout(total=timeout)
    perf = time.perf_counter
    last = [0.0]
    async with aiohttp.ClientSession(connector=conn, timeout=tmo) as session:
        for _ in range(min(connections, 8)):  # open a few connections before the clock starts
            async with session.post(url, data=warm, headers=headers) as r:
                await r.read()

        async def fire(i: int, scheduled: float) -> None:
            lag[i] = perf() - scheduled
            try:
                async with session.post(url, data=bodies[i], headers=headers) as r:
                    body = await r.read()
                    if r.status == 200:
                        answers[i] = body
                done = perf()
                lat[i] = done - scheduled
                last[0] = max(last[0], done)
            except Exception:
                pass

        tasks = []
        t0 = perf() + 0.05
        i = 0
        while i < n:
            now = perf()
            while i < n and t0 + i / rate <= now:
                tasks.append(asyncio.create_task(fire(i, t0 + i / rate)))
                i += 1
            if i < n:
                await asyncio.sleep(max(0.0, t0 + i / rate - perf()))
        await asyncio.gather(*tasks)
    return lat, lag, answers, t0, last[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.market.peer_client import Ask, QuoteInvalid, check_quote, request
    from gateway.validator.crypto import parse_address
    from gateway.validator.order import Domain

    print("raw EIP-712 signing (digest + coincurve) ...", flush=True)
    bound = raw_sign_ms()
    print(f"  {bound * 1000:.1f} us per quote ({1000 / bound:,.0f}/s on one core)", flush=True)

    total = max(1, int(args.seconds * args.rate))
    with tempfile.TemporaryDirectory(prefix="bench-quote-") as tmpd:
        proc, ready = _start_peer(Path(tmpd))
        try:
            url = f"http://{ready['listen']}/"
            maker = parse_address(ready["maker"])
            domain = Domain(ready["chainId"], parse_address(ready["verifyingContract"]))
            rng = random.Random(1)
            takers = [os.urandom(20) for _ in range(200)]
            first = (int(time.time()) // INTERVAL_S + 2) * INTERVAL_S  # >= 15 min ahead: stays future all run
            asks = [Ask(GRID, first + INTERVAL_S * rng.randrange(16), rng.choice(takers), wh=rng.randint(1, 2000))
                    for _ in range(total)]
            bodies = [json.dumps(request("getSenderSideOrder", a, domain, rid=i)).encode()
                      for i, a in enumerate(asks)]
            print(f"peer {ready['maker']} on {ready['listen']} (pid {proc.pid}); "
                  f"{total:,} getSenderSideOrder at {args.rate:g}/s open loop ...", flush=True)
            warm = json.dumps(request("getMaxQuote", asks[0], domain)).encode()
            gc.collect()
            gc.freeze()
            cpu0, wall0 = _cpu_s(proc.pid), time.time()
            lat, lag, answers, t0, t_last = asyncio.run(_load(url, bodies, warm, args.rate, args.connections, args.timeout))
            server_cpu = _cpu_s(proc.pid) - cpu0
        finally:
            proc.terminate()
            try:
                tail, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                tail = ""
    peer_stats: dict[str, Any] = {}
    for line in tail.splitlines():
        if line.startswith("{") and '"stopped"' in line:
            peer_stats = json.loads(line)
    service = peer_stats.get("serviceMs", {})

    print("checking every answer ...", flush=True)
    failures: dict[str, int] = {}
    nonces: set[int] = set()
    now = time.time()
    for i, raw in enumerate(answers):
        reason = None
        if raw is None:
            reason = "transport"
        else:
            try:
                doc = json.loads(raw)
                if "error" in doc or doc.get("id") != i:
                    reason = "rpc_" + str(doc.get("error", {}).get("data", {}).get("reason")
                                          or doc.get("error", {}).get("code") or "bad_id")
                else:
                    signed = check_quote(doc["result"], domain, maker, asks[i])
                    if signed.order.noia != signed.order.wh * PRICE:
                        reason = "wrong_price"
                    elif signed.order.nonce in nonces:
                        reason = "nonce_repeated"
                    elif not wall0 < signed.order.expiry <= now + 60:
                        reason = "bad_expiry"
                    nonces.add(signed.order.nonce)
            except QuoteInvalid as exc:
                reason = "check_" + exc.reason
            except (ValueError, KeyError, TypeError, AttributeError):
                reason = "malformed"
        if reason:
            failures[reason] = failures.get(reason, 0) + 1
    errors = sum(failures.values())
    verified = total - errors
    ok_lat = [x * 1000.0 for x, a in zip(lat, answers) if a is not None and x == x]
    all_lat = [x * 1000.0 if x == x else args.timeout * 1000.0 for x in lat]  # failures count as the timeout
    received = len(ok_lat)
    elapsed = max(1e-9, t_last - t0)
    p50, p99, pmax = _percentile(all_lat, 0.50), _percentile(all_lat, 0.99), max(all_lat)
    rps = received / elapsed
    print(f"  {received:,} answers in {elapsed:.2f} s = {rps:,.0f}/s; {errors} errors {failures or ''}", flush=True)
    print(f"  latency from scheduled send: p50 {p50:.2f} ms, p99 {p99:.2f} ms, p99.9 "
          f"{_percentile(all_lat, 0.999):.2f} ms, max {pmax:.2f} ms (goal p99 <= {GOAL:g} ms)", flush=True)
    lag_ms = [x * 1000.0 for x in lag]
    print(f"  of which the generator's own lag (scheduled -> sent): p50 {_percentile(lag_ms, 0.5):.2f} ms, "
          f"p99 {_percentile(lag_ms, 0.99):.2f} ms", flush=True)
    if service:
        print(f"  inside the peer (body read to answer built): p50 {service['p50']:.3f} ms, "
              f"p99 {service['p99']:.3f} ms, max {service['max']:.3f} ms", flush=True)
    print(f"  peer process CPU {server_cpu * 1000 / max(1, received):.3f} ms per answer; raw signing "
          f"{bound:.4f} ms of it", flush=True)
    return {"bench": NAME, "value": round(p99, 3), "unit": "ms", "goal": GOAL, "bound": round(bound, 4),
            "ratio": round(p99 / bound, 1), "p50_ms": round(p50, 3), "p999_ms": round(_percentile(all_lat, 0.999), 3),
            "max_ms": round(pmax, 3), "rps": round(rps, 1), "rate": args.rate, "seconds": args.seconds,
            "errors": errors, "error_kinds": failures, "requests": total, "verified": verified,
            "server_cpu_ms_per_quote": round(server_cpu * 1000 / max(1, received), 4),
            "send_lag_p99_ms": round(_percentile(lag_ms, 0.99), 3), "peer_service_p99_ms": service.get("p99"), "peer_service_max_ms": service.get("max"),
            "valid": errors == 0 and received == total}
